"""A Learner (fit / epoch / batch) whose stages are instrumented functions.

``fit``, ``one_epoch`` and ``one_batch`` are ``@tooled`` methods, so ``one_batch > loss``,
``fit > epoch`` or ``one_epoch(train=False) > loss`` are selectors, and so is anything
inside the model (``Linear > input``). Callbacks come two ways, mixable: objects
with stage methods (``before_fit`` ... ``after_batch``, called in ``order`` with the
learner), and selector listeners (``@learn.on("one_batch > loss")``).

Decisions:

* Each stage runs ``before_<stage>``, the body, ``after_cancel_<stage>`` if the
  body raised ``Cancel<Stage>Exception``, then ``after_<stage>`` and
  ``cleanup_<stage>``, both always (also when another error propagates), and
  each for every callback even when one of them raises.
* Validation iterates the valid loader in eval mode under ``torch.no_grad()``.
* Listener results are collected in ``learn.results`` (a ``Result``), by
  listener name, for the last ``fit``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..effects import Overlay
from ..match import compile_selector
from ..overlay import caller_env
from ..results import Result
from ..selector import select
from ..tooling import tooled
from .callbacks import (
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    check_callback,
)

__all__ = ["DataLoaders", "Learner"]

_CANCEL = {
    "fit": CancelFitException,
    "epoch": CancelEpochException,
    "batch": CancelBatchException,
}


class DataLoaders:
    """A train and a valid loader (``DataLoaders.from_datasets`` builds them)."""

    def __init__(self, train: Any, valid: Any):
        self.train, self.valid = train, valid

    @classmethod
    def from_datasets(
        cls, train: Dataset, valid: Dataset, batch_size: int = 64, seed: int | None = 0, **kwargs
    ) -> DataLoaders:
        """Shuffled train batches (seeded), ordered valid batches."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return cls(
            DataLoader(train, batch_size, shuffle=True, generator=generator, **kwargs),
            DataLoader(valid, batch_size * 2, shuffle=False, **kwargs),
        )


