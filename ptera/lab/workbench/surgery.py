"""Surgery on neurons from the outside: prune, add and re-initialise rows of any layer.

Every operation edits the layer's rows, the entries of the batch norms after it
and the input columns of its consumers (see ``routes``), the optimizer's state of
each of those parameters, and the modules' size attributes, and returns a
``Change`` that statistics and learning-rate factors replay on their own tensors.

Decisions:

* An edited parameter is a new ``nn.Parameter`` (same ``requires_grad``): an
  autograd graph still alive from an earlier forward pins the old shape on the old
  one. The same optimizer object is kept, its parameter groups point to the new
  parameters, its hyperparameters are unchanged, and every state tensor shaped like
  the parameter (Adam's ``exp_avg``/``exp_avg_sq``, SGD's ``momentum_buffer`` ...)
  is sliced like it, with zeros for new neurons. Other references to the old
  parameters (a list made before the surgery) are stale afterwards.
* Everything is computed first and committed after: an error (bad index, pruning
  every neuron, an unsupported model) leaves model and optimizer untouched.
* ``init="preserve"`` draws new rows with the layer's default initialisation and
  gives them zero outgoing columns, so the network computes the same function
  (new neurons learn from the next step on); ``init="xavier"`` draws both sides.
* Pruning neuron *i* removes exactly its row and its columns: the network equals
  the old one with *i*'s activation (what the consumers read) forced to zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import Layer, neuron_count
from .routes import Route, SurgeryError

__all__ = ["Change", "add_neurons", "neuron_indices", "prune", "reinit_neurons"]

_NORM_FILL = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}


@dataclass(frozen=True)
class Change:
    """What a surgery did to layer ``layer``: neurons kept, added or re-initialised."""

    layer: str
    size: int  # neurons before
    keep: torch.Tensor | None = None
    added: int = 0
    reset: torch.Tensor | None = None
    consumers: tuple[tuple[str, int], ...] = field(default=())

    def apply(self, t: torch.Tensor, dim: int = 0, factor: int = 1, fill: float = 0.0):
        """``t`` with its neuron axis ``dim`` edited like the layer (new entries ``fill``)."""
        if self.keep is not None:
            return t.index_select(dim, expand(self.keep.to(t.device), factor))
        if self.added:
            shape = list(t.shape)
            shape[dim] = self.added * factor
            return torch.cat([t, t.new_full(shape, fill)], dim)
        return t


def expand(neurons: torch.Tensor, factor: int) -> torch.Tensor:
    """Feature indices of ``neurons`` when each owns ``factor`` consecutive features."""
    if factor == 1:
        return neurons
    return (neurons[:, None] * factor + torch.arange(factor, device=neurons.device)).flatten()


def neuron_indices(
    layer: Layer,
    neurons: int | Iterable[int] | torch.Tensor,
    size: int | None = None,
    what: str = "neurons",
) -> torch.Tensor:
    """Sorted unique indices of ``neurons`` of ``layer``; an error naming any out of range."""
    if isinstance(neurons, torch.Tensor):
        values = neurons.flatten().tolist()
    elif isinstance(neurons, int):
        values = [neurons]
    else:
        values = list(neurons)
    size = neuron_count(layer.module) if size is None else size
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < size]
    if bad:
        raise SurgeryError(
            f"{what} {bad} out of range for layer {layer.index} ({layer.name!r}),"
            f" which has {size} {what} (0 to {size - 1})"
        )
    return torch.tensor(sorted(set(values)), dtype=torch.long)


class _Edits:
    """Pending new tensors, optimizer states and sizes; ``commit`` applies them all.

    An edit is ``edit(tensor, zero)``: the new tensor, with new entries zero when
    ``zero`` (the optimizer's state) or their initial values otherwise.
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None):
        self.optimizer = optimizer
        self.tensors: dict[tuple[int, str], tuple[nn.Module, str, torch.Tensor]] = {}
        self.states: list[tuple[nn.Parameter, dict]] = []
        self.sizes: list[tuple[nn.Module, str, int]] = []

    def tensor(self, module: nn.Module, attr: str, edit) -> None:
        old = getattr(module, attr, None)
        if old is None:
            return
        self.tensors[id(module), attr] = (module, attr, edit(old.detach(), False))
        state = self.optimizer.state.get(old) if self.optimizer is not None else None
        if state:
            new = {
                k: edit(v, True) if isinstance(v, torch.Tensor) and v.shape == old.shape else v
                for k, v in state.items()
            }
            self.states.append((old, new))

    def size(self, module: nn.Module, role: str, value: int) -> None:
        if isinstance(module, nn.Linear):
            attr = "out_features" if role == "out" else "in_features"
        elif isinstance(module, nn.Conv2d):
            attr = "out_channels" if role == "out" else "in_channels"
        else:
            attr = "num_features"
        self.sizes.append((module, attr, value))

    def commit(self) -> None:
        replaced = {}
        for module, attr, new in self.tensors.values():
            old = getattr(module, attr)
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
                replaced[old] = new
            setattr(module, attr, new)
        states = dict(self.states)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["params"] = [replaced.get(p, p) for p in group["params"]]
            for old, new in replaced.items():
                state = states.get(old, self.optimizer.state.pop(old, None))
                if state:
                    self.optimizer.state[new] = state
        for module, attr, value in self.sizes:
            setattr(module, attr, value)


def _axis(change: Change, dim: int, factor: int, fill: float = 0.0):
    return lambda t, zero: change.apply(t, dim, factor, 0.0 if zero else fill)


