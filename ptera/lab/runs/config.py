"""Run configurations in the seed's JSON format, checked and expanded to runs.

Every list value is an axis of the grid except ``metrics`` (all used in every
run); a single value stands for a one-value axis; missing keys take
``DEFAULT_CONFIG``'s values.

Decisions:

* Everything is checked before any training: an unknown key, an unknown name in
  a registry, a ``delta`` outside (0, 1], a bad size... fail with the key named.
* ``logs_dir``, ``latents_dir``, ``device``, ``downsampling`` and ``data_parallel``
  are settings of the whole configuration, not axes (a list there is an error).
* ``data_parallel`` is accepted for the seed's files but only ``false`` runs.
* Names in ``model``, ``dataset``, ``optimizer`` and ``metrics`` are replaced by
  their registry entry's own name (``"Top5Accuracy"`` becomes ``top5_accuracy``,
  see ``Registry.canonical``), so two spellings of a name are one run.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..representations.probes import PROBE_FILE
from ..representations.saturation import check_options
from .registry import DATASET_REGISTRY, METRICS_REGISTRY, MODEL_REGISTRY, OPTIMIZER_REGISTRY

__all__ = ["AXES", "DEFAULT_CONFIG", "Run", "expand", "load_config"]

DEFAULT_CONFIG: dict[str, Any] = {
    "model": ["lenet5"],
    "epoch": [5],
    "batch_size": [64],
    "dataset": ["digits"],
    "resolution": [8],
    "optimizer": ["sgd"],
    "metrics": ["accuracy"],
    "logs_dir": "./logs/",
    "latents_dir": "./latent_datasets/",
    "device": "cpu",
    "conv_method": ["channelwise"],
    "delta": [0.99],
    "rule": ["textbook"],
    "data_parallel": False,
    "downsampling": 4,
}

AXES = (
    "model",
    "epoch",
    "batch_size",
    "dataset",
    "resolution",
    "optimizer",
    "conv_method",
    "delta",
    "rule",
)
SETTINGS = ("logs_dir", "latents_dir", "device", "data_parallel", "downsampling")


@dataclass(frozen=True)
class Run:
    """One combination of the grid, with the configuration's settings."""

    model: str
    epoch: int
    batch_size: int
    dataset: str
    resolution: int
    optimizer: str
    conv_method: str
    delta: float
    rule: str
    metrics: tuple[str, ...]
    logs_dir: str
    latents_dir: str
    device: str
    downsampling: Any

    @property
    def name(self) -> str:
        """The seed's file stem: ``Model-Dataset-rRES-bsB-eE``, plus what else varies."""
        stem = f"{_safe(self.model)}-{_safe(self.dataset)}-r{self.resolution}-bs{self.batch_size}-e{self.epoch}"
        stem += f"-{_safe(self.optimizer)}"
        if (self.conv_method, self.delta, self.rule) != ("channelwise", 0.99, "textbook"):
            stem += f"-{self.conv_method}-d{self.delta:g}-{self.rule}"
        return stem

    def folder(self, run_id: str) -> Path:
        """``logs_dir/Model/Dataset_resolution/run_id``."""
        return (
            Path(self.logs_dir)
            / _safe(self.model)
            / f"{_safe(self.dataset)}_{self.resolution}"
            / run_id
        )

    def latents_folder(self, run_id: str, downsampling: Any) -> Path:
        """``latents_dir/<name>_<run_id>_d<downsampling>``: one folder per resolution."""
        return Path(self.latents_dir) / f"{self.name}_{run_id}_d{downsampling}"

    def probe_file(self, run_id: str, downsampling: Any, prefix: str | None = None) -> Path:
        """``[<prefix>_]<name>_d<downsampling>_probe_performance.csv`` in the run's folder."""
        name = f"{self.name}_d{downsampling}_{PROBE_FILE}"
        return self.folder(run_id) / (f"{prefix}_{name}" if prefix else name)

    def config(self) -> dict:
        """This run alone, as a configuration (every axis a one-value list)."""
        out = {k: [getattr(self, k)] for k in AXES}
        out["metrics"] = list(self.metrics)
        out.update({k: getattr(self, k) for k in SETTINGS if k != "data_parallel"})
        out["data_parallel"] = False
        return out


def _safe(name: str) -> str:
    return name.rsplit(":", 1)[-1].replace("/", "_")


def load_config(source: str | os.PathLike | dict) -> dict:
    """The configuration (a JSON file or a dict) with defaults filled in, checked."""
    if isinstance(source, dict):
        given = copy.deepcopy(source)
    else:
        path = Path(source)
        try:
            given = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no configuration file {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ValueError(f"a configuration is a JSON object, got {type(given).__name__}")
    unknown = [k for k in given if k not in DEFAULT_CONFIG]
    if unknown:
        raise ValueError(
            f"unknown config key {unknown[0]!r} (known keys: {', '.join(DEFAULT_CONFIG)})"
        )
    config = {**copy.deepcopy(DEFAULT_CONFIG), **given}
    for key in AXES:
        if not isinstance(config[key], list):
            config[key] = [config[key]]
        if not config[key]:
            raise ValueError(f"config key {key!r} is an empty list: the grid would be empty")
    if isinstance(config["metrics"], str):
        raise ValueError(f"config key 'metrics' must be a list of names, got {config['metrics']!r}")
    for key in SETTINGS:
        if isinstance(config[key], list):
            raise ValueError(f"config key {key!r} is a setting of the whole config, not a list")
    _check(config)
    return config


def _check(config: dict) -> None:
    registries = (
        ("model", MODEL_REGISTRY),
        ("dataset", DATASET_REGISTRY),
        ("optimizer", OPTIMIZER_REGISTRY),
        ("metrics", METRICS_REGISTRY),
    )
    for key, registry in registries:
        for name in config[key]:
            registry.lookup(name, key)
        # The registry's own names from here on: "MCC" and "mcc" are one run, one column.
        config[key] = list(dict.fromkeys(registry.canonical(n, key) for n in config[key]))
    for key in ("epoch", "batch_size", "resolution"):
        for v in config[key]:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"config key {key!r}: {v!r} is not a positive integer")
    defaults = {"delta": 0.99, "conv_method": "channelwise", "rule": "textbook"}
    for key in defaults:
        for v in config[key]:
            try:
                check_options(**{**defaults, key: v})
            except ValueError as exc:
                raise ValueError(f"config key {key!r}: {exc}") from None
    d = config["downsampling"]
    if not (
        d is None or d == "pixelwise" or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
    ):
        raise ValueError(
            f"config key 'downsampling': a positive int, 'pixelwise' or null, got {d!r}"
        )
    if config["data_parallel"]:
        raise ValueError("config key 'data_parallel': only false is supported (one device per run)")
    for key in ("logs_dir", "latents_dir", "device"):
        if not isinstance(config[key], str):
            raise ValueError(f"config key {key!r} must be a string, got {config[key]!r}")


def expand(config: dict | str | os.PathLike) -> list[Run]:
    """Every run of the grid, in the order of the axes."""
    if not isinstance(config, dict) or set(config) != set(DEFAULT_CONFIG):
        config = load_config(config)
    runs = []
    for values in itertools.product(*(config[k] for k in AXES)):
        combo = dict(zip(AXES, values))
        runs.append(
            Run(
                **combo,
                metrics=tuple(config["metrics"]),
                **{k: config[k] for k in SETTINGS if k != "data_parallel"},
            )
        )
    return runs
