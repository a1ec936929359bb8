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
* Saturation of every ``Linear``/``Conv2d`` layer is a registered metric of the
  experiment: at the end of each epoch (epoch 0: before training), one pass over
  the train set and one over the test set in eval mode (``saturation(...)``).
  The experiments engine offers no Learner callbacks for its trials, so the
  training-time ``Saturation`` callback cannot run inside a trial; its numbers
  describe the moving weights of the training pass, these the epoch's weights.
* The store's metric names carry the saturation options
  (``sat[channelwise,0.99,textbook]:train:layer:k``), so configurations with
  other options share the trained trials and add their own numbers (backfilled
  from the per-epoch checkpoints).
* The view is rewritten after every call; the ``lsat_epochN.png`` already there
  are kept. ``extract`` and ``probe`` train what is not trained yet, then do
  their step; extraction is skipped when the latent folder already holds both
  splits of the same checkpoint.
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
from ..representations.probes import PROBE_FILE, train_probes
from ..representations.receptive import receptive_field, spatial_layers
from ..representations.saturation import plot_saturation, saturation
from .config import Run, expand, load_config
from .registry import DATASET_REGISTRY, METRICS_REGISTRY, MODEL_REGISTRY, OPTIMIZER_REGISTRY

__all__ = ["Runs"]

FIELDS = ("k", "saturation", "trace", "dim")
STORE = "runs.db"


class SaturationMetric:
    """Saturation numbers of a trial's model, one pass per split per epoch (cached)."""

    def __init__(self, train: Any, test: Any, conv_method: str, delta: float, rule: str):
        self.data = {"train": train, "eval": test}
        self.options = {"conv_method": conv_method, "delta": delta, "rule": rule}
        self._key: tuple | None = None
        self._values: dict = {}

    @property
    def prefix(self) -> str:
        o = self.options
        return f"sat[{o['conv_method']},{o['delta']:g},{o['rule']}]"

    def value(self, trial: Any, split: str, layer: str, what: str) -> float:
        key = (trial.id, trial.epoch)
        if key != self._key:  # one pass per split for every number of this epoch
            self._values = {}
            for name, data in self.data.items():
                frame = saturation(trial.model, data, split=name, **self.options)
                for row in frame.itertuples():
                    for f in FIELDS:
                        self._values[(name, row.layer, f)] = float(getattr(row, f))
            self._key = key
        return self._values[(split, layer, what)]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_key": None, "_values": {}}


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

    def __init__(self, config: dict | str | os.PathLike, run_id: str, device: str | None = None):
        if not isinstance(run_id, str) or not run_id or "/" in run_id:
            raise ValueError(f"run_id must be a non-empty name without '/', got {run_id!r}")
        self.config = load_config(config)
        if device is not None:
            self.config["device"] = device
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
        sat = SaturationMetric(train, test, first.conv_method, first.delta, first.rule)
        for split in ("train", "eval"):
            for layer in layers:
                for f in FIELDS:
                    metrics.register_metric(
                        f"{sat.prefix}:{split}:{layer}:{f}",
                        partial(sat.value, split=split, layer=layer, what=f),
                    )
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
            group.experiment.run(epochs, executor=executor, processes=processes, verbose=verbose)
            self._write_views(group)

    def extract(
        self,
        downsampling: int | str | None = None,
        executor: Any = None,
        processes: int | None = None,
        verbose: bool = True,
    ) -> list[Path]:
        """Train what is missing, then write each run's latents; returns their folders."""
        self.train(executor, processes, verbose)
        folders = []
        for group in self.groups:
            for run in group.runs:
                folders.append(self._extract(group, run, downsampling, verbose))
        return folders

    def probe(
        self,
        downsampling: int | str | None = None,
        executor: Any = None,
        processes: int | None = None,
        verbose: bool = True,
    ) -> list[Any]:
        """Train and extract what is missing, then fit the probes of every run."""
        self.train(executor, processes, verbose)
        frames = []
        for group in self.groups:
            for run in group.runs:
                latents = self._extract(group, run, downsampling, verbose)
                out = run.folder(self.run_id) / f"{run.name}_{PROBE_FILE}"
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

    def _extract(
        self, group: Group, run: Run, downsampling: int | str | None, verbose: bool
    ) -> Path:
        d = run.downsampling if downsampling is None else downsampling
        folder = Path(run.latents_dir) / f"{run.name}_{self.run_id}_d{d}"
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
    wide[ints] = wide[ints].round().astype(int)
    first = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    table = table[[c for c in first if c in table] + [c for c in table if c not in first]]
    return table.merge(wide.reset_index(), on="epoch", how="left"), history


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
