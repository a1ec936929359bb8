"""The data: scikit-learn's digits, with its hyperparameters declared here."""

import torch
from sklearn.datasets import load_digits

from ptera import default, ptera, tag


@ptera
def load():
    # Fraction of the digits held out for testing
    test_fraction: tag.HyperParameter & float = default(0.2)
    # Seed of the train/test split
    split_seed: tag.HyperParameter & int = default(0)

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    cut = int((1 - test_fraction) * len(x))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])
