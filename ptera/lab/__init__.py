"""The lab: training loops and experiments whose every value is addressable by a selector."""

from .callbacks import (
    STAGES,
    Callback,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
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
from .training import GradClip, MixedPrecision, OneCycle
from .workbench import NeuronStats, SampleTable, SurgeryError, Workbench

__all__ = [
    "STAGES",
    "ActivationStats",
    "Callback",
    "CancelBackwardException",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CancelStepException",
    "CheckpointCB",
    "DataLoaders",
    "DeviceCB",
    "GradClip",
    "LRFinder",
    "Learner",
    "MetricsCB",
    "MixedPrecision",
    "NeuronStats",
    "OneCycle",
    "ProgressCB",
    "SampleTable",
    "Saturation",
    "SurgeryError",
    "Workbench",
    "load_checkpoint",
]
