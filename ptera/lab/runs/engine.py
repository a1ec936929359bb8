"""Config runs on the one trial engine: a configuration becomes ``Experiment`` trials.

``Runs(config, run_id)`` expands the configuration and groups its runs by what an
``Experiment`` holds fixed (model, dataset, resolution, epochs, saturation
options); inside a group the optimizers and batch sizes are the experiment's
variations (``ChangeOptimizer``, ``ChangeTrainLoader``). Training, identity,
reuse, resume and executors are the experiment store's; the seed's folder tree
(``logs/Model/Dataset_resolution/run-id/``) is a view written from the store.

Decisions:

* The run id seeds the weights and the batch order, so it is part of every
  trial's identity: runs under different ids never share a trial, the same id
  resumes and reuses.
* Saturation of every ``Linear``/``Conv2d`` layer is tracked during training,
  as the seed's delve tracker: each trial's Learner runs a ``TrainingSaturation``
  callback (the experiment's ``callbacks=`` factory), and its numbers of each
  epoch (``train``: the whole training pass, weights moving; ``eval``: the
  evaluation pass) are committed with the epoch, so a resumed run keeps them and
  never recomputes them. Epoch 0 (before training) has no training pass, so no
  saturation: its row in the CSV has empty saturation cells and no
  ``lsat_epoch0.png``.
* The saturation options are part of the trial's identity (a run with another
  ``delta`` trains its own trial) and of the store's metric names
  (``sat[channelwise,0.99,textbook]:train:layer:k``).
* The view is rewritten after every call; the ``lsat_epochN.png`` already there
  are kept. ``extract`` and ``probe`` train what is not trained yet, then do
  their step; extraction is skipped when the latent folder already holds both
  splits of the same checkpoint.
* Each resolution (``downsampling``) has its own latent folder
  (``Run.latents_folder``) and its own probe results (``Run.probe_file``, the
  resolution in the name), so several resolutions of one run never overwrite
  each other.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..experiments import ChangeOptimizer, ChangeTrainLoader, Experiment, Metrics
from ..representations.flops import computational_info
from ..representations.latents import extract_latents, load_manifest
from ..representations.layers import default_layers
from ..representations.probes import train_probes
from ..representations.receptive import receptive_field, spatial_layers
from ..representations.saturation import Saturation, plot_saturation
from .config import Run, expand, load_config
from .registry import DATASET_REGISTRY, METRICS_REGISTRY, MODEL_REGISTRY, OPTIMIZER_REGISTRY

__all__ = ["Runs", "TrainingSaturation"]

FIELDS = ("k", "saturation", "trace", "dim")
STORE = "runs.db"


class TrainingSaturation(Saturation):
    """``Saturation`` that commits its numbers with each epoch of a trial.

    ``epoch_metrics()`` (read by the trial after the epoch's evaluation pass)
    returns the rows of the passes since the last call, each field of each
    layer as ``{prefix}:{split}:{layer}:{field}``: ``train`` over the epoch's
    training pass (the weights moving), ``eval`` over its evaluation pass.
    """

    def __init__(
        self,
        delta: float = 0.99,
        layers: Any = None,
        conv_method: str = "channelwise",
        rule: str = "textbook",
    ):
        super().__init__(delta=delta, layers=layers, conv_method=conv_method, rule=rule)
        self.prefix = saturation_prefix(conv_method, delta, rule)
        self._read = 0

    def before_fit(self, learn: Any) -> None:
        super().before_fit(learn)
        self._read = 0  # the history restarts at each fit

    def epoch_metrics(self) -> dict[str, float]:
        history = self.history
        rows, self._read = history.iloc[self._read :], len(history)
        return {
            f"{self.prefix}:{row.split}:{row.layer}:{f}": float(getattr(row, f))
            for row in rows.itertuples()
            for f in FIELDS
        }


def saturation_prefix(conv_method: str, delta: float, rule: str) -> str:
    """The start of the store's saturation metric names: the options that made them."""
    return f"sat[{conv_method},{delta:g},{rule}]"


class HeldOutMetric:
    """A registry metric ``fn(model, test_set)`` as an experiment metric."""

    def __init__(self, fn: Callable, test: Any):
        self.fn, self.test = fn, test

    def __call__(self, trial: Any) -> float:
        return self.fn(trial.model, self.test)


@dataclass
class Group:
    """Runs sharing one Experiment, and the trial of each run."""

    runs: list[Run]
    experiment: Experiment
    model: torch.nn.Module
    input_shape: tuple
    train: Any
    test: Any
    layers: list[str]
    trials: dict[Run, Any] = field(default_factory=dict)


def _n_classes(ds: Any) -> int:
    tensors = getattr(ds, "tensors", None)
    labels = tensors[1] if tensors is not None else torch.as_tensor([y for _, y in ds])
    return int(labels.max()) + 1


class Runs:
    """The runs of a configuration under ``run_id``: ``train``, ``extract``, ``probe``,
    ``receptive_field``. ``device`` overrides the configuration's."""

    def __init__(
        self,
        config: dict | str | os.PathLike,
        run_id: str,
        device: str | None = None,
        latents_dir: str | os.PathLike | None = None,
    ):
        if not isinstance(run_id, str) or not run_id or "/" in run_id:
            raise ValueError(f"run_id must be a non-empty name without '/', got {run_id!r}")
        self.config = load_config(config)
        if device is not None:
            self.config["device"] = device
        if latents_dir is not None:
            self.config["latents_dir"] = os.fspath(latents_dir)
        self.run_id = run_id
        self.runs = expand(self.config)
        self.store = Path(self.config["logs_dir"]) / STORE
        self._groups: list[Group] | None = None
        self._data: dict = {}

    def __len__(self) -> int:
        return len(self.runs)

    # -- planning -----------------------------------------------------------------------
    def plan(self) -> list[Group]:
        """Build (and so check) every experiment of the configuration; nothing trains."""
        if self._groups is None:
            self._groups = [self._group(runs) for runs in self._grouped().values()]
        return self._groups

    @property
    def groups(self) -> list[Group]:
        """The runs grouped by experiment, each with its trials."""
        return self.plan()

    def _grouped(self) -> dict[tuple, list[Run]]:
        out: dict[tuple, list[Run]] = {}
        for run in self.runs:
            key = (
                run.model,
                run.dataset,
                run.resolution,
                run.epoch,
                run.conv_method,
                run.delta,
                run.rule,
            )
            out.setdefault(key, []).append(run)
        return out

    def _datasets(self, name: str, resolution: int) -> tuple[Any, Any]:
        if (name, resolution) not in self._data:
            factory = DATASET_REGISTRY.lookup(name, "dataset")
            self._data[(name, resolution)] = factory(resolution)
        return self._data[(name, resolution)]

    def build_model(self, run: Run, train: Any, **extra: Any) -> torch.nn.Module:
        """A fresh model of ``run`` for data like ``train``."""
        factory = MODEL_REGISTRY.lookup(run.model, "model")
        x = train[0][0]
        return factory(
            image_size=run.resolution, in_channels=x.shape[0], n_classes=_n_classes(train), **extra
        )

    def _group(self, runs: list[Run]) -> Group:
        first = runs[0]
        train, test = self._datasets(first.dataset, first.resolution)
        model = self.build_model(first, train)
        layers = default_layers(model)
        metrics = Metrics()
        for name in first.metrics:
            fn = METRICS_REGISTRY.lookup(name, "metrics")
            if fn is not None:
                metrics.register_metric(name, HeldOutMetric(fn, test))
        optimizers = list(dict.fromkeys(r.optimizer for r in runs))
        sizes = list(dict.fromkeys(r.batch_size for r in runs))
        choices = []
        for name in optimizers:
            cls, hyper = OPTIMIZER_REGISTRY.lookup(name, "optimizer")()
            choices.append(ChangeOptimizer(optimizer=cls, **hyper))
        experiment = Experiment(
            model,
            datasets=(train, test),
            variations=[choices, [ChangeTrainLoader(batch_size=b) for b in sizes]],
            metrics=metrics,
            store=self.store,
            seed_weights=self.run_id,
            seed_shuffle=self.run_id,
            device=self.config["device"],
            callbacks=partial(
                TrainingSaturation,
                delta=first.delta,
                conv_method=first.conv_method,
                rule=first.rule,
            ),
        )
        group = Group(runs, experiment, model, tuple(train[0][0].shape), train, test, layers)
        # Experiment.trials lists the variations' product in order: optimizer, then size.
        positions = [(o, b) for o in optimizers for b in sizes]
        by_position = dict(zip(positions, experiment.trials))
        for run in runs:
            group.trials[run] = by_position[(run.optimizer, run.batch_size)]
        return group

    # -- the commands ---------------------------------------------------------------------
    def train(
        self, executor: Any = None, processes: int | None = None, verbose: bool = True
    ) -> None:
        """Train every run (resuming, skipping finished ones) and write the folder tree."""
        for group in self.groups:
            epochs = group.runs[0].epoch
            if verbose:
                for row in group.experiment.status(epochs):
                    if row["state"] in ("partial", "failed"):
                        print(
                            f"resuming {row['variation']} after epoch {row['epochs']}", flush=True
                        )
            progress = partial(_print_epoch, group, epochs) if verbose else None
            group.experiment.run(  # a line per epoch (progress), not per trial
                epochs, executor=executor, processes=processes, verbose=False, progress=progress
            )
            self._write_views(group)

    def extract(
        self,
        downsampling: Any = None,
        executor: Any = None,
        processes: int | None = None,
        verbose: bool = True,
    ) -> list[Path]:
        """Train what is missing, then write each run's latents; returns their folders.

        ``downsampling`` is one resolution (``4``, ``"pixelwise"``, ``None``: the
        configuration's) or a list of them, each extracted to its own folder (in a
        list, ``None`` is no pooling).
        """
        resolutions = _resolutions(downsampling)
        self.train(executor, processes, verbose)
        folders = []
        for group in self.groups:
            for run in group.runs:
                for d in resolutions:
                    folders.append(self._extract(group, run, d, verbose))
        return folders

    def probe(
        self,
        downsampling: Any = None,
        executor: Any = None,
        processes: int | None = None,
        verbose: bool = True,
        prefix: str | None = None,
    ) -> list[Any]:
        """Train and extract what is missing, then fit the probes of every run, at each
        resolution of ``downsampling`` (as in ``extract``): each resolution's results
        go to ``Run.probe_file`` (``[prefix_]<run>_d<D>_probe_performance.csv``)."""
        resolutions = _resolutions(downsampling)
        _check_prefix(prefix)
        self.train(executor, processes, verbose)
        frames = []
        for group in self.groups:
            for run in group.runs:
                for asked in resolutions:
                    latents = self._extract(group, run, asked, verbose)
                    d = run.downsampling if asked is _CONFIGURED else asked
                    out = run.probe_file(self.run_id, d, prefix)
                    frame = train_probes(latents, n_jobs=processes, out=out)
                    if verbose:
                        print(f"{run.name}: probes written to {out}", flush=True)
                    frames.append(frame)
        return frames

    def receptive_field(self, verbose: bool = True) -> list[Any]:
        """Each run's receptive fields (``noskip=True`` where the model takes it); a
        model without a Conv2d or pooling layer (an MLP) is skipped, saying so."""
        frames = []
        for run in self.runs:
            train, _ = self._datasets(run.dataset, run.resolution)
            factory = MODEL_REGISTRY.lookup(run.model, "model")
            extra = {"noskip": True} if _accepts(factory, "noskip") else {}
            model = self.build_model(run, train, **extra)
            if not spatial_layers(model):
                if verbose:
                    print(f"{run.name}: no Conv2d or pooling layer, no receptive field", flush=True)
                continue
            frame = receptive_field(model, tuple(train[0][0].shape))
            folder = run.folder(self.run_id)
            folder.mkdir(parents=True, exist_ok=True)
            frame.to_csv(folder / "receptive_field.csv", index=False)
            if verbose:
                print(f"{run.name}: receptive fields written to {folder}", flush=True)
            frames.append(frame)
        return frames

    # -- the view -------------------------------------------------------------------------
    def last_epoch(self, group: Group, run: Run) -> int:
        """The run's last committed epoch, at most its own ``epoch`` (a longer run of
        the same trial may have gone further)."""
        trial = group.trials[run].id
        return min(group.experiment.store.epochs([trial])[trial], run.epoch)

    def trained_model(self, group: Group, run: Run) -> torch.nn.Module:
        """The run's model with the weights of its last committed epoch."""
        plan = group.trials[run]
        epoch = self.last_epoch(group, run)
        if epoch < run.epoch:
            raise RuntimeError(f"run {run.name} is trained to epoch {epoch} of {run.epoch}")
        model = self.build_model(run, group.train)
        model.load_state_dict(group.experiment.store.load_checkpoint(plan.id, epoch)["model"])
        return model.eval()

    def _write_views(self, group: Group) -> None:
        results = group.experiment.results()
        info = computational_info(group.model, group.input_shape)
        for run in group.runs:
            plan = group.trials[run]
            folder = run.folder(self.run_id)
            folder.mkdir(parents=True, exist_ok=True)
            _write_text(folder / f"{run.name}_config.json", json.dumps(run.config(), indent=4))
            _write_text(folder / "computational_info.json", json.dumps(info, indent=4))
            frame = results[(results.trial == plan.id) & (results.epoch <= run.epoch)]
            table, history = _tables(frame, group.layers)
            if len(table):
                table.to_csv(folder / f"{run.name}.csv", index=False)
            have = {e for e in history.epoch.unique() if _png(folder, run, e).exists()}
            missing = history[~history.epoch.isin(have)]
            if len(missing):
                plot_saturation(missing, folder, prefix=run.name)
            epoch = self.last_epoch(group, run)
            if epoch >= 0:
                source = group.experiment.store.checkpoint_path(plan.id, epoch)
                tmp = folder / f".{run.name}.pt.partial"
                shutil.copyfile(source, tmp)
                os.replace(tmp, folder / f"{run.name}.pt")

    def _extract(self, group: Group, run: Run, downsampling: Any, verbose: bool) -> Path:
        d = run.downsampling if downsampling is _CONFIGURED else downsampling
        folder = run.latents_folder(self.run_id, d)
        checkpoint = str(run.folder(self.run_id) / f"{run.name}.pt")
        trial = f"{group.trials[run].id}@{self.last_epoch(group, run)}"
        manifest = load_manifest(folder)
        splits = manifest.get("splits", {})
        if manifest.get("trial") == trial and all(
            s in splits and splits[s].get("downsampling") == d for s in ("train", "eval")
        ):
            return folder
        model = self.trained_model(group, run)
        for split, data in (("train", group.train), ("eval", group.test)):
            extract_latents(
                model, data, folder, downsampling=d, split=split,
                checkpoint=checkpoint, config=run.config(),
            )  # fmt: skip
        manifest = load_manifest(folder)
        manifest["trial"] = trial
        _write_text(folder / "manifest.json", json.dumps(manifest, indent=1))
        if verbose:
            print(f"{run.name}: latents written to {folder}", flush=True)
        return folder


_CONFIGURED = object()  # the configuration's downsampling (None there means "no pooling")


def _resolutions(downsampling: Any) -> list:
    """The resolutions asked for, in order, once each; ``None`` is the configuration's."""
    if downsampling is None:
        return [_CONFIGURED]
    if isinstance(downsampling, (list, tuple)):
        if not downsampling:
            raise ValueError("downsampling: an empty list asks for no resolution")
        asked = list(dict.fromkeys(downsampling))
    else:
        asked = [downsampling]
    for d in asked:
        if not (
            d is None
            or d == "pixelwise"
            or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
        ):
            raise ValueError(f"downsampling: a positive int, 'pixelwise' or None, got {d!r}")
    return asked


def _check_prefix(prefix: str | None) -> None:
    if prefix is not None and (not isinstance(prefix, str) or "/" in prefix or os.sep in prefix):
        raise ValueError(f"prefix must be a file-name part without '/', got {prefix!r}")


def _tables(frame: Any, layers: list[str]) -> tuple[Any, Any]:
    """``(one row per epoch: metrics and saturation, saturation history)``."""
    import pandas as pd

    if not len(frame):
        return pd.DataFrame(), pd.DataFrame(columns=["epoch", "split", "layer", *FIELDS])
    metric = frame["metric"]
    is_sat = metric.str.startswith("sat[")
    plain = frame[~is_sat]
    columns = plain["split"].where(plain["split"] == "", plain["split"] + "_") + plain["metric"]
    table = (
        plain.assign(column=columns)
        .pivot_table(index="epoch", columns="column", values="value", sort=False)
        .reset_index()
    )
    sat = frame[is_sat]
    if not len(sat):  # trained to epoch 0 only: nothing tracked yet
        return table, pd.DataFrame(columns=["epoch", "split", "layer", *FIELDS])
    parts = sat["metric"].str.split(":", expand=True)
    history = (
        pd.DataFrame(
            {
                "epoch": sat["epoch"],
                "split": parts[1],
                "layer": parts[2],
                "field": parts[3],
                "value": sat["value"],
            }
        )
        .pivot_table(index=["epoch", "split", "layer"], columns="field", values="value", sort=False)
        .reset_index()
    )
    order = {name: i for i, name in enumerate(layers)}
    history = history.sort_values(
        ["epoch", "split", "layer"], key=lambda c: c.map(order) if c.name == "layer" else c,
        kind="stable",
    )  # fmt: skip
    history[["k", "dim"]] = history[["k", "dim"]].astype(int)
    history = history[["epoch", "split", "layer", *FIELDS]]
    wide = history.pivot_table(
        index="epoch", columns=["layer", "split"], values=["k", "saturation", "trace"], sort=False
    )
    wide.columns = [f"{layer}-{split}-{what}" for what, layer, split in wide.columns]
    wide = wide[sorted(wide.columns, key=lambda c: (order.get(c.split("-")[0], 0), c))]
    ints = [c for c in wide.columns if c.endswith("-k")]
    first = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    table = table[[c for c in first if c in table] + [c for c in table if c not in first]]
    table = table.merge(wide.reset_index(), on="epoch", how="left")
    # Epoch 0 has no saturation (no training pass yet): its k cells stay empty.
    table[ints] = table[ints].round().astype("Int64")
    return table, history


def _print_epoch(group: Group, n_epochs: int, trial: str, epoch: int, numbers: dict) -> None:
    """One line per committed epoch (``Experiment.run``'s progress hook)."""
    names = [run.name for run, plan in group.trials.items() if plan.id == trial]
    shown = ", ".join(
        f"{split}_{name} {numbers[(split, name)]:.4f}"
        for split in ("train", "test")
        for name in ("loss", "accuracy")
        if (split, name) in numbers
    )
    print(f"{' '.join(names) or trial}: epoch {epoch}/{n_epochs}  {shown}", flush=True)


def _png(folder: Path, run: Run, epoch: int) -> Path:
    return folder / f"{run.name}lsat_epoch{epoch}.png"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _accepts(factory: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
