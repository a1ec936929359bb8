"""Metrics recorded at the end of every epoch of every trial.

By default loss and accuracy on the training and test sets; ``register_metric``
adds any function of the ``Trial`` (its model, its config, and ``trial.control``,
the control trial at the same epoch, loaded only when asked for).

Decisions:

* Epoch 0 is the model before training, evaluated on both sets by a plain loop.
  For later epochs the training figures are the means over that epoch's training
  batches (what the model saw while it learned), the test figures a full
  evaluation, both through the Learner's ``one_batch`` (so a ``Tweak`` of the
  loop's ``loss`` shows in them from epoch 1 on).
* Accuracy is recorded when predictions are ``(batch, classes)`` scores and
  targets are class indices; other tasks get the loss alone.
* A registered metric returns a number or a one-element tensor; anything else is
  an error naming the metric. Its rows have the split ``""``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Metrics", "Trial", "metric_value"]


class Metrics:
    """Loss and accuracy per split, plus metrics registered by name."""

    def __init__(self, loss: bool = True, accuracy: bool = True):
        self.loss, self.accuracy = loss, accuracy
        self.registered: dict[str, Callable[[Trial], Any]] = {}

    def register_metric(self, name: str, fn: Callable[[Trial], Any]) -> None:
        """Record ``fn(trial)`` as ``name`` at every epoch."""
        if not callable(fn):
            raise TypeError(f"register_metric({name!r}, ...) needs a function of the trial")
        if name in self.registered:
            raise ValueError(f"metric {name!r} is registered twice")
        self.registered[name] = fn

    def compute(self, trial: Trial, only: set[str] | None = None) -> dict[tuple[str, str], float]:
        """The registered metrics of ``trial`` now (``only``: a subset of names)."""
        out = {}
        for name, fn in self.registered.items():
            if only is None or name in only:
                out[("", name)] = metric_value(name, fn(trial))
        return out


def metric_value(name: str, value: Any) -> float:
    """``value`` (a number or a one-element tensor) as a float; a ``TypeError`` naming
    the metric otherwise."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"metric {name!r} returned a tensor of shape {tuple(value.shape)}; expected one number"
            )
        return float(value.detach().reshape(()).item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"metric {name!r} returned {type(value).__name__}; expected a number")


class Running:
    """Sums of loss, correct predictions and samples over the batches of one split."""

    def __init__(self, accuracy: bool):
        self.want_accuracy = accuracy
        self.loss = self.correct = 0.0
        self.n = 0
        self.classified = accuracy

    def add(self, loss: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor) -> None:
        n = len(targets)
        self.loss += float(loss.detach()) * n
        self.n += n
        if (
            self.classified
            and preds.dim() == 2
            and targets.dim() == 1
            and not targets.is_floating_point()
        ):
            self.correct += float((preds.detach().argmax(1) == targets).sum())
        else:
            self.classified = False

    def result(self, split: str, metrics: Metrics) -> dict[tuple[str, str], float]:
        out = {}
        if self.n and metrics.loss:
            out[(split, "loss")] = self.loss / self.n
        if self.n and self.classified and metrics.accuracy:
            out[(split, "accuracy")] = self.correct / self.n
        return out


class Trial:
    """What a metric function sees: the trial's model now, its config, its control."""

    def __init__(self, id: str, config: dict, epoch: int, model: torch.nn.Module, control: Any):
        self.id, self.config, self.epoch, self.model = id, config, epoch, model
        self._control = control

    @property
    def control(self) -> Trial:
        """The control trial at the same epoch (this trial itself if it is a control)."""
        if callable(self._control):
            self._control = self._control()
        return self._control

    @property
    def settings(self) -> dict:
        return self.config["settings"]

    def __repr__(self) -> str:
        return f"Trial({self.id}, epoch={self.epoch})"
