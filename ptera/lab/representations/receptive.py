"""Receptive fields of a chain of convolution and pooling layers.

``receptive_field(model, (C, H, W))`` lists, for every ``Conv2d``, ``MaxPool2d``
and ``AvgPool2d`` in the order the forward pass calls them, the receptive field
size and the stride (jump) of its outputs on the input, from each layer's kernel,
stride, padding and dilation: ``r += (k - 1) * d * j``, ``j *= s``.

Decisions:

* The call order comes from a probe on one forward pass of a zero input, not
  from the order modules were declared.
* The analytic numbers are checked by a gradient probe on that zero input: the
  gradient of a layer's centre unit may only reach input pixels inside the
  window the analytic field gives it (it may reach fewer: a dead ReLU or max
  pooling route the gradient to fewer pixels). A layer that sees outside it is
  an error: the model is not a chain.
* A model with skip connections (found with ``torch.fx``: an addition or
  concatenation of two computed tensors) is refused with a clear error unless it
  was built with ``noskip=True`` (the seed's convention), whose no-skip path is
  then the chain reported.
* Kernels, strides, padding and dilation must be square.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from .layers import LayerProbe, evaluating

__all__ = ["receptive_field", "spatial_layers"]

POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def _square(module: nn.Module, name: str, what: str) -> int:
    value = getattr(module, what, 1)
    if isinstance(value, str):  # Conv2d padding="valid" / "same"
        if value == "valid":
            return 0
        k, d = _square(module, name, "kernel_size"), _square(module, name, "dilation")
        return d * (k - 1) // 2
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(
                f"receptive_field handles square layers; {name} ({type(module).__name__})"
                f" has {what}={tuple(value)}"
            )
        value = value[0]
    return int(value)


def skip_connection(model: nn.Module) -> str | None:
    """The first merge of two computed tensors in ``model``'s traced graph, if any."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # not traceable (control flow): the gradient check still guards
        return None
    merges = {operator.add, operator.iadd, torch.add, torch.cat, torch.stack}
    for node in graph.nodes:
        is_merge = (node.op == "call_function" and node.target in merges) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        if not is_merge:
            continue
        args = node.args[0] if node.target in (torch.cat, torch.stack) else node.args
        if sum(isinstance(a, torch.fx.Node) for a in args) >= 2:
            return node.name
    return None


def receptive_field(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """Per conv / pool layer, in call order: a DataFrame ``layer, kind,
    receptive_field, stride, size`` (``size``: the output's height)."""
    import pandas as pd

    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}")
    merge = skip_connection(model)
    if merge is not None and not getattr(model, "noskip", False):
        raise ValueError(
            f"{type(model).__name__} has a skip connection ({merge!r} merges two paths):"
            " its receptive field is not a chain's; build it with noskip=True to measure"
            " the no-skip path"
        )
    modules = dict(model.named_modules())
    names = spatial_layers(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d or pooling layer")
    outputs: dict[str, torch.Tensor] = {}
    probe = LayerProbe(model, names, lambda n, out: outputs.setdefault(n, out), detach=False)
    x = torch.zeros(1, *input_shape, requires_grad=True)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with evaluating(model), torch.enable_grad(), probe:
        model(x.to(device))
    rows, r, j, start = [], 1, 1, 0.0
    for name, out in outputs.items():  # insertion order: the order of the calls
        m = modules[name]
        k, s = _square(m, name, "kernel_size"), _square(m, name, "stride")
        p = _square(m, name, "padding")
        d = _square(m, name, "dilation") if hasattr(m, "dilation") else 1
        start += ((k - 1) / 2 * d - p) * j  # input coordinate of output (0, 0)'s centre
        r += (k - 1) * d * j
        j *= s
        _check_gradient(name, x, out, r, j, start)
        rows.append(
            {"layer": name, "kind": type(m).__name__, "receptive_field": r, "stride": j,
             "size": out.shape[2]}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=["layer", "kind", "receptive_field", "stride", "size"])


def _check_gradient(
    name: str, x: torch.Tensor, out: torch.Tensor, r: int, j: int, start: float
) -> None:
    if not out.requires_grad:
        return
    h, w = out.shape[2] // 2, out.shape[3] // 2
    (grad,) = torch.autograd.grad(out[0, :, h, w].sum(), x, retain_graph=True)
    seen = grad[0].abs().sum(0) > 0
    if not seen.any():
        return  # nothing reached the input (dead units): nothing to contradict
    for axis, unit in ((0, h), (1, w)):
        hit = seen.any(dim=1 - axis).nonzero().flatten()
        centre = start + unit * j
        low, high = centre - (r - 1) / 2, centre + (r - 1) / 2
        if hit.min() < low or hit.max() > high:
            raise ValueError(
                f"layer {name}: its gradient reaches input {'rows' if axis == 0 else 'columns'}"
                f" {int(hit.min())}..{int(hit.max())}, outside its analytic receptive field"
                f" {low:g}..{high:g}: the model is not a chain of conv / pool layers"
            )


def spatial_layers(model: nn.Module) -> list[str]:
    """The names of the layers that have a receptive field (``Conv2d`` and pooling)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, *POOLS))]
