"""A Learner (fit / epoch / batch) whose stages are instrumented functions.

The bodies of the ``fit``, ``epoch`` and ``batch`` stages are the ``@tooled``
functions ``fit``, ``one_epoch`` and ``one_batch``, so ``one_batch > loss``,
``fit > epoch`` or ``one_epoch(train=False) > loss`` are selectors, and so is anything
inside the model (``Linear > input``). Callbacks come two ways, mixable: objects
with stage methods (``before_fit`` ... ``after_batch``, called in ``order`` with the
learner), and selector listeners (``@learn.on("one_batch > loss")``).

Decisions:

* The stages run through ``run_stage`` (``stages.py``): ``before_<stage>``, the
  body, ``after_cancel_<stage>`` on its cancel, then ``after_<stage>`` and
  ``cleanup_<stage>``, always, for fit, epoch, batch, backward and step.
* A stage's state (``training``, a cleared ``loss``) is set before its
  ``before_`` event, so callbacks see the stage they are in.
* Validation iterates the valid loader in eval mode under ``torch.no_grad()``.
* Listener results are collected in ``learn.results`` (a ``Result``), by
  listener name, for the last ``fit``.
* The seed's state names are read-only views where ours differ: ``xb`` and
  ``yb`` (the current batch's inputs and targets, read from ``batch``, so a
  callback that moves or replaces the batch is seen) and ``i`` (``iter``);
  ``loss_f`` is another name for ``loss_fn``. Only ``batch`` is stored, so the
  views can never disagree with it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .. import Effects, Result, select, tooled
from ..plugin import caller_env, check_selector, is_plugin
from .callbacks import to_device
from .checkpoints import random_states, read_checkpoint, set_random_states, write_checkpoint
from .stages import CallbackList, Stages

__all__ = ["DataLoaders", "Learner", "auto_loss"]


class DataLoaders:
    """A train and a valid loader (``DataLoaders.from_datasets`` builds them)."""

    def __init__(self, train: Any, valid: Any):
        self.train, self.valid = train, valid

    @classmethod
    def from_datasets(
        cls, train: Dataset, valid: Dataset, batch_size: int = 64, seed: int | None = 0, **kwargs
    ) -> DataLoaders:
        """Shuffled train batches (seeded), ordered valid batches."""
        if "bs" in kwargs:  # fastai's spelling: a clear error, not DataLoader's TypeError
            raise TypeError(f"from_datasets takes batch_size={kwargs['bs']!r}, not bs=")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return cls(
            DataLoader(train, batch_size, shuffle=True, generator=generator, **kwargs),
            DataLoader(valid, batch_size * 2, shuffle=False, **kwargs),
        )


def auto_loss(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The Learner's loss when none is given: ``cross_entropy`` for integer targets
    (class indices), ``mse_loss`` for float targets of the predictions' shape."""
    if targets.dtype.is_floating_point:
        if preds.shape != targets.shape:
            raise ValueError(
                f"the Learner got no loss_fn: float targets mean mse_loss, but the"
                f" predictions have shape {tuple(preds.shape)} and the targets"
                f" {tuple(targets.shape)}; pass loss_fn= to say what to compute"
            )
        return torch.nn.functional.mse_loss(preds, targets)
    if targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(
            f"the Learner got no loss_fn and targets of dtype {targets.dtype}: it chooses"
            " cross_entropy for integer targets and mse_loss for float ones; pass loss_fn="
        )
    return torch.nn.functional.cross_entropy(preds, targets)


