"""The learning-rate finder: an exponential lr schedule that stops when the loss diverges.

It records ``(lr, loss)`` per training batch, cancels the fit at ``num_it`` batches
or when the loss exceeds ``div`` times its best, and restores the model's and the
optimizer's state afterwards (bit for bit), whatever happened.
"""

from __future__ import annotations

import copy
import math
import os

from .callbacks import Callback, CancelFitException

__all__ = ["LRFinder"]


class LRFinder(Callback):
    """Exponential lr from ``start_lr`` to ``end_lr`` over ``num_it`` batches."""

    order = -10

    def __init__(
        self, start_lr: float = 1e-6, end_lr: float = 10.0, num_it: int = 100, div: float = 4.0
    ):
        if not 0 < start_lr < end_lr:
            raise ValueError(f"LRFinder needs 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
        if not (isinstance(num_it, int) and num_it >= 2):
            # One step gives one loss: there is no slope to suggest a rate from.
            raise ValueError(f"LRFinder needs num_it >= 2 steps, got {num_it!r}")
        self.start_lr, self.end_lr, self.num_it, self.div = start_lr, end_lr, num_it, div
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.max_epochs = 1000  # bounded by num_it; fit stops through CancelFitException

    def lr_at(self, i: int) -> float:
        return self.start_lr * (self.end_lr / self.start_lr) ** (i / self.num_it)

    def before_fit(self, learn) -> None:
        self._model = copy.deepcopy(learn.model.state_dict())
        self._opt = copy.deepcopy(learn.opt.state_dict())
        self.lrs, self.losses, self.best = [], [], math.inf
        self._set(learn, self.lr_at(0))

    def _set(self, learn, lr: float) -> None:
        for group in learn.opt.param_groups:
            group["lr"] = lr

    def after_batch(self, learn) -> None:
        if not learn.training or learn.loss is None:
            return
        loss = learn.loss.item()
        self.lrs.append(learn.opt.param_groups[0]["lr"])
        self.losses.append(loss)
        self.best = min(self.best, loss)
        if (
            len(self.losses) >= self.num_it
            or not math.isfinite(loss)
            or loss > self.div * self.best
        ):
            raise CancelFitException()
        self._set(learn, self.lr_at(len(self.losses)))

    def cleanup_fit(self, learn) -> None:
        learn.model.load_state_dict(self._model)
        learn.opt.load_state_dict(self._opt)

    @property
    def suggestion(self) -> float:
        """The lr a tenth of the one with the lowest loss (a common, safe choice)."""
        if not self.losses:
            raise ValueError("the LR finder has not run")
        best = min(range(len(self.losses)), key=self.losses.__getitem__)
        return self.lrs[best] / 10

    def plot(self, path: str | os.PathLike = "lr_find.png") -> str:
        """Write loss against lr (log scale) with the suggestion marked; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses)
        ax.axvline(self.suggestion, linestyle="--", color="gray")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return os.fspath(path)
