"""Registry entries the config-run tests name as ``"tests.runs_program:..."``."""

import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ptera.lab.models import MLP
from ptera.lab.runs.registry import digits


def tiny_digits(resolution=None):
    """240 train and 80 test digits (fast runs)."""
    train, test = digits(resolution)
    return (
        TensorDataset(*(t[:240] for t in train.tensors)),
        TensorDataset(*(t[:80] for t in test.tensors)),
    )


class SlowMLP(nn.Module):
    """An MLP that sleeps 30 ms per forward pass, so a test can kill it mid-training."""

    def __init__(self, image_size=8, in_channels=1, n_classes=10):
        super().__init__()
        self.net = MLP(image_size, in_channels, n_classes, hidden=(16,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.03)
        return self.net(x)
