"""Which layer outputs to collect, and a probe that delivers them by layer name.

Decisions:

* ``layers=None`` means the output of every ``Linear`` and ``Conv2d`` leaf (as
  delve does: before the activation). A string naming a module of the model
  (``"features.0"``) probes that module's output; any other string is a ptera
  selector that must capture ``out``, and the selector text is the layer's name.
* Layers are collected by ``probing`` the modules' classes (``Linear(self) >
  #value as out``) and keeping the instances asked for: the model is never
  edited and no hook is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ... import probing

__all__ = ["LayerProbe", "default_layers", "resolve_layers"]


def default_layers(model: nn.Module) -> list[str]:
    """Names of the ``Linear`` and ``Conv2d`` leaves of ``model``, in module order."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not any(True for _ in m.children())
    ]


def resolve_layers(model: nn.Module, layers: Iterable[str] | None) -> tuple[dict, list[str]]:
    """``({id(module): name}, [selector, ...])`` for the layers asked for.

    A name that is neither a module of ``model`` nor a selector capturing ``out``
    is an error naming it.
    """
    if isinstance(layers, str):
        raise TypeError(f"layers must be a list of names or selectors, got the string {layers!r}")
    modules = dict(model.named_modules())
    names = default_layers(model) if layers is None else list(layers)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer to measure")
    by_module, selectors = {}, []
    for name in names:
        if name in modules and name != "":
            by_module[id(modules[name])] = name
        elif ">" in name or "#" in name:
            if " as out" not in name:
                raise ValueError(f"layer selector {name!r} must capture the output `as out`")
            selectors.append(name)
        else:
            raise ValueError(
                f"layer {name!r} is not a module of {type(model).__name__}"
                f" (modules: {', '.join(n for n in modules if n) or 'none'})"
            )
    return by_module, selectors


class LayerProbe:
    """Calls ``sink(name, output)`` for each output of the chosen layers while active
    (detached, unless ``detach=False``)."""

    def __init__(
        self, model: nn.Module, layers: Iterable[str] | None, sink: Callable, detach: bool = True
    ):
        self.by_module, self.selectors = resolve_layers(model, layers)
        self.detach = detach
        self.order = list(self.by_module.values()) + self.selectors
        classes = {type(m) for name, m in model.named_modules() if id(m) in self.by_module}
        self.env = {f"_cls{i}": cls for i, cls in enumerate(sorted(classes, key=_qualname))}
        self.sink = sink
        self._probes: list = []

    def _module_output(self, data: dict) -> None:
        out = data.get("out")
        name = self.by_module.get(id(data.get("self")))
        if name is not None and isinstance(out, torch.Tensor):
            self.sink(name, out.detach() if self.detach else out)

    def _selector_output(self, name: str) -> Callable:
        def take(data: dict) -> None:
            out = data.get("out")
            if isinstance(out, torch.Tensor):
                self.sink(name, out.detach() if self.detach else out)

        return take

    def __enter__(self) -> LayerProbe:
        try:
            if self.env:
                sels = [f"{key}(self) > #value as out" for key in self.env]
                self._open(probing(*sels, env=self.env), self._module_output)
            for sel in self.selectors:
                self._open(probing(sel), self._selector_output(sel))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _open(self, ctx: Any, fn: Callable) -> None:
        probe = ctx.__enter__()
        self._probes.append(ctx)
        probe.subscribe(fn)

    def __exit__(self, *exc: Any) -> None:
        while self._probes:
            self._probes.pop().__exit__(None, None, None)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@contextmanager
def evaluating(model: nn.Module):
    """``model`` in eval mode under ``no_grad``; its mode restored afterwards."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was)


def batches(data: Any, batch_size: int) -> Iterable:
    """The batches of a DataLoader as they are, or of a Dataset in order."""
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"data must be a Dataset or a DataLoader, got {type(data).__name__}")
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)


def split_inputs(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch; ``(inputs, None)`` for a bare tensor."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise ValueError(f"a batch of {len(batch)} items: expected (inputs, targets)")
    return batch, None
