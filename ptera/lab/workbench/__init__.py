"""The workbench: neuron statistics, surgery, per-neuron rates and sample tables on any model."""

from .layers import Layer, operable_layers
from .neurons import NeuronStats
from .rates import NeuronRates
from .routes import SurgeryError
from .samples import SampleTable
from .workbench import BenchLayer, Workbench

__all__ = [
    "BenchLayer",
    "Layer",
    "NeuronRates",
    "NeuronStats",
    "SampleTable",
    "SurgeryError",
    "Workbench",
    "operable_layers",
]
