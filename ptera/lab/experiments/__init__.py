"""Experiments: grids of variations x (control + interventions) as overlays on one model.

``Experiment(model, datasets=(train, test), variations=[...], interventions=[...])``
plans and checks every trial; ``run(n_epochs)`` trains what its SQLite store lacks
(skipping finished trials, resuming partial ones); ``results()`` is a DataFrame.
``callbacks=factory`` gives each trial's Learner fresh callbacks whose
``epoch_metrics()`` are committed with every epoch.
``python -m ptera.lab.experiments run config.toml`` does the same from a file.
"""

from .batched import BatchedExecutor
from .executors import ProcessExecutor, RayExecutor, SerialExecutor
from .experiment import Experiment
from .imports import import_object
from .interventions import (
    ChangeOptimizer,
    ChangeTrainLoader,
    Family,
    Intervention,
    PerturbWeights,
    ReinitWeights,
    Tweak,
)
from .metrics import Metrics, Trial
from .plotter import Plotter
from .store import Store
from .trial import TrialError

__all__ = [
    "BatchedExecutor",
    "ChangeOptimizer",
    "ChangeTrainLoader",
    "Experiment",
    "Family",
    "Intervention",
    "Metrics",
    "PerturbWeights",
    "Plotter",
    "ProcessExecutor",
    "RayExecutor",
    "ReinitWeights",
    "SerialExecutor",
    "Store",
    "Trial",
    "TrialError",
    "Tweak",
    "import_object",
]
