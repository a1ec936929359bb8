"""Real data that ships with a package: scikit-learn's handwritten digits, no download."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

__all__ = ["digits"]


def digits(images: bool = True, test_fraction: float = 0.2, seed: int = 0):
    """``(train, test)`` TensorDatasets of the 1,797 8x8 digits, pixels in [0, 1].

    ``images=True`` gives ``(1, 8, 8)`` inputs (for convolutions), else 64 features.
    The split is a fixed permutation drawn from ``seed``.
    """
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise ModuleNotFoundError("digits() needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    if images:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])
