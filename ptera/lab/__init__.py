"""The lab: training loops and experiments whose every value is addressable by a selector."""

from .callbacks import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CheckpointCB,
    DeviceCB,
    MetricsCB,
    ProgressCB,
    load_checkpoint,
)
from .learner import DataLoaders, Learner
from .lrfind import LRFinder
from .representations import Saturation
from .stats import ActivationStats
from .workbench import NeuronStats, SampleTable, SurgeryError, Workbench

__all__ = [
    "ActivationStats",
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CheckpointCB",
    "DataLoaders",
    "DeviceCB",
    "LRFinder",
    "Learner",
    "MetricsCB",
    "NeuronStats",
    "ProgressCB",
    "SampleTable",
    "Saturation",
    "SurgeryError",
    "Workbench",
    "load_checkpoint",
]
