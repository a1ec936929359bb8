"""Shared pieces of the batched-executor tests.

Run as a script, it trains a batched experiment into the store given on the
command line (the resume test kills it mid-run).
"""

import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from ptera.lab.data import digits
from ptera.lab.experiments import (
    ChangeOptimizer,
    ChangeTrainLoader,
    Experiment,
    Metrics,
    PerturbWeights,
)
from ptera.lab.experiments.batched import BatchedExecutor
from ptera.lab.models import Lenet5


def small_images(n_train=300, n_test=100):
    """A slice of digits as 8x8 images."""
    train, test = digits()
    return (
        TensorDataset(*(t[:n_train] for t in train.tensors)),
        TensorDataset(*(t[:n_test] for t in test.tensors)),
    )


class DistanceMetrics(Metrics):
    """The default metrics and the distance from the control's weights."""

    def __init__(self):
        super().__init__()
        self.register_metric("dw_control", self.distance)

    def distance(self, trial):
        pairs = zip(trial.model.parameters(), trial.control.model.parameters())
        return sum(torch.norm(a - b) ** 2 for a, b in pairs) ** 0.5


def eight_trials(store, optimizer=torch.optim.SGD, **data):
    """2 batch orders x (control + 2 perturbations + 1 windowed optimizer change)."""
    window = {"momentum": 0.5} if optimizer is torch.optim.SGD else {"betas": (0.8, 0.99)}
    return Experiment(
        model=Lenet5(image_size=8),
        datasets=small_images(**data),
        variations=[ChangeTrainLoader.make_variations(seed_shuffle=(0, 1))],
        interventions=[
            PerturbWeights.make_variations(epsilon=0.01, seed_weights=(0, 1)),
            ChangeOptimizer(when=((3, 8),), **window),
        ],
        metrics=DistanceMetrics(),
        store=store,
        optimizer=optimizer,
        lr=0.05 if optimizer is torch.optim.SGD else 0.01,
        # Adam's default eps turns float noise in near-zero gradients into whole steps:
        # there, a 1e-6 nudge of the weights moves the serial path's own losses by 1e-4.
        hyperparameters={"momentum": 0.9} if optimizer is torch.optim.SGD else {"eps": 1e-3},
        batch_size=16,
    )


if __name__ == "__main__":
    store, n_epochs = Path(sys.argv[1]), int(sys.argv[2])
    eight_trials(store, n_train=400, n_test=100).run(n_epochs, executor=BatchedExecutor())
