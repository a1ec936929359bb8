"""Small reference models for examples, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Lenet5"]


class Lenet5(nn.Module):
    """LeNet-5 for ``image_size`` x ``image_size`` images (28 for MNIST, 8 for digits).

    Both convolutions keep the image size (``padding=2``) and each pooling halves
    it, so the classifier sees ``16 * (image_size // 4) ** 2`` features.
    """

    def __init__(self, image_size: int = 28, in_channels: int = 1, n_classes: int = 10):
        super().__init__()
        if image_size < 4:
            raise ValueError(f"Lenet5 needs images of at least 4x4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
