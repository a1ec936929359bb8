"""Operable layers: the ``Linear`` and ``Conv2d`` leaves of a model, by index or by name.

Decisions:

* The list is taken in module order (``named_modules``), so index 0 is the first
  operable layer a reader sees in ``print(model)``; a name (``"features.0"``) is
  the module's qualified name.
* A name that exists but is not ``Linear``/``Conv2d`` is an "unsupported layer
  type" error, not "not found": the user pointed at a real module.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["OPERABLE", "Layer", "operable_layers", "resolve_layer"]

OPERABLE = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class Layer:
    """One operable layer: its position, qualified name and module."""

    index: int
    name: str
    module: nn.Module

    @property
    def size(self) -> int:
        """Number of neurons (output features or channels)."""
        return neuron_count(self.module)

    def __repr__(self) -> str:
        return f"Layer({self.index}, {self.name!r}, {describe(self.module)})"


def neuron_count(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def input_count(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def describe(module: nn.Module) -> str:
    return f"{type(module).__name__}({input_count(module)}->{neuron_count(module)})"


def operable_layers(model: nn.Module) -> list[Layer]:
    """The model's ``Linear`` and ``Conv2d`` leaves, in module order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, OPERABLE)]
    return [Layer(i, name, module) for i, (name, module) in enumerate(found)]


def resolve_layer(model: nn.Module, key: int | str) -> Layer:
    """The operable layer at index ``key`` or named ``key``; a clear error otherwise."""
    layers = operable_layers(model)
    listing = ", ".join(
        f"{layer.index}: {layer.name!r} {describe(layer.module)}" for layer in layers
    )
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"a layer is an index or a module name, not {key!r}")
    if isinstance(key, int):
        if not 0 <= key < len(layers):
            raise IndexError(
                f"layer index {key} is out of range: the model has {len(layers)} operable"
                f" layers ({listing})"
            )
        return layers[key]
    for layer in layers:
        if layer.name == key:
            return layer
    modules = dict(model.named_modules())
    if key in modules:
        raise TypeError(
            f"layer {key!r} is a {type(modules[key]).__name__}: only Linear and Conv2d"
            f" layers are operable ({listing})"
        )
    raise LookupError(f"the model has no layer named {key!r}; operable layers: {listing}")
