"""Small reference models for examples, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP", "BasicBlock", "Lenet5", "SmallResNet", "SmallVGG"]


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


class MLP(nn.Module):
    """A multilayer perceptron on flattened ``in_channels x image_size x image_size`` inputs."""

    def __init__(
        self,
        image_size: int = 8,
        in_channels: int = 1,
        n_classes: int = 10,
        hidden: tuple[int, ...] = (128, 64),
    ):
        super().__init__()
        sizes = [in_channels * image_size * image_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], n_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallVGG(nn.Module):
    """VGG-style: per width a 3x3 convolution, ReLU and 2x2 max pooling, then a classifier.

    A pooling is skipped once the map is 1 pixel wide, so any size from 4 to 32 works.
    """

    def __init__(
        self,
        image_size: int = 8,
        in_channels: int = 1,
        n_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
    ):
        super().__init__()
        layers: list[nn.Module] = []
        side, channels = image_size, in_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, plus the input (a 1x1 convolution when the
    shape changes) unless ``noskip``."""

    def __init__(self, channels: int, width: int, stride: int = 1, noskip: bool = False):
        super().__init__()
        self.noskip = noskip
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.shortcut = nn.Identity()
        if not noskip and (stride != 1 or channels != width):
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, width, 1, stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if not self.noskip:
            out = out + self.shortcut(x)
        return torch.relu(out)


class SmallResNet(nn.Module):
    """ResNet-style: a 3x3 stem, one ``BasicBlock`` per width (stride 2 after the first),
    global average pooling and a linear classifier. ``noskip=True`` drops every skip
    connection (the chain that ``receptive_field`` measures)."""

    def __init__(
        self,
        image_size: int = 8,
        in_channels: int = 1,
        n_classes: int = 10,
        widths: tuple[int, ...] = (16, 32),
        noskip: bool = False,
    ):
        super().__init__()
        self.noskip = noskip
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks, channels = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(channels, width, 1 if i == 0 else 2, noskip))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))
