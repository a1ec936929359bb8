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
from .stats import ActivationStats
from .training import GradClip, MixedPrecision, OneCycle

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
    "OneCycle",
    "ProgressCB",
    "load_checkpoint",
]
