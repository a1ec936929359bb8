"""A module of nn.Modules that the tests probe without decorating (code we do not own)."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.lin = nn.Linear(n, n)

    def forward(self, x):
        h = self.lin(x)
        out = torch.tanh(h) + x
        return out
