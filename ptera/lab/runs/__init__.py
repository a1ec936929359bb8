"""Config runs, the seed's workflow: ``python -m ptera.lab.runs
train|extract|probe|train-probes|receptive-field --config CONFIG.json --run-id RES``.

A JSON configuration expands to a grid of runs (every list value is an axis, except
``metrics``); the runs are trials of ``ptera.lab.experiments`` (one store, identity,
reuse, resume, executors), and each run's folder ``logs/Model/Dataset_resolution/run-id/``
is written from the store.
"""

from .config import AXES, DEFAULT_CONFIG, Run, expand, load_config
from .engine import Runs, TrainingSaturation
from .probing import probe_latents
from .registry import (
    DATASET_REGISTRY,
    METRICS_REGISTRY,
    MODEL_REGISTRY,
    OPTIMIZER_REGISTRY,
    Registry,
)

__all__ = [
    "AXES",
    "DATASET_REGISTRY",
    "DEFAULT_CONFIG",
    "METRICS_REGISTRY",
    "MODEL_REGISTRY",
    "OPTIMIZER_REGISTRY",
    "Registry",
    "Run",
    "Runs",
    "TrainingSaturation",
    "expand",
    "load_config",
    "probe_latents",
]
