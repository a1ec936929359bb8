"""Running one trial: a pure function of its plan, resumable from any committed epoch.

Decisions:

* All randomness comes from the trial's seed settings: the initial weights from
  ``seed_weights``, the batch order of epoch ``e`` from ``(seed_shuffle, e)``,
  anything else drawn during epoch ``e`` (dropout) from ``(seed_weights,
  seed_shuffle, e)``. A control and its interventions therefore share weights,
  batch order and dropout masks, and a difference between them comes from the
  intervention. Seeding per epoch makes a resumed trial identical to one that
  never stopped.
* A trial runs single-threaded inside ``torch.random.fork_rng``: its numbers do
  not depend on the executor that ran it, and the caller's random state is left
  as it was. Parallelism comes from running trials side by side.
* With ``device=``, weights are drawn on the CPU and moved, batches are moved by
  the Learner's ``DeviceCB``, checkpoints load onto the CPU first. Bit-for-bit
  reproducibility is a CPU promise; a trial on another device is another trial.
* A trial resumes from its last committed epoch whose checkpoint verifies
  (checksum, trial id, epoch); a damaged one is a warning naming the file, and
  the epochs after the last good one are trained again.
* The training loop is the ``Learner``; the trial adds its callbacks (seeds, step
  windows and running metrics first; the experiment's own callbacks, fresh from
  its factory; the commit of each epoch last, with what the callbacks'
  ``epoch_metrics()`` return, see ``trial_callbacks``) and, around the whole
  run, the overlays of its ``Tweak`` interventions.
"""

from __future__ import annotations

import copy
import traceback
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from ..callbacks import Callback, DeviceCB, to_device
from ..learner import DataLoaders, Learner
from .config import derive_seed
from .interventions import Intervention, hyperparameters_of, optimizer_defaults
from .metrics import Metrics, Running, Trial
from .store import CheckpointError, Store
from .trial_callbacks import COMMIT_ORDER, epoch_numbers, make_callbacks

__all__ = ["Setup", "TrialError", "TrialPlan", "run_trial"]

EVAL_BATCH = 512


class TrialError(RuntimeError):
    """A trial failed; the message names it and where it stopped."""


@dataclass
class TrialPlan:
    """One trial of the grid: identity, settings, effects, and how to label it."""

    id: str
    control: str
    config: dict
    settings: dict
    effects: list[Intervention]
    variation: dict = field(default_factory=dict)  # parameter -> value, as the grid gave it
    condition: dict = field(default_factory=dict)  # the intervention's parameters
    label: str = "control"

    @property
    def is_control(self) -> bool:
        return self.id == self.control


@dataclass
class Setup:
    """What every trial of an experiment shares (sent once to each worker)."""

    model: Any  # an nn.Module to copy, or a class / function that builds one
    train: Any
    test: Any
    loss_fn: Any
    metrics: Metrics
    store: Store
    plans: dict[str, TrialPlan]
    device: str = "cpu"
    callbacks: Any = None  # a factory of the trial's own Learner callbacks


def build_model(template: Any, seed: int | None) -> torch.nn.Module:
    """A fresh model: built by ``template()``, or a copy of it with re-drawn weights."""
    if seed is not None:
        torch.manual_seed(seed)
    if isinstance(template, torch.nn.Module):
        model = copy.deepcopy(template)
        if seed is not None:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return model
    model = template()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    return model


def check_resettable(model: torch.nn.Module) -> None:
    """Every parameter of a model instance must be re-drawable by some ``reset_parameters``."""
    missing = [
        f"{name or 'the model'} ({type(m).__name__})"
        for name, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False)) and not hasattr(m, "reset_parameters")
    ]
    if missing:
        raise TypeError(
            f"cannot draw initial weights for the parameters of {', '.join(missing)}:"
            " they have no reset_parameters(); pass the model's class or a function that"
            f" builds it (model={type(model).__name__}) instead of an instance"
        )


class TrialRun:
    """The live state of a trial that interventions act on."""

    def __init__(self, plan: TrialPlan, model: torch.nn.Module):
        self.plan, self.model = plan, model
        self.step = 0
        self.learn: Learner | None = None
        s = plan.settings
        self.control_hyperparameters = optimizer_defaults(
            s["optimizer"], hyperparameters_of(s), None
        )

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.learn.opt


