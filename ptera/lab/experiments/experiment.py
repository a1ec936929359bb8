"""An experiment: a grid of variations x (control + interventions) on one model.

``Experiment(model, datasets=(train, test), variations=[...], interventions=[...])``
plans every trial when it is built (and checks it: bad parameters, empty grids,
selectors that name nothing, optimizers that refuse their hyperparameters all
fail here, before any training); ``run(n_epochs)`` trains what the store does not
have yet; ``results()`` is a pandas DataFrame; ``plot()`` writes one PNG per metric.

Decisions:

* ``variations`` is a list of axes (an intervention, a ``make_variations`` family,
  or a list of interventions); the variations are their product. ``interventions``
  is a flat union; each variation runs its control and every intervention.
* Two axes that set the same setting are an error (which one wins is a guess).
* A trial is identified by what it runs (``config.trial_hash``), so grid
  positions that run the same thing share one trial, and a trial finished by an
  earlier experiment in the same store is reused.
* An intervention trial waits for its control, which its metrics may read.
* ``callbacks``: a factory of Learner callbacks, called afresh for each trial
  in the worker that trains it; their ``epoch_metrics()`` are committed with
  each epoch (``trial_callbacks``). The factory is part of every trial's identity.
* ``run`` records the grid's layout and its target epochs in the store, so that
  ``status`` (here or from the command line, without importing anything) counts a
  trial done at the target it was last run to.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import data_fingerprint, model_identity, normalize, trial_hash
from .executors import Job, make_executor
from .interventions import (
    Family,
    Intervention,
    hyperparameters_of,
    optimizer_defaults,
    short,
    windows_text,
)
from .layout import results_frame, status_rows
from .metrics import Metrics
from .plotter import Plotter
from .progress import EpochWatcher
from .store import Store
from .trial import Setup, TrialPlan, backfill, check_resettable
from .trial_callbacks import make_callbacks

__all__ = ["Experiment"]


class Experiment:
    """Trials of ``model`` on ``datasets`` for every variation x (control + interventions).

    ``name``: the key under which ``run`` records the grid and its target epochs in
    the store (default: a hash of the trial ids), read back by ``status``.
    ``callbacks``: a function (or class) returning fresh Learner callbacks for one
    trial; their ``epoch_metrics()`` are committed with each epoch
    (``trial_callbacks``).
    """

    def __init__(
        self,
        model: Any,
        datasets: Sequence | None = None,
        variations: Iterable = (),
        interventions: Iterable = (),
        metrics: Metrics | None = None,
        plotter: Plotter | None = None,
        store: str | os.PathLike = "experiments.db",
        *,
        dataset: Sequence | None = None,
        loss_fn: Any = F.cross_entropy,
        optimizer: Any = torch.optim.SGD,
        lr: float = 0.01,
        hyperparameters: dict | None = None,
        batch_size: int = 64,
        seed_weights: Any = 0,
        seed_shuffle: Any = 0,
        device: str | torch.device | None = None,
        name: str | None = None,
        callbacks: Callable[[], Any] | None = None,
    ):
        if datasets is not None and dataset is not None:
            raise TypeError("give datasets= or dataset=, not both")
        datasets = datasets if datasets is not None else dataset
        if datasets is None or len(datasets) != 2:
            raise TypeError("Experiment needs datasets=(train_set, test_set)")
        self.train_set, self.test_set = datasets
        for split, ds in (("train", self.train_set), ("test", self.test_set)):
            _check_dataset(split, ds)
        if isinstance(model, torch.nn.Module):
            check_resettable(model)
        elif not callable(model):
            raise TypeError(f"model must be an nn.Module, its class or a factory, got {model!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if callbacks is not None:
            if not callable(callbacks):
                raise TypeError(
                    "callbacks must be a function (or class) that returns fresh Learner"
                    f" callbacks for each trial, got {callbacks!r}"
                )
            make_callbacks(callbacks)  # a factory returning no callback fails here
        self.callbacks = callbacks
        self.model, self.loss_fn = model, loss_fn
        self.metrics = metrics if metrics is not None else Metrics()
        if not isinstance(self.metrics, Metrics):
            raise TypeError(f"metrics must be a Metrics (or a subclass), got {metrics!r}")
        self.plotter = plotter
        self.store = Store(store)
        self.base = {
            "optimizer": optimizer,
            "hyper.lr": lr,
            **{f"hyper.{k}": v for k, v in (hyperparameters or {}).items()},
            "batch_size": batch_size,
            "seed_weights": seed_weights,
            "seed_shuffle": seed_shuffle,
        }
        self.device = str(torch.device(device)) if device is not None else "cpu"
        self.identity = {
            # Results on another device differ in the last bits: other trials.
            **({"device": self.device} if self.device != "cpu" else {}),
            "model": model_identity(model),
            "data": [data_fingerprint(self.train_set), data_fingerprint(self.test_set)],
            "loss": normalize(loss_fn),
            # Only when given: trials without callbacks keep the ids they had.
            **({"callbacks": normalize(callbacks)} if callbacks is not None else {}),
        }
        self.grid = self._plan(list(variations), list(interventions))
        self.plans: dict[str, TrialPlan] = {}
        for plan in self.grid:  # positions that run the same thing share one trial
            self.plans.setdefault(plan.id, plan)
        self._check()
        self.trained: list[str] = []
        # The store records the layout and target of each experiment under its key.
        self.key = name or "grid:" + trial_hash([p.id for p in self.grid])

    # -- planning -------------------------------------------------------------------
    def _plan(self, variations: list, interventions: list) -> list[TrialPlan]:
        combos: list[tuple[list[Intervention], dict]] = [([], dict(self.base))]
        owner: dict[str, int] = {}
        for i, axis in enumerate(variations):
            grown = []
            for chosen, settings in combos:
                items = _items(axis, settings, f"variations[{i}]")
                for item in items:
                    for key in item.settings():
                        if owner.setdefault(key, i) != i:
                            raise ValueError(
                                f"variations[{owner[key]}] and variations[{i}] both set"
                                f" {key.removeprefix('hyper.')}: vary it in one of them"
                            )
                    grown.append((chosen + [item], {**settings, **item.settings()}))
            combos = grown
        plans = []
        for chosen, settings in combos:
            effects = sorted((c for c in chosen if c.is_effect()), key=_config_key)
            control = self._trial(settings, effects, chosen, None)
            plans.append(control)
            for j, axis in enumerate(interventions):
                for iv in _items(axis, settings, f"interventions[{j}]"):
                    isettings = {**settings, **iv.settings()}
                    ieffects = effects + ([iv] if iv.is_effect() else [])
                    plan = self._trial(isettings, ieffects, chosen, iv)
                    plan.control = control.id
                    plans.append(plan)
        return plans

    def _trial(
        self, settings: dict, effects: list, chosen: list, iv: Intervention | None
    ) -> TrialPlan:
        config = {
            **self.identity,
            "settings": {k: normalize(v) for k, v in sorted(settings.items())},
            "effects": [e.config() for e in effects],
        }
        tid = trial_hash(config)
        variation: dict[str, Any] = {}
        for item in chosen:
            for k, v in item.columns().items():
                variation[k if k not in variation else f"{type(item).__name__}.{k}"] = v
        condition = {"intervention": type(iv).__name__ if iv else "control"}
        if iv is not None:
            condition.update({f"intervention.{k}": v for k, v in iv.columns().items()})
        return TrialPlan(
            id=tid,
            control=tid,
            config=config,
            settings=settings,
            effects=effects,
            variation=variation,
            condition=condition,
            label=iv.label() if iv else "control",
        )

    def _check(self) -> None:
        if not self.grid:
            raise ValueError("the experiment has no trials")
        seen = set()
        for plan in self.plans.values():
            key = json.dumps(normalize(plan.settings), sort_keys=True)
            if key not in seen:
                seen.add(key)
                optimizer_defaults(
                    plan.settings["optimizer"], hyperparameters_of(plan.settings), None
                )
            for e in plan.effects:
                if id(e) not in seen:
                    seen.add(id(e))
                    e.validate(plan.settings)

    def __len__(self) -> int:
        return len(self.grid)

    @property
    def trials(self) -> list[TrialPlan]:
        """Every grid position, in order: variation by variation, control first."""
        return self.grid

    @property
    def setup(self) -> Setup:
        return Setup(
            self.model,
            self.train_set,
            self.test_set,
            self.loss_fn,
            self.metrics,
            self.store,
            self.plans,
            self.device,
            self.callbacks,
        )

    # -- running ----------------------------------------------------------------------
    def run(
        self,
        n_epochs: int = 1,
        executor: Any = None,
        processes: int | None = None,
        plot: bool = False,
        verbose: bool = True,
        progress: Callable[[str, int, dict], Any] | None = None,
    ) -> Any:
        """Train every trial to ``n_epochs`` (skipping and resuming what the store has).

        ``executor``: ``"serial"`` (default), ``"processes"`` (with ``processes=N``),
        or an executor object such as ``RayExecutor()``. ``verbose`` prints a line
        as each trial ends. ``progress(trial, epoch, numbers)`` is called in this
        process for every epoch a trial commits during the run (``numbers``: its
        ``{(split, name): value}``), whichever executor trained it. Returns
        ``results()``.
        """
        if not isinstance(n_epochs, int) or n_epochs < 0:
            raise ValueError(f"n_epochs must be a non-negative int, got {n_epochs!r}")
        executor = make_executor(executor, processes)
        store = self.store
        store.record_experiment(self.key, self.layout(), n_epochs)
        for plan in self.plans.values():
            store.register(plan.id, plan.config)
        epochs = store.epochs(self.plans)
        todo = [p for p in self.plans.values() if epochs[p.id] < n_epochs]
        pending = {p.id for p in todo}
        jobs = [
            Job(p.id, p.control if p.control in pending and not p.is_control else None)
            for p in todo
        ]
        setup = self.setup
        for plan in self.plans.values():
            if plan.id not in pending:
                backfill(setup, plan, epochs[plan.id])
        done = _Reporter(self, len(jobs), n_epochs) if verbose else None
        if progress is not None and jobs:
            with EpochWatcher(store, [j.id for j in jobs], progress) as watcher:
                # A trial's epochs are reported before the line saying it ended.
                ended = _after_poll(watcher, store, done)
                trained = executor.run(setup, jobs, n_epochs, done=ended)
        else:
            trained = executor.run(setup, jobs, n_epochs, done=done) if jobs else {}
        self.trained = [t for t, n in trained.items() if n > 0]
        if plot:
            self.plot()
        return self.results()

    def status(self, n_epochs: int | None = None) -> list[dict]:
        """One row per trial: id, labels, epochs done, and its state.

        The state is ``done`` (trained to ``n_epochs``; default: the epochs this
        experiment was last run to, else 1), ``partial``, ``pending``, ``failed``
        (an error, see the store), or ``diverged`` (a NaN or infinite metric: the
        trial trains on, its numbers recorded as they are).
        """
        if n_epochs is None:
            recorded = self.store.experiment(self.key)
            n_epochs = recorded[1] if recorded is not None else 1
        return status_rows(self.store, self.layout(), n_epochs)

    def layout(self) -> list[dict]:
        """The grid as plain data (ids, labels, result cells), as ``run`` records it."""
        return [
            {
                "trial": plan.id,
                "variation": _label(plan.variation),
                "condition": plan.label,
                "variation_keys": list(plan.variation),
                "cells": {k: _cell(v) for k, v in {**plan.variation, **plan.condition}.items()},
            }
            for plan in self.grid
        ]

    # -- reading ---------------------------------------------------------------------
    def results(self) -> Any:
        """Every metric of every grid position: a long pandas DataFrame.

        Columns: ``trial``, ``variation``, ``condition``, the variation's parameters,
        ``intervention`` and ``intervention.<parameter>``, ``epoch``, ``split``,
        ``metric``, ``value``.
        """
        return results_frame(self.store, self.layout())

    def plot(self, out_dir: str | os.PathLike | None = None) -> list[Path]:
        """One PNG per metric (``Plotter``); returns the paths written."""
        out = (
            Path(out_dir)
            if out_dir is not None
            else self.store.path.with_name(self.store.path.stem + ".plots")
        )
        return (self.plotter or Plotter()).plot(self.results(), out)


# -- helpers --------------------------------------------------------------------------
class _Reporter:
    """One line per finished trial: count, time, labels, its last test metrics."""

    def __init__(self, exp: Experiment, total: int, n_epochs: int):
        self.exp, self.total, self.n_epochs = exp, total, n_epochs
        self.count, self.start = 0, time.perf_counter()

    def __call__(self, trial: str, trained: int) -> None:
        self.count += 1
        plan = self.exp.plans[trial]
        last = {
            name: value
            for _, epoch, split, name, value in self.exp.store.metrics([trial])
            if epoch == self.n_epochs and split == "test"
        }
        shown = ", ".join(f"{k} {_number(v)}" for k, v in sorted(last.items()))
        width = len(str(self.total))
        where = f" [{_label(plan.variation)}]" if plan.variation else ""
        print(
            f"[{self.count:>{width}}/{self.total}] {time.perf_counter() - self.start:7.1f}s"
            f"  {plan.label}{where}: epoch {self.n_epochs}" + (f", test {shown}" if shown else ""),
            flush=True,
        )


def _after_poll(watcher: EpochWatcher, store: Store, done: Any) -> Any:
    def ended(trial: str, trained: int) -> None:
        watcher.poll(store)
        if done is not None:
            done(trial, trained)

    return ended


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)  # nan, inf as such


def _items(axis: Any, settings: dict, where: str) -> list[Intervention]:
    if isinstance(axis, Intervention):
        return [axis]
    if isinstance(axis, Family):
        return axis.expand(settings)
    if isinstance(axis, (list, tuple)):
        out = []
        for item in axis:
            out += _items(item, settings, where)
        if not out:
            raise ValueError(f"{where} is empty (an empty grid)")
        return out
    raise TypeError(
        f"{where}: expected an intervention or make_variations(...), got {axis!r}"
        f" ({type(axis).__name__})"
    )


def _config_key(e: Intervention) -> str:
    return json.dumps(e.config(), sort_keys=True)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple) and all(isinstance(w, tuple) for w in value):
        return windows_text(value)
    return short(value) if isinstance(value, type) else getattr(value, "__name__", str(value))


def _label(params: dict) -> str:
    return ", ".join(f"{k}={_cell(v)}" for k, v in params.items()) or "base"


def _check_dataset(name: str, ds: Any) -> None:
    try:
        n = len(ds)
    except TypeError:
        raise TypeError(
            f"the {name} set must be a map-style dataset (with len), got {ds!r}"
        ) from None
    if n == 0:
        raise ValueError(f"the {name} set is empty")
    item = ds[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(
            f"the {name} set's items must be (input, target) pairs, got {type(item).__name__}"
        )
