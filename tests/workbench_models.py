"""Small models and digits data for the workbench tests (8x8 digits, a few hundred samples)."""

import functools

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset


@functools.cache
def _digits():
    return load_digits()


def digits(n_train=300, n_eval=100, image=True, id_feature=False):
    """Digits as (train, eval) TensorDatasets; with ``id_feature`` the last pixel is the sample id."""
    d = _digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    train_x, eval_x = x[:n_train].clone(), x[n_train : n_train + n_eval].clone()
    if id_feature:
        train_x[:, -1] = torch.arange(n_train, dtype=torch.float32)
    if image:
        train_x, eval_x = train_x.view(-1, 1, 8, 8), eval_x.view(-1, 1, 8, 8)
    return (
        TensorDataset(train_x, y[:n_train]),
        TensorDataset(eval_x, y[n_train : n_train + n_eval]),
    )


class SeedNet(nn.Module):
    """The seed's MNIST model, shrunk for 8x8 digits (conv, pool, view, linear, log_softmax)."""

    def __init__(self):
        super().__init__()
        self.layer0 = nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = nn.Conv2d(4, 8, 3, padding=1)
        self.layer2 = nn.Conv2d(8, 10, 3, padding=1)
        self.out = nn.Linear(10 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.layer0(x))
        x = F.max_pool2d(F.relu(self.layer1(x)), 2)
        x = F.max_pool2d(F.relu(self.layer2(x)), 2)
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.out(x), dim=1)


def mlp():
    return nn.Sequential(
        nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10)
    )


def bn_cnn():
    """conv -> BatchNorm -> relu -> conv -> flatten -> BatchNorm1d -> linear."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.BatchNorm1d(5 * 4 * 4),
        nn.Linear(5 * 4 * 4, 10),
    )


def pooled_cnn():
    """conv -> adaptive pool -> torch.flatten -> linear -> linear."""

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 6, 3)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.hidden = nn.Linear(6, 8)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = torch.flatten(self.pool(torch.tanh(self.conv(x))), 1)
            return self.head(F.gelu(self.hidden(x)))

    return Pooled()


MODELS = {"seed": SeedNet, "mlp": mlp, "bn_cnn": bn_cnn, "pooled": pooled_cnn}


def inputs_for(name, n=32):
    torch.manual_seed(1)
    return torch.randn(n, 64) if name == "mlp" else torch.randn(n, 1, 8, 8)