class Learner:
    """Train ``model`` on ``dls`` with ``loss_fn``; ``fit(n)`` runs the stages and callbacks."""

    def __init__(
        self,
        model: torch.nn.Module,
        dls: DataLoaders,
        loss_fn: Callable = torch.nn.functional.mse_loss,
        lr: float = 0.1,
        opt_func: Callable = torch.optim.SGD,
        cbs: tuple = (),
    ):
        self.model, self.dls, self.loss_fn, self.lr, self.opt_func = (
            model,
            dls,
            loss_fn,
            lr,
            opt_func,
        )
        self.cbs = [check_callback(cb) for cb in cbs]
        self._methods_key: tuple = ()
        self._methods_cache: dict[str, list] = {}
        self.listeners = Overlay()
        self.results = Result()
        self.opt = None
        self.training = False
        self.epoch = self.iter = 0
        self.batch = self.preds = self.loss = None

    # -- callbacks ---------------------------------------------------------------
    def add_cb(self, cb: Any) -> Learner:
        """Add a callback object (checked: it must have a stage method)."""
        self.cbs.append(check_callback(cb))
        return self

    def remove_cb(self, cb: Any) -> None:
        self.cbs.remove(cb)

    def on(self, selector: str) -> Callable[[Callable], Callable]:
        """Decorator: call the listener on each match of ``selector`` during ``fit``."""
        env = caller_env(1)
        sel = select(selector) if isinstance(selector, str) else selector
        if not hasattr(sel, "__ptera_rules__"):
            compile_selector(sel, env)  # a selector naming nothing fails here, not mid-fit

        def register(fn: Callable) -> Callable:
            self.listeners = self.listeners.on(sel, fn, env=env)
            return fn

        return register

    def callback(self, stage: str) -> None:
        """Call ``stage`` on every callback that has it, in ``order``.

        In ``after_*`` and ``cleanup_*`` stages every callback runs even if an
        earlier one raised (a cancel included): the first exception is re-raised
        at the end, so no callback misses the close of what it opened.
        """
        methods = self._methods(stage)
        if not stage.startswith(("after_", "cleanup_")):
            for method in methods:
                method(self)
            return
        first = None
        for method in methods:
            try:
                method(self)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def _methods(self, stage: str) -> list:
        # Stages fire ~10 times a batch: sort once per set of callbacks, not per call.
        key = tuple(map(id, self.cbs))
        if key != self._methods_key:
            self._methods_key, self._methods_cache = key, {}
        got = self._methods_cache.get(stage)
        if got is None:
            ordered = sorted(self.cbs, key=lambda c: getattr(c, "order", 0))
            got = [m for m in (getattr(cb, stage, None) for cb in ordered) if m is not None]
            self._methods_cache[stage] = got
        return got

    @contextmanager
    def stage(self, name: str):
        """after_cancel_/after_/cleanup_ callbacks around a stage body.

        The body starts with ``self.callback("before_<name>")``, so that a cancel
        raised there is handled like one raised later in the stage.
        """
        try:
            try:
                yield
            except _CANCEL[name]:
                self.callback(f"after_cancel_{name}")
            finally:
                self.callback(f"after_{name}")
        finally:
            self.callback(f"cleanup_{name}")

    # -- the stages ------------------------------------------------------------------
    def fit(self, n_epochs: int = 1, train: bool = True, valid: bool = True) -> Learner:
        """Train (and validate) for ``n_epochs``; returns ``self``.

        The listeners are active for the whole call, so they see the loop itself
        (``fit > epoch``), which runs in the instrumented function ``fit`` below.
        """
        self.n_epochs = n_epochs
        self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
        with self.listeners as results:
            self.results = results
            fit(self, n_epochs, train, valid)
        return self

    @tooled
    def one_epoch(self, train: bool):
        """One pass over the train (``train=True``) or valid loader."""
        self.training = train
        self.model.train(train)
        loader = self.dls.train if train else self.dls.valid
        self.loss = None
        with self.stage("epoch"):
            self.callback("before_epoch")
            for i, batch in enumerate(loader):
                self.iter, self.batch = i, batch
                loss = self.one_batch()  # noqa: F841 -- a point: `one_epoch > loss`
        return self.loss

    @tooled
    def one_batch(self):
        """Predict, compute the loss and, when training, step the optimizer."""
        self.preds = self.loss = None
        with self.stage("batch"):
            self.callback("before_batch")
            xb, yb = self.split_batch(self.batch)
            preds = self.model(xb)
            self.preds = preds
            loss = self.loss_fn(preds, yb)
            self.loss = loss
            if self.training:
                self.backward()
                self.step()
                self.zero_grad()
        return self.loss

    def split_batch(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch; a clear error for anything else."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            what = type(batch).__name__ + (
                f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""
            )
            split = "train" if self.training else "valid"
            raise ValueError(
                f"the {split} loader yielded a {what} at batch {self.iter};"
                " the Learner expects (inputs, targets) pairs"
            )
        return batch[0], batch[1]

    def backward(self) -> None:
        self.callback("before_backward")
        self.loss.backward()
        self.callback("after_backward")

    def step(self) -> None:
        self.callback("before_step")
        self.opt.step()
        self.callback("after_step")

    def zero_grad(self) -> None:
        self.opt.zero_grad()

    def lr_find(self, **kwargs) -> Any:
        """Run an ``LRFinder`` (model and optimizer restored afterwards); returns it."""
        from .lrfind import LRFinder

        finder = LRFinder(**kwargs)
        self.add_cb(finder)
        try:
            self.fit(finder.max_epochs, valid=False)
        finally:
            self.remove_cb(finder)
        return finder


@tooled
def fit(learn: Learner, n_epochs: int, train: bool = True, valid: bool = True) -> None:
    """The fit stage: epochs of training and validation (``fit > epoch`` selects them)."""
    with learn.stage("fit"):
        learn.callback("before_fit")
        for epoch in range(n_epochs):
            learn.epoch = epoch
            if train:
                learn.one_epoch(True)
            if valid:
                with torch.no_grad():
                    learn.one_epoch(False)