def _each_axis(route: Route, edits: _Edits, change: Change) -> None:
    """Queue the edit of every tensor axis that belongs to the layer's neurons."""
    kept = len(change.keep) if change.keep is not None else change.size
    size = kept + change.added
    module = route.layer.module
    for attr in ("weight", "bias"):
        edits.tensor(module, attr, _axis(change, 0, 1))
    edits.size(module, "out", size)
    for _, norm, factor in route.norms:
        for attr, fill in _NORM_FILL.items():
            edits.tensor(norm, attr, _axis(change, 0, factor, fill))
        edits.size(norm, "in", size * factor)
    for _, consumer, factor in route.consumers:
        edits.tensor(consumer, "weight", _axis(change, 1, factor))
        edits.size(consumer, "in", size * factor)


def _change(route: Route, size: int, **kwargs) -> Change:
    consumers = tuple((name, factor) for name, _, factor in route.consumers)
    return Change(route.layer.name, size, consumers=consumers, **kwargs)


def _draw_rows(weight: torch.Tensor, count: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` rows and biases drawn like ``nn.Linear``/``nn.Conv2d`` draw theirs."""
    # Drawn on the CPU, where the workbench's generator lives, then moved.
    rows = torch.empty((count, *weight.shape[1:]), dtype=weight.dtype)
    nn.init.kaiming_uniform_(rows, a=math.sqrt(5), generator=generator)
    fan_in = rows[0].numel() if count else 1
    bias = torch.empty(count, dtype=weight.dtype).uniform_(
        -(fan_in**-0.5), fan_in**-0.5, generator=generator
    )
    return rows.to(weight.device), bias.to(weight.device)


def _xavier(like: torch.Tensor, shape: list[int], generator) -> torch.Tensor:
    drawn = torch.empty(shape, dtype=like.dtype)
    return nn.init.xavier_uniform_(drawn, generator=generator).to(like.device)


def prune(route: Route, optimizer, neurons) -> Change:
    """Remove ``neurons`` of the route's layer (rows, norm entries, consumer columns, state)."""
    layer = route.layer
    drop = neuron_indices(route.layer, neurons)
    size = neuron_count(layer.module)
    if len(drop) == size:
        raise SurgeryError(
            f"pruning {size} of {size} neurons of layer {layer.index} ({layer.name!r})"
            " would leave it empty: keep at least one"
        )
    mask = torch.ones(size, dtype=torch.bool)
    mask[drop] = False
    change = _change(route, size, keep=torch.nonzero(mask).flatten())
    edits = _Edits(optimizer)
    _each_axis(route, edits, change)
    edits.commit()
    return change


def add_neurons(
    route: Route, optimizer, count: int, init: str = "preserve", generator=None
) -> Change:
    """Append ``count`` neurons to the route's layer; ``init`` is ``"preserve"`` or ``"xavier"``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SurgeryError(f"neuron_count must be a positive integer, not {count!r}")
    if init not in ("preserve", "xavier"):
        raise SurgeryError(f"init must be 'preserve' or 'xavier', not {init!r}")
    module = route.layer.module
    size = neuron_count(module)
    change = _change(route, size, added=count)
    edits = _Edits(optimizer)
    _each_axis(route, edits, change)  # zeros for new consumer columns: the function is kept
    weight = module.weight.detach()
    if init == "preserve":
        rows, bias = _draw_rows(weight, count, generator)
    else:
        full = _xavier(weight, [size + count, *weight.shape[1:]], generator)
        rows, bias = full[size:], weight.new_zeros(count)
        for _, consumer, factor in route.consumers:
            w = consumer.weight.detach()
            shape = [w.shape[0], (size + count) * factor, *w.shape[2:]]
            drawn = _xavier(w, shape, generator)
            new_cols = drawn[:, size * factor :]
            edits.tensor(
                consumer,
                "weight",
                lambda t, zero, c=new_cols: torch.cat([t, torch.zeros_like(c) if zero else c], 1),
            )
    edits.tensor(
        module, "weight", lambda t, zero: torch.cat([t, torch.zeros_like(rows) if zero else rows])
    )
    edits.tensor(
        module, "bias", lambda t, zero: torch.cat([t, torch.zeros_like(bias) if zero else bias])
    )
    edits.commit()
    return change


def reinit_neurons(
    route: Route, optimizer, neurons, perturbation_ratio: float | None = None, generator=None
) -> Change:
    """Re-draw the incoming weights and bias of ``neurons``, or perturb them by ``perturbation_ratio``.

    With a ratio *r*, each weight *w* becomes *w + r |w| n* (*n* standard normal).
    Their optimizer state is zeroed; outgoing weights are kept.
    """
    layer = route.layer
    idx = neuron_indices(route.layer, neurons)
    ratio = perturbation_ratio
    if ratio is not None and (
        isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 0
    ):
        raise SurgeryError(f"perturbation_ratio must be a number >= 0 or None, not {ratio!r}")
    module = layer.module
    change = Change(layer.name, neuron_count(module), reset=idx)
    edits = _Edits(optimizer)
    weight = module.weight.detach()
    bias = module.bias.detach() if module.bias is not None else weight.new_zeros(weight.shape[0])
    if ratio is None:
        rows, biases = _draw_rows(weight, len(idx), generator)
    else:
        rows, biases = (
            t[idx]
            + ratio
            * t[idx].abs()
            * torch.randn(t[idx].shape, generator=generator, dtype=t.dtype).to(t.device)
            for t in (weight, bias)
        )
    for attr, values in (("weight", rows), ("bias", biases)):
        edits.tensor(
            module,
            attr,
            lambda t, zero, v=values: t.index_put(
                (idx.to(t.device),), torch.zeros_like(v) if zero else v
            ),
        )
    edits.commit()
    return change