class TrialCallback(Callback):
    """Seeds each epoch, keeps the step windows, and measures loss and accuracy."""

    order = -100  # windows and seeds before any user callback

    def __init__(self, run: TrialRun, setup: Setup, first_epoch: int, opt_state: dict | None):
        self.run, self.setup, self.first, self.opt_state = run, setup, first_epoch, opt_state
        self.windowed = [e for e in run.plan.effects if e.when is not None]
        self.inside = {id(e): _inside(e, run.step - 1) for e in self.windowed}
        self.entered: list = []
        self.generator = torch.Generator()
        self.running: dict[str, Running] = {}

    def before_fit(self, learn: Learner) -> None:
        if self.opt_state is not None:
            learn.opt.load_state_dict(self.opt_state)

    def before_epoch(self, learn: Learner) -> None:
        s = self.run.plan.settings
        epoch = self.first + learn.epoch + 1
        if learn.training:
            self.generator.manual_seed(derive_seed("shuffle", s["seed_shuffle"], epoch))
            torch.manual_seed(derive_seed("run", s["seed_weights"], s["seed_shuffle"], epoch))
        self.running["train" if learn.training else "test"] = Running(self.setup.metrics.accuracy)

    def before_batch(self, learn: Learner) -> None:
        if not learn.training:
            return
        run = self.run
        for e in self.windowed:
            now = _inside(e, run.step)
            if now and not self.inside[id(e)]:
                e.open(run)
            elif not now and self.inside[id(e)]:
                e.close(run)
            self.inside[id(e)] = now
            overlay = e.overlay() if now else None
            if overlay is not None:
                overlay.__enter__()
                self.entered.append(overlay)

    def after_batch(self, learn: Learner) -> None:
        while self.entered:
            self.entered.pop().__exit__(None, None, None)
        if learn.loss is not None:
            self.running["train" if learn.training else "test"].add(
                learn.loss, learn.preds, learn.batch[1]
            )
        if learn.training:
            self.run.step += 1


class EpochCommit(Callback):
    """Commits each epoch after every other callback has closed it (their numbers with it)."""

    order = COMMIT_ORDER  # last: the trial's callbacks close the evaluation pass first

    def __init__(self, trial: TrialCallback, callbacks: list):
        self.trial, self.callbacks = trial, callbacks

    def after_epoch(self, learn: Learner) -> None:
        if learn.training:
            return
        t = self.trial
        epoch = t.first + learn.epoch + 1
        results = {}
        for split, running in t.running.items():
            results.update(running.result(split, t.setup.metrics))
        results.update(epoch_numbers(self.callbacks, results))
        commit(t.setup, t.run, epoch, results)


def _inside(e: Intervention, step: int) -> bool:
    return any(s <= step < end for s, end in e.when)


def commit(setup: Setup, run: TrialRun, epoch: int, results: dict) -> None:
    """Registered metrics, then the checkpoint, then everything in one transaction."""
    plan = run.plan
    run.model.eval()
    results.update(measure(setup, plan, epoch, run.model))
    state = {
        "trial": plan.id,
        "model": run.model.state_dict(),
        "opt": run.learn.opt.state_dict() if run.learn and run.learn.opt else None,
        "epoch": epoch,
        "step": run.step,
    }
    saved = setup.store.save_checkpoint(plan.id, epoch, state)
    setup.store.commit_epoch(plan.id, epoch, results, saved)


def measure(
    setup: Setup, plan: TrialPlan, epoch: int, model: torch.nn.Module, only: set | None = None
) -> dict:
    """The registered metrics of ``plan`` at ``epoch``, its control loaded lazily."""
    if not setup.metrics.registered:
        return {}

    def control() -> Trial:
        other = setup.plans[plan.control]
        cmodel = build_model(setup.model, None).to(setup.device)
        state = setup.store.load_checkpoint(plan.control, epoch)
        cmodel.load_state_dict(state["model"])
        return Trial(other.id, other.config, epoch, cmodel.eval(), None)

    trial = Trial(plan.id, plan.config, epoch, model, control)
    if plan.is_control:
        trial._control = trial
    with torch.no_grad():
        return setup.metrics.compute(trial, only)


def make_loader(dataset: Any, batch_size: int, generator: torch.Generator | None = None) -> Any:
    """Batches of ``dataset``, shuffled by ``generator`` when given.

    A ``TensorDataset`` is indexed once per batch (``dataset[indices]``) instead
    of once per sample: the same batches, in the same order, without collating.
    """
    if generator is not None:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    if type(dataset) is TensorDataset:
        return DataLoader(
            dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, False)
        )
    return DataLoader(dataset, batch_size, sampler=sampler)


def evaluate(
    model: torch.nn.Module, loader: Any, loss_fn: Any, metrics: Metrics, device: str
) -> Running:
    running = Running(metrics.accuracy)
    model.eval()
    with torch.no_grad():
        for xb, yb in loader:
            xb, yb = to_device(xb, device), to_device(yb, device)
            preds = model(xb)
            running.add(loss_fn(preds, yb), preds, yb)
    return running


