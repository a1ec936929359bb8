"""Shared pieces of the experiment tests, importable by worker processes.

Run as a script, it trains a small experiment into the store given on the command
line (the resume test kills it mid-epoch).
"""

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ptera import tooled
from ptera.lab.data import digits
from ptera.lab.experiments import Experiment, Metrics, PerturbWeights


def small_digits(n_train=300, n_test=100):
    """A slice of digits as flat features (fast trials)."""
    train, test = digits(images=False)
    return (
        TensorDataset(*(t[:n_train] for t in train.tensors)),
        TensorDataset(*(t[:n_test] for t in test.tensors)),
    )


@tooled
def head(logits):
    T = 1.0
    return logits / T


class TempNet(nn.Module):
    """An MLP whose output goes through an instrumented temperature (`head > T`)."""

    def __init__(self, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return head(self.fc2(self.drop(torch.relu(self.fc1(x)))))


class DistanceMetrics(Metrics):
    """The seed's metrics: weight norm and distance from the control."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_metric("w", self.weight_norm)
        self.register_metric("dw_control", self.weight_distance_from_control)

    def weight_norm(self, trial):
        norm = torch.zeros(1)
        for p in trial.model.parameters():
            norm += torch.norm(p)
        return norm

    def weight_distance_from_control(self, trial):
        distance = torch.zeros(1)
        for p1, p2 in zip(trial.model.parameters(), trial.control.model.parameters()):
            distance += torch.norm(p1 - p2) ** 2
        return distance**0.5


def perturb_experiment(store, **kwargs):
    return Experiment(
        model=TempNet(),
        datasets=small_digits(**kwargs),
        interventions=[PerturbWeights.make_variations(epsilon=(0.01, 0.1), seed_weights=(0, 1))],
        metrics=DistanceMetrics(),
        store=store,
        lr=0.1,
        batch_size=16,
    )


if __name__ == "__main__":
    store, n_epochs = sys.argv[1], int(sys.argv[2])
    perturb_experiment(store, n_train=1400, n_test=300).run(n_epochs)
