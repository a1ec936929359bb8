"""Callbacks of the Learner: cancel exceptions, device, metrics, progress, checkpoints.

A callback is any object with one or more stage methods (``before_fit``,
``after_batch``, ...), each called with the learner, in ``order``. ``STAGES``
lists them all: ``before_``, ``after_cancel_``, ``after_`` and ``cleanup_`` of
``fit``, ``epoch``, ``batch``, ``backward`` and ``step``.

Decisions:

* ``check_callback`` refuses a callback whose method looks like a stage method
  but is none (``after_bach``): a typo would otherwise never run, silently.
* Callbacks that record or write (metrics, progress, checkpoints, activation
  statistics) set ``runs_in_lr_find = False``: the LR finder's throwaway run
  must not show up in a run's records.

* ``MetricsCB`` keeps separate copies of its torchmetrics metrics for train and
  valid, resets them each epoch, and weights the loss by batch size; its
  ``history`` is one dict per epoch and split. Metrics and losses stay on the
  predictions' device: numbers are read once per epoch, never per batch. A batch
  only keeps its detached loss and its size (summed by one matrix product per
  epoch, or per 1024 batches): an in-place add per batch cost more.
* ``ProgressCB`` shows a rich bar with a live loss only on a terminal and when
  ``CI`` is not set (the loss read at most four times a second: each read syncs
  the device); otherwise it prints one line per epoch.
* ``CheckpointCB`` writes model, optimizer, epoch and random states at the end
  of each epoch (after validation) through ``Learner.save`` (atomic);
  ``load_checkpoint`` reads with ``weights_only=True`` and restores all of them,
  so a resumed ``fit`` continues the run bit for bit.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
import time
from typing import Any

import torch

from .checkpoints import read_checkpoint

__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "Callback",
    "CancelBackwardException",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CancelStepException",
    "CheckpointCB",
    "DeviceCB",
    "MetricsCB",
    "ProgressCB",
    "check_callback",
    "load_checkpoint",
]

STAGE_NAMES = ("fit", "epoch", "batch", "backward", "step")
WHENS = ("before", "after_cancel", "after", "cleanup")
STAGES = tuple(f"{when}_{stage}" for stage in STAGE_NAMES for when in WHENS)
_STAGE_LIKE = re.compile(r"(before|after|after_cancel|cleanup)_\w+")


class CancelFitException(Exception):
    """Raised by a callback to end ``fit`` (``after_fit`` still runs)."""


class CancelEpochException(Exception):
    """Raised by a callback to end the current epoch."""


class CancelBatchException(Exception):
    """Raised by a callback to skip the rest of the current batch."""


class CancelBackwardException(Exception):
    """Raised by a ``before_backward`` callback to skip the backward pass."""


class CancelStepException(Exception):
    """Raised by a ``before_step`` callback to skip the optimizer step."""


class Callback:
    """Base class for callbacks (optional: any object with stage methods works).

    ``order`` sorts callbacks (lowest first); ``runs_in_lr_find = False`` keeps a
    callback out of ``Learner.lr_find`` (records, progress and checkpoints of a
    throwaway run would mislead).
    """

    order = 0
    runs_in_lr_find = True


def check_callback(cb: Any) -> Any:
    """``cb`` itself if it has a stage method and no misspelled one; a ``TypeError`` otherwise."""
    if isinstance(cb, type):
        raise TypeError(f"callback {cb.__name__} is a class: pass an instance, {cb.__name__}()")
    known = ", ".join(STAGES)
    unknown = [
        name
        for name in dir(cb)
        if _STAGE_LIKE.fullmatch(name) and name not in STAGES and callable(getattr(cb, name))
    ]
    if unknown:
        raise TypeError(
            f"callback {cb!r} has {', '.join(unknown)}, which no stage fires;"
            f" the stage methods are {known}"
        )
    if not any(callable(getattr(cb, s, None)) for s in STAGES):
        raise TypeError(f"callback {cb!r} has no stage method; define one of {known}")
    return cb


def to_device(x: Any, device: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


class DeviceCB(Callback):
    """Move the model (before fit) and each batch (before batch) to ``device``."""

    def __init__(self, device: Any = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def before_fit(self, learn) -> None:
        learn.model.to(self.device)

    def before_batch(self, learn) -> None:
        learn.batch = to_device(learn.batch, self.device)


class MetricsCB(Callback):
    """torchmetrics metrics and the batch-size-weighted loss, per epoch, train and valid apart."""

    order = 10
    runs_in_lr_find = False

    def __init__(self, *metrics: Any, print_epochs: bool = True, **named: Any):
        for m in metrics:
            named[type(m).__name__.lower()] = m
        self.metrics = named
        self._split = {True: copy.deepcopy(named), False: copy.deepcopy(named)}
        self._device: dict[bool, torch.device | None] = {True: None, False: None}
        self.print_epochs = print_epochs
        self.history: list[dict] = []

    def before_epoch(self, learn) -> None:
        self._metrics = self._split[learn.training]
        for m in self._metrics.values():
            m.reset()
        self._updates = tuple(m.update for m in self._metrics.values())
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._loss_sum: torch.Tensor | None = None
        self._count = 0

    def after_batch(self, learn) -> None:
        # Every batch: no device read, no new tensor but the detached loss.
        loss = learn.loss
        if loss is None:
            return
        yb = learn.batch[1]
        if self._updates:
            preds = learn.preds.detach()
            if preds.device != self._device[learn.training]:  # accumulate where the preds are
                self._device[learn.training] = preds.device
                for m in self._metrics.values():
                    m.to(preds.device)
            for update in self._updates:
                update(preds, yb)
        self._losses.append(loss.detach())
        self._sizes.append(yb.shape[0] if isinstance(yb, torch.Tensor) else len(yb))
        if len(self._losses) == _FOLD:
            self._fold()

    def _fold(self) -> None:
        """Add the pending losses, weighted by batch size, to the epoch's sum (on the device)."""
        if not self._losses:
            return
        losses = torch.stack(self._losses).float()
        sizes = torch.tensor(self._sizes, dtype=losses.dtype, device=losses.device)
        total = losses @ sizes
        self._loss_sum = total if self._loss_sum is None else self._loss_sum + total
        self._count += sum(self._sizes)
        self._losses, self._sizes = [], []

    def after_epoch(self, learn) -> None:
        row = {"epoch": learn.epoch, "train": learn.training, "loss": math.nan}
        self._fold()
        if self._loss_sum is not None:  # else no batch ran (a cancelled epoch)
            # The epoch's only syncs with the device: one per number in the row.
            row["loss"] = (self._loss_sum / self._count).item()
            for name, m in self._metrics.items():
                value = m.compute()
                row[name] = value.item() if value.numel() == 1 else value.tolist()
        self.history.append(row)
        if self.print_epochs and not any(isinstance(cb, ProgressCB) for cb in learn.cbs):
            print(format_row(row))