@contextmanager
def isolated(device: str):
    """One thread and a private random state (CPU, and CUDA if used) for a trial."""
    where = torch.device(device)
    cuda = [where.index or 0] if where.type == "cuda" else []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        torch.set_num_threads(threads)


def run_trial(setup: Setup, trial: str, n_epochs: int) -> int:
    """Bring ``trial`` to ``n_epochs`` trained epochs; returns how many it trained now.

    Holds the trial's lease in the store meanwhile: a trial another live process
    is training is waited for, then found done.
    """
    plan = setup.plans[trial]
    store = setup.store
    with store.hold(trial):
        done = store.epochs([trial])[trial]
        try:
            if done >= n_epochs:
                backfill(setup, plan, done)
                return 0
            with isolated(setup.device), ExitStack() as stack:
                for e in plan.effects:
                    overlay = e.overlay() if e.when is None else None
                    if overlay is not None:
                        stack.enter_context(overlay)
                return _train(setup, plan, done, n_epochs)
        except Exception as exc:
            store.fail(trial, traceback.format_exc())
            at = store.epochs([trial])[trial] + 1
            raise TrialError(f"trial {trial} ({plan.label}) failed in epoch {at}: {exc!r}") from exc


def _train(setup: Setup, plan: TrialPlan, done: int, n_epochs: int) -> int:
    s = plan.settings
    # Drawn on the CPU, then moved: the same initial weights on every device.
    model = build_model(setup.model, derive_seed("weights", s["seed_weights"])).to(setup.device)
    run = TrialRun(plan, model)
    opt_state = None
    setup.store.remove_leftovers(plan.id)
    done, state = resume_point(setup.store, plan, done)
    trained = n_epochs - max(done, 0)
    if state is not None:
        model.load_state_dict(state["model"])
        opt_state, run.step = state["opt"], state["step"]
    else:
        for e in plan.effects:
            if e.when is None:
                e.start(run)
        results = {}
        for split, data in (("train", setup.train), ("test", setup.test)):
            loader = make_loader(data, EVAL_BATCH)
            running = evaluate(model, loader, setup.loss_fn, setup.metrics, setup.device)
            results.update(running.result(split, setup.metrics))
        commit(setup, run, 0, results)
        done = 0
    cb = TrialCallback(run, setup, done, opt_state)
    extra = make_callbacks(setup.callbacks)  # fresh for this session: a resumed trial's too
    hyper = hyperparameters_of(s)
    lr = hyper.pop("lr", run.control_hyperparameters.get("lr"))
    optimizer = s["optimizer"]
    dls = DataLoaders(
        make_loader(setup.train, s["batch_size"], cb.generator),
        make_loader(setup.test, EVAL_BATCH),
    )
    run.learn = Learner(
        model,
        dls,
        setup.loss_fn,
        lr=lr,
        opt_func=lambda params, lr: optimizer(params, lr=lr, **hyper),
        cbs=[cb, DeviceCB(setup.device), *extra, EpochCommit(cb, extra)],
    )
    run.learn.fit(n_epochs - done)
    return trained


def resume_point(store: Store, plan: TrialPlan, done: int) -> tuple[int, dict | None]:
    """The last epoch whose checkpoint verifies, and its state (-1, None: start over).

    A damaged checkpoint is reported (a warning naming the file) and the trial
    falls back to the epoch before it, forgetting what came after: retrained
    epochs come out the same, bit for bit, as per-epoch seeding makes them.
    """
    for epoch in range(done, -1, -1):
        try:
            state = store.load_checkpoint(plan.id, epoch)
        except (CheckpointError, FileNotFoundError) as exc:
            then = f"resuming from epoch {epoch - 1}" if epoch else "retraining from scratch"
            warnings.warn(f"{exc}; {then}", RuntimeWarning, stacklevel=2)
            continue
        if epoch < done:
            store.rollback(plan.id, epoch)
        return epoch, state
    if done >= 0:
        store.rollback(plan.id, -1)
    return -1, None


def backfill(setup: Setup, plan: TrialPlan, done: int) -> None:
    """Compute registered metrics a finished trial lacks, from its checkpoints."""
    wanted = {("", n) for n in setup.metrics.registered}
    if not wanted:
        return
    have = setup.store.metric_names(plan.id)
    for epoch in range(done + 1):
        missing = {n for _, n in wanted - have.get(epoch, set())}
        if missing:
            model = build_model(setup.model, None).to(setup.device)
            model.load_state_dict(setup.store.load_checkpoint(plan.id, epoch)["model"])
            results = measure(setup, plan, epoch, model.eval(), only=missing)
            setup.store.commit_epoch(plan.id, epoch, results, None)
