"""Shared pieces of the experiment tests, importable by worker processes.

Run as a script, it trains a small experiment into the store given on the command
line (the resume test kills it mid-epoch).
"""

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ptera import tooled
from ptera.lab.data import digits
from ptera.lab.experiments import Experiment, PerturbWeights

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from perturb import CustomMetrics as DistanceMetrics  # noqa: E402 -- the seed's metrics


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
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    import experiment_program  # classes by import path, not __main__'s (workers pickle them)

    experiment = experiment_program.perturb_experiment(store, n_train=1400, n_test=300)
    experiment.run(n_epochs, processes=processes, verbose=False)
    print("trained", " ".join(sorted(experiment.trained)))