# Losses kept as tensors before they are summed: bounds the memory of a long epoch.
_FOLD = 1024


def format_row(row: dict) -> str:
    parts = [f"epoch {row['epoch'] + 1}", "train" if row["train"] else "valid"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)]
    return "  ".join(parts)


class ProgressCB(Callback):
    """A rich progress bar with the live loss (on a terminal, outside CI); epoch lines."""

    order = 20
    runs_in_lr_find = False

    def __init__(self, live: bool | None = None):
        self.live = live

    def _enabled(self) -> bool:
        if self.live is not None:
            return self.live
        return sys.stdout.isatty() and not os.environ.get("CI")

    def before_fit(self, learn) -> None:
        self.progress = None
        self.shown = -math.inf
        if self._enabled():
            from rich.progress import Progress

            self.progress = Progress(transient=True)
            self.progress.start()

    def before_epoch(self, learn) -> None:
        if self.progress is not None:
            loader = learn.dls.train if learn.training else learn.dls.valid
            split = "train" if learn.training else "valid"
            self.task = self.progress.add_task(
                f"epoch {learn.epoch + 1} {split}", total=len(loader)
            )

    def after_batch(self, learn) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if learn.loss is None or now < self.shown + 0.25:
            self.progress.advance(self.task)
            return
        # Reading the loss syncs the device: a few times a second, not every batch.
        self.shown = now
        self.progress.update(
            self.task,
            advance=1,
            description=f"epoch {learn.epoch + 1} loss {learn.loss.item():.4f}",
        )

    def after_epoch(self, learn) -> None:
        if self.progress is not None:
            self.progress.remove_task(self.task)
        metrics = next((cb for cb in learn.cbs if isinstance(cb, MetricsCB)), None)
        if metrics is not None and metrics.history:
            line = format_row(metrics.history[-1])
            if self.progress is not None:
                self.progress.console.print(line)
            else:
                print(line)

    def cleanup_fit(self, learn) -> None:
        if getattr(self, "progress", None) is not None:
            self.progress.stop()
            self.progress = None


class CheckpointCB(Callback):
    """Save model, optimizer, epoch and random states at the end of each epoch, atomically.

    An epoch ends after its validation when ``fit`` validates, else after its
    training; ``load_checkpoint`` then resumes exactly where the run stopped.
    """

    order = 30
    runs_in_lr_find = False

    def __init__(self, path: str | os.PathLike, every: int = 1):
        self.path, self.every = os.fspath(path), every

    def after_epoch(self, learn) -> None:
        # Saving before validation would miss the random draws validation makes.
        ends_epoch = learn.phases and learn.training is learn.phases[-1]
        if True in learn.phases and ends_epoch and (learn.epoch + 1) % self.every == 0:
            learn.save(self.path)


def load_checkpoint(learn, path: str | os.PathLike) -> int:
    """Load a ``CheckpointCB`` file into ``learn`` to resume it; returns its epoch.

    Model, optimizer (also for the next ``fit``) and random states (torch's,
    Python's, NumPy's, the loaders' generators) are restored, so ``fit(2)``, then
    ``load_checkpoint`` and ``fit(2)`` on a fresh learner, equals ``fit(4)``.
    """
    state = read_checkpoint(path)
    learn._restore(state, with_opt=True, with_random=True)
    return state["epoch"]