class Learner(Stages):
    """Train ``model`` on ``dls`` with ``loss_fn``; ``fit(n)`` runs the stages and callbacks.

    Without ``loss_fn``, the loss follows the targets' dtype (``auto_loss``):
    ``cross_entropy`` for class indices, ``mse_loss`` for float targets.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dls: DataLoaders,
        loss_fn: Callable | None = None,
        lr: float = 0.1,
        opt_func: Callable = torch.optim.SGD,
        cbs: tuple = (),
    ):
        self.model, self.dls, self.loss_fn, self.lr, self.opt_func = (
            model,
            dls,
            auto_loss if loss_fn is None else loss_fn,
            lr,
            opt_func,
        )
        self.cbs = CallbackList(cbs)  # a new list, each callback checked (stages.py)
        self.listeners = Effects()
        self.results = Result()
        self.opt = None
        self.grad_scaler: Any = None  # a torch.amp.GradScaler, set by MixedPrecision(float16)
        self._opt_state: dict | None = None
        self.phases: tuple[bool, ...] = ()
        self.training = False
        self.epoch = self.iter = 0
        self.batch = self.preds = self.loss = None

    # -- the seed's names for the state -------------------------------------------
    @property
    def xb(self) -> Any:
        """The current batch's inputs (``batch[0]``; ``None`` before the first batch)."""
        return None if self.batch is None else self.split_batch(self.batch)[0]

    @property
    def yb(self) -> Any:
        """The current batch's targets (``batch[1]``; ``None`` before the first batch)."""
        return None if self.batch is None else self.split_batch(self.batch)[1]

    @property
    def i(self) -> int:
        """The current batch's index in its loader (``iter``)."""
        return self.iter

    @property
    def loss_f(self) -> Callable:
        """The loss function (``loss_fn``), under the seed's name."""
        return self.loss_fn

    @loss_f.setter
    def loss_f(self, fn: Callable) -> None:
        self.loss_fn = fn

    # -- callbacks ---------------------------------------------------------------
    def add_cb(self, cb: Any) -> Learner:
        """Add a callback object (checked: it must have a stage method)."""
        self.cbs.append(cb)
        return self

    def remove_cb(self, cb: Any) -> None:
        """Remove a callback object added before."""
        self.cbs.remove(cb)

    def on(self, selector: str) -> Callable[[Callable], Callable]:
        """Decorator: call the listener on each match of ``selector`` during ``fit``."""
        env = caller_env(1)
        sel = select(selector) if isinstance(selector, str) else selector
        if not is_plugin(sel):
            check_selector(sel, env)  # a selector naming nothing fails here, not mid-fit

        def register(fn: Callable) -> Callable:
            self.listeners = self.listeners.on(sel, fn, env=env)
            return fn

        return register

    # -- the stages ------------------------------------------------------------------
    def fit(
        self, n_epochs: int = 1, train: bool = True, valid: bool = True, start_epoch: int = 0
    ) -> Learner:
        """Train (and validate) epochs ``start_epoch`` to ``n_epochs - 1``; returns ``self``.

        ``start_epoch`` resumes a run: after ``epoch = load_checkpoint(learn, path)``,
        ``fit(n, start_epoch=epoch + 1)`` numbers the epochs (and their checkpoints
        and metrics rows) as the uninterrupted run would. The listeners are active
        for the whole call, so they see the loop itself (``fit > epoch``), which runs
        in the instrumented function ``fit`` below.
        """
        if not 0 <= start_epoch <= n_epochs:
            raise ValueError(
                f"fit needs 0 <= start_epoch <= n_epochs, got start_epoch={start_epoch}"
                f" and n_epochs={n_epochs}"
            )
        self.n_epochs = n_epochs
        self.phases = tuple(t for t, on in ((True, train), (False, valid)) if on)
        self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
        if self._opt_state is not None:  # from `load`: the resumed run's optimizer
            # A copy: optimizers keep loaded tensors and update them in place.
            self.opt.load_state_dict(copy.deepcopy(self._opt_state))
            self._opt_state = None
        with self.listeners as results:
            self.results = results
            self.run_stage("fit", fit, self, n_epochs, train, valid, start_epoch)
        return self

    def fit_one_cycle(
        self,
        n_epochs: int,
        lr_max: float | None = None,
        train: bool = True,
        valid: bool = True,
        **kwargs: Any,
    ) -> Learner:
        """``fit`` under torch's ``OneCycleLR`` peaking at ``lr_max`` (default ``self.lr``).

        ``kwargs`` go to ``OneCycleLR`` (``pct_start``, ``div_factor``, ...).
        """
        from .training import OneCycle

        steps = n_epochs * len(self.dls.train) if train else 1
        cycle = OneCycle(self.lr if lr_max is None else lr_max, steps, **kwargs)
        self.add_cb(cycle)
        try:
            return self.fit(n_epochs, train, valid)
        finally:
            self.remove_cb(cycle)

    def one_epoch(self, train: bool) -> Any:
        """One pass over the train (``train=True``) or valid loader; its last loss."""
        self.training = train
        self.model.train(train)
        self.loss = None
        self.run_stage("epoch", one_epoch, self, train)
        return self.loss

    def one_batch(self) -> Any:
        """Predict, compute the loss and, when training, step the optimizer; the loss."""
        self.preds = self.loss = None
        self.run_stage("batch", one_batch, self)
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
        """The backward stage: ``loss.backward()``."""
        self.run_stage("backward", self._backward)

    def _backward(self) -> None:
        if self.grad_scaler is None:
            self.loss.backward()
        else:
            self.grad_scaler.scale(self.loss).backward()

    def step(self) -> None:
        """The step stage: ``opt.step()``."""
        self.run_stage("step", self._step)

    def _step(self) -> None:
        if self.grad_scaler is None:
            self.opt.step()
        else:
            self.grad_scaler.step(self.opt)
            self.grad_scaler.update()

    def zero_grad(self) -> None:
        """Clear the gradients (after the step; not a stage)."""
        self.opt.zero_grad()

    # -- predictions -------------------------------------------------------------------
    def _device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def predict(self, xb: Any) -> Any:
        """The model's output on the inputs ``xb`` (a batch), in eval mode, without grad."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.model(to_device(xb, self._device()))
        finally:
            self.model.train(was_training)

    def get_preds(self, loader: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predictions, targets)`` over ``loader`` (default: the valid loader), on the CPU.

        A plain eval loop under ``no_grad``: no stage, callback or listener runs.
        """
        loader = self.dls.valid if loader is None else loader
        preds, targets = [], []
        for i, batch in enumerate(loader):
            self.iter = i
            xb, yb = self.split_batch(batch)
            preds.append(self.predict(xb))
            targets.append(yb)
        if not preds:
            raise ValueError("get_preds: the loader yielded no batch")
        return torch.cat(preds).cpu(), torch.cat([torch.as_tensor(t) for t in targets]).cpu()

    # -- saving -----------------------------------------------------------------------
    def _loaders(self) -> dict[str, Any]:
        return {"train": self.dls.train, "valid": self.dls.valid}

    def save(self, path: str | os.PathLike, with_opt: bool = True) -> str:
        """Write model, optimizer, epoch and random states to ``path`` (atomically)."""
        state = {
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "random": random_states(self._loaders()),
        }
        if with_opt and self.opt is not None:
            state["opt"] = self.opt.state_dict()
        return write_checkpoint(path, state)

    def load(
        self, path: str | os.PathLike, with_opt: bool = True, with_random: bool = False
    ) -> Learner:
        """Read a ``save`` or ``CheckpointCB`` file (``weights_only=True``) into this learner.

        The optimizer state is also the one the next ``fit`` starts from.
        ``with_random=True`` restores the random states too, so that a ``fit``
        right after continues the saved run exactly (``load_checkpoint`` does this).
        """
        self._restore(read_checkpoint(path), with_opt, with_random)
        return self

    def _restore(self, state: dict, with_opt: bool, with_random: bool) -> None:
        self.model.load_state_dict(state["model"])
        if with_opt and "opt" in state:
            if self.opt is None:
                self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
            self.opt.load_state_dict(copy.deepcopy(state["opt"]))
            self._opt_state = state["opt"]
        if with_random and "random" in state:
            set_random_states(state["random"], self._loaders())

    def lr_find(self, **kwargs) -> Any:
        """Run an ``LRFinder`` (model and optimizer restored afterwards); returns it.

        Callbacks with ``runs_in_lr_find = False`` (metrics, progress, checkpoints,
        activation statistics) sit it out, and ``results`` keeps the last ``fit``'s.
        """
        from .lrfind import LRFinder

        finder = LRFinder(**kwargs)
        cbs, results, opt_state = self.cbs, self.results, self._opt_state
        self.cbs = [cb for cb in cbs if getattr(cb, "runs_in_lr_find", True)] + [finder]
        try:
            self.fit(finder.max_epochs, valid=False)
        finally:
            # A loaded optimizer state is still the one the next real fit starts from.
            self.cbs, self.results, self._opt_state = cbs, results, opt_state
        return finder


@tooled
def fit(
    learn: Learner, n_epochs: int, train: bool = True, valid: bool = True, start_epoch: int = 0
) -> None:
    """The fit stage's body: epochs of training and validation (``fit > epoch``)."""
    for epoch in range(start_epoch, n_epochs):
        learn.epoch = epoch
        if train:
            learn.one_epoch(True)
        if valid:
            with torch.no_grad():
                learn.one_epoch(False)


@tooled
def one_epoch(learn: Learner, train: bool) -> None:
    """The epoch stage's body: every batch of a loader (``one_epoch(train=False) > loss``)."""
    loader = learn.dls.train if train else learn.dls.valid
    for i, batch in enumerate(loader):
        learn.iter, learn.batch = i, batch
        loss = learn.one_batch()  # noqa: F841 -- a point: `one_epoch > loss`


@tooled
def one_batch(learn: Learner) -> None:
    """The batch stage's body (``one_batch > loss``, ``one_batch(xb) > preds``)."""
    xb, yb = learn.split_batch(learn.batch)
    preds = learn.model(xb)
    learn.preds = preds
    loss = learn.loss_fn(preds, yb)
    learn.loss = loss
    if learn.training:
        learn.backward()
        learn.step()
        learn.zero_grad()
