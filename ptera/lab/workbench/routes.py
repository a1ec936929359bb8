"""Where a layer's neurons go: its consumers, found on the model's ``torch.fx`` graph.

A neuron of a ``Linear``/``Conv2d`` layer owns a row of the layer's weight (and a
bias entry), an entry of every ``BatchNorm`` it flows through, and the input
columns of the next ``Linear``/``Conv2d`` (its *consumers*), also across
``Flatten``/``view``, where one channel owns ``factor`` consecutive features.

Decisions:

* The graph comes from ``torch.fx.symbolic_trace`` (the traced module is only
  read, never run); its structure does not depend on sizes, so one trace serves
  every surgery on a model, and factors are read from the current sizes.
* Between a layer and its consumers only neuron-wise operations are followed
  (activations, pooling, dropout, batch norm, flattening); anything that mixes
  neurons (``add``, ``cat``, softmax into a layer, ``LayerNorm`` ...) is an error
  naming the operation, so surgery never gives a silently wrong network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layers import Layer, neuron_count

__all__ = ["Route", "SurgeryError", "find_route", "trace"]


class SurgeryError(ValueError):
    """An operation on neurons that cannot be done (bad input or unsupported model)."""


_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_PASS_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardtanh, F.hardswish, F.softplus,
    F.dropout, F.dropout1d, F.dropout2d, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    torch.clamp, torch.clip,
}  # fmt: skip
_PASS_METHODS = {"relu", "sigmoid", "tanh", "clamp", "clip", "contiguous"}
_FLATTEN_METHODS = {"view", "reshape", "flatten"}
_SHAPE_METHODS = {"size", "dim"}
# Neuron-mixing, but harmless when nothing but the model's output follows them.
_TO_OUTPUT = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}


@dataclass(frozen=True)
class Route:
    """A layer's norms and consumers, each with its ``factor`` (features per neuron)."""

    layer: Layer
    norms: tuple[tuple[str, nn.Module, int], ...]
    consumers: tuple[tuple[str, nn.Module, int], ...]


def trace(model: nn.Module) -> fx.Graph:
    """The model's fx graph; a ``SurgeryError`` when ``torch.fx`` cannot trace it."""
    try:
        return fx.symbolic_trace(model).graph
    except Exception as exc:
        raise SurgeryError(
            f"cannot trace {type(model).__name__} with torch.fx to find the consumers of its"
            f" layers ({type(exc).__name__}: {exc}); surgery needs a traceable forward"
            " (no data-dependent control flow)"
        ) from exc


def find_route(model: nn.Module, graph: fx.Graph, layer: Layer) -> Route:
    """Follow ``layer``'s output on ``graph`` to its norms and consumers."""
    modules = dict(model.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer.name]
    where = f"layer {layer.index} ({layer.name!r})"
    if len(calls) != 1:
        raise SurgeryError(
            f"{where} is called {len(calls)} times in the traced forward; surgery needs a"
            " layer called exactly once"
        )
    size = neuron_count(layer.module)
    norms: dict[str, tuple] = {}
    consumers: dict[str, tuple] = {}
    stack = [(calls[0], False, False)]  # node, flattened, mixed (softmax on the way)
    seen: set = set()
    while stack:
        node, flat, mixed = stack.pop()
        for user in node.users:
            if user in seen:
                raise SurgeryError(f"{where}: its output reaches {_show(user)} twice")
            seen.add(user)
            kind, module = _classify(user, modules)
            if kind == "ignore":
                continue
            if kind == "output":
                raise SurgeryError(
                    f"{where} feeds the model's output: its neurons are the model's outputs,"
                    " and prune and add_neurons only work on layers followed by another Linear or"
                    " Conv2d (reinit_neurons works on any layer)"
                )
            if kind == "unsupported" or (mixed and kind != "pass" and kind != "mix"):
                raise SurgeryError(
                    f"{where}: its output flows into {_show(user)}, which surgery cannot"
                    " follow (only neuron-wise operations, batch norm and flattening may"
                    " come between a layer and the next Linear/Conv2d)"
                )
            if kind == "consumer":
                consumers[user.target] = (module, _factor(where, user, module, size, flat))
            elif kind == "norm":
                norms[user.target] = (module, _factor(where, user, module, size, flat))
                stack.append((user, flat, mixed))
            else:
                stack.append((user, flat or kind == "flatten", mixed or kind == "mix"))
    if not consumers:
        raise SurgeryError(f"{where} has no Linear or Conv2d consumer in the traced forward")
    return Route(
        layer,
        tuple((name, m, f) for name, (m, f) in norms.items()),
        tuple((name, m, f) for name, (m, f) in consumers.items()),
    )


def _classify(node: fx.Node, modules: dict) -> tuple[str, nn.Module | None]:
    if node.op == "output":
        return "output", None
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            return "consumer", module
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return "norm", module
        if isinstance(module, nn.Flatten):
            return "flatten", module
        if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
            return "mix", module
        return ("pass" if isinstance(module, _PASS_MODULES) else "unsupported"), module
    if node.op == "call_function":
        if node.target is torch.flatten:
            return "flatten", None
        if node.target in _TO_OUTPUT:
            return "mix", None
        if node.target is getattr:  # x.shape
            return "ignore", None
        return ("pass" if node.target in _PASS_FUNCTIONS else "unsupported"), None
    if node.op == "call_method":
        if node.target in _SHAPE_METHODS:
            return "ignore", None
        if node.target in _FLATTEN_METHODS:
            return "flatten", None
        if node.target in ("softmax", "log_softmax"):
            return "mix", None
        return ("pass" if node.target in _PASS_METHODS else "unsupported"), None
    return "unsupported", None


def _factor(where: str, node: fx.Node, module: nn.Module, size: int, flat: bool) -> int:
    if isinstance(module, nn.Conv2d):
        width, what = module.in_channels, "input channels"
        if module.groups != 1:
            raise SurgeryError(
                f"{where} feeds {node.target!r}, a grouped Conv2d (groups={module.groups}),"
                " which surgery does not support"
            )
    elif isinstance(module, nn.Linear):
        width, what = module.in_features, "input features"
    else:
        width, what = module.num_features, "features"
    if width % size or (not flat and width != size):
        raise SurgeryError(
            f"{where} has {size} neurons but {node.target!r} ({type(module).__name__}) has"
            f" {width} {what}: cannot tell which belong to which neuron"
        )
    return width // size


def _show(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", target)
    return f"{node.op} {name!r}"
