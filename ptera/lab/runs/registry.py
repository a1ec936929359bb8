"""Registries of the names a run configuration uses: models, datasets, optimizers, metrics.

Each registry is a dict from name to factory; add an entry (``MODEL_REGISTRY["mine"]
= factory``) or write ``"package.module:factory"`` in the configuration.

* A model factory takes ``image_size, in_channels, n_classes`` (and ``noskip`` if
  it has skip connections) and returns an ``nn.Module``.
* A dataset factory takes ``resolution`` (``None``: the native size) and returns
  ``(train, test)`` datasets of ``(image, label)`` pairs.
* An optimizer factory returns ``(optimizer class, hyperparameters)``.
* A metric is ``fn(model, test_set) -> number``, or ``None`` for the loss and
  accuracy that every run records.

Names match regardless of case, ``_`` and ``-`` when exactly one entry does (the
seed's ``"Top5Accuracy"`` is ``top5_accuracy``, ``"MCC"`` is ``mcc``);
``canonical`` gives the entry's own name, which the configuration then uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .. import models
from ..experiments.imports import import_object

__all__ = [
    "DATASET_REGISTRY",
    "METRICS_REGISTRY",
    "MODEL_REGISTRY",
    "OPTIMIZER_REGISTRY",
    "Registry",
]


class Registry(dict):
    """Names to factories; ``lookup`` also imports ``"package.module:factory"``."""

    def __init__(self, what: str, entries: dict[str, Any]):
        super().__init__(entries)
        self.what = what

    def canonical(self, name: Any, key: str) -> str:
        """The entry's own name for ``name`` (exact, or the one entry equal to it
        regardless of case, ``_`` and ``-``); an import path as given. A
        ``ValueError`` naming the config ``key`` for an unknown or ambiguous name."""
        if not isinstance(name, str):
            raise ValueError(
                f"config key {key!r}: a {self.what} name must be a string, got {name!r}"
            )
        if name in self or ":" in name:
            return name
        matches = [entry for entry in self if _fold(entry) == _fold(name)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(
                f"config key {key!r}: {self.what} {name!r} is ambiguous"
                f" (it matches {', '.join(sorted(matches))}): write one of them exactly"
            )
        raise ValueError(
            f"config key {key!r}: unknown {self.what} {name!r}"
            f" (known: {', '.join(sorted(self))}; or 'package.module:factory')"
        )

    def lookup(self, name: Any, key: str) -> Any:
        """The factory for ``name`` (see ``canonical``); a ``ValueError`` naming the
        config ``key`` otherwise."""
        name = self.canonical(name, key)
        if name in self:
            return self[name]
        try:
            return import_object(name)
        except ValueError as exc:
            raise ValueError(f"config key {key!r}: {exc}") from None


def _fold(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


# -- datasets ---------------------------------------------------------------------------
def _upscale(ds: TensorDataset, resolution: int | None) -> TensorDataset:
    x, y = ds.tensors
    if resolution is not None and resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return TensorDataset(x, y)


def digits(resolution: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits, upscaled to ``resolution`` by bilinear interpolation."""
    from ..data import digits as load

    train, test = load()
    return _upscale(train, resolution), _upscale(test, resolution)


def noisy_digits(resolution: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """The digits with Gaussian noise (std 0.25, fixed seed) added before upscaling."""
    from ..data import digits as load

    g = torch.Generator().manual_seed(0)
    out = []
    for ds in load():
        x, y = ds.tensors
        out.append(
            _upscale(TensorDataset(x + 0.25 * torch.randn(x.shape, generator=g), y), resolution)
        )
    return out[0], out[1]


# -- optimizers ---------------------------------------------------------------------------
def sgd() -> tuple[type, dict]:
    return torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}


def adam() -> tuple[type, dict]:
    return torch.optim.Adam, {"lr": 3e-3}


def radam() -> tuple[type, dict]:
    return torch.optim.RAdam, {"lr": 3e-3}


# -- metrics -------------------------------------------------------------------------------
def _predictions(model: torch.nn.Module, test: Any) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(test, batch_size=512)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    scores, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            scores.append(model(x.to(device)).cpu())
            labels.append(y)
    return torch.cat(scores), torch.cat(labels)


def top5_accuracy(model: torch.nn.Module, test: Any) -> float:
    """Share of test samples whose label is among the 5 highest scores."""
    scores, labels = _predictions(model, test)
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(1).float().mean())


def mcc(model: torch.nn.Module, test: Any) -> float:
    """Matthews correlation coefficient on the test set (scikit-learn)."""
    from sklearn.metrics import matthews_corrcoef

    scores, labels = _predictions(model, test)
    return float(matthews_corrcoef(labels.numpy(), scores.argmax(1).numpy()))


MODEL_REGISTRY = Registry(
    "model",
    {
        "mlp": models.MLP,
        "lenet5": models.Lenet5,
        "vgg": models.SmallVGG,
        "resnet": models.SmallResNet,
    },
)
DATASET_REGISTRY = Registry("dataset", {"digits": digits, "noisy_digits": noisy_digits})
OPTIMIZER_REGISTRY = Registry("optimizer", {"sgd": sgd, "adam": adam, "radam": radam})
METRICS_REGISTRY: Registry = Registry(
    "metric", {"accuracy": None, "loss": None, "top5_accuracy": top5_accuracy, "mcc": mcc}
)

Factory = Callable[..., Any]
