"""PyTorch support: ``Grad``, a listener plugin that differentiates one capture by another.

``Grad("f{!x, !!y}")`` yields, for each value of the focus ``x``, the pair
``(x, dy/dx)``; the secondary focus ``y`` may be in any scope relative to ``x``
(``step{!!loss} >> $param:Parameter``, ``step{!!loss} >> h[1] as h``). It works
with ``f.on(...)``, ``f.using(...)`` and ``probing(...)``.

Decisions:

* Gradients are computed when the outermost call of the selector ends, after
  every rule of that exit has reported: all ``Grad`` requests of that call that
  share the same secondary tensor are served by ONE ``torch.autograd.grad`` over
  the union of their tensors (``retain_graph`` only where another pass follows).
* A focus tensor that the secondary does not depend on gets a zero gradient.
* A tensor captured several times in one call (a module used twice, whose
  ``$p:Parameter`` is seen at each use) is delivered once, with its whole gradient,
  as ``loss.backward()`` accumulates it once: an SGD listener steps it once.
* A focus that is not a tensor requiring grad is an error naming the variable;
  a secondary with several values in one call is an error too.
* Nothing is computed when the call raised; its queued requests are dropped with
  it (``plugin.exit_batch``: the exit's list), so later calls are served as usual.
* One request in its exit (the common case) goes straight to one backward
  pass: no grouping, zeros built only when a gradient is
  ``None``, and no check per tensor: torch refuses a value without gradient
  before it runs anything, and only then are the values checked (the clear
  error, or a frozen tensor skipped) and the pass tried again. Several requests
  are checked first.
* Every pass goes through ``_gradients``, which calls the engine entry that
  ``torch.autograd.grad`` itself ends in (``torch.autograd.graph._engine_run_backward``,
  private) when what ``grad`` would check first is known to hold: a real floating
  scalar target, plain tensors (no ``__torch_function__``, no mode; the entry
  attaches torch's debug logging itself). ``grad``'s argument handling costs ~11 us
  a call on torch 2.13 (CPU time, 21 interleaved rounds), 1.5% of W3's step.
  Anything else, a torch without that entry, and a ``grad`` that someone wrapped
  (a profiler, a mock: looked up on each pass) take ``torch.autograd.grad``; the
  gradients are the same tensors either way (``tests/test_torch.py``).
* Pairs go out through ``plugin.each_sender`` (``emit_each``'s sender, looked up
  once when the rules are built): a listener that takes just the
  focus (``def sgd(param)``) is called with each pair, with no dict or
  ``Capture`` built per parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.overrides import has_torch_function

from . import Scope, SelectorError, select
from .plugin import Capture, Rule, collecting_rule, each_sender, exit_batch

__all__ = ["Grad"]


class Grad:
    """A listener plugin: each match of the focus ``x`` gives ``(x, d secondary / dx)``."""

    def __init__(
        self, selector: str | Scope, *, create_graph: bool = False, retain_graph: bool = False
    ):
        sel = select(selector) if isinstance(selector, str) else selector
        if sel.focus is None or sel.secondary is None:
            raise SelectorError(
                sel,
                0,
                "Grad needs a focus '!x' (what to differentiate by) and a secondary focus"
                " '!!y' (what to differentiate)",
            )
        self.selector = sel
        self.create_graph = create_graph
        self.retain_graph = retain_graph

    def __repr__(self) -> str:
        return f"Grad({str(self.selector)!r})"

    def __ptera_rules__(self, emit: Callable[[dict], Any], env) -> tuple[Rule, ...]:
        x, y = self.selector.focus.out_name, self.selector.secondary.out_name
        # One result per (value, gradient) pair, called as `deliver(names, pairs)`: a
        # partial, so that the common case runs no Python frame between `_serve` and
        # the listener.
        plain = partial(each_sender(emit), x)

        def close(captures: dict[str, Capture]) -> None:
            focus = captures.get(x)
            target = captures.get(y)
            if focus is None or target is None:
                return
            if len(target.values) != 1:
                raise ValueError(
                    f"{self}: the secondary focus '{y}' has {len(target.values)} values in one"
                    " call; Grad differentiates one value"
                )
            if len(captures) > 2:
                others = {k: c for k, c in captures.items() if k != x and k != y}
                deliver = partial(_deliver_with, emit, x, others)
            else:
                deliver = plain
            values, names = focus.values, focus.names
            if len(values) > 1 and len(set(map(id, values))) < len(values):
                names, values = _distinct(names, values)
            exit_batch(_serve).append((target.values[0], values, names, deliver, self))

        return (collecting_rule(self.selector, env, close),)

    def _check_target(self, target: Any) -> None:
        """A ``ValueError`` naming the secondary focus unless it is a scalar tensor with a
        graph (checked once torch has refused a pass, or before a grouped one)."""
        y = self.selector.secondary.out_name
        if not isinstance(target, torch.Tensor):
            raise ValueError(
                f"{self}: the secondary focus '{y}' is a {type(target).__name__}; Grad"
                " differentiates a scalar tensor (keep the tensor, not float(...) or .item())"
            )
        if target.numel() != 1:
            raise ValueError(
                f"{self}: the secondary focus '{y}' has shape {tuple(target.shape)}; Grad"
                " differentiates a scalar (reduce it first, e.g. .sum() or .mean())"
            )
        if not target.requires_grad:
            raise ValueError(
                f"{self}: the secondary focus '{y}' does not require grad (computed under"
                " no_grad, detached, or from tensors without requires_grad)"
            )

    def _differentiable(self, names: list, values: list) -> tuple[list, list] | None:
        """The ``(names, values)`` to differentiate by, ``None`` if none is left; an
        error for one that cannot be."""
        x = self.selector.focus.out_name
        if self.selector.focus.name is None:
            # `$p:Parameter` stands for whatever is there: a frozen tensor gets no
            # gradient, as `loss.backward()` gives it none (a non-tensor is an error).
            kept = [
                (n, v)
                for n, v in zip(names, values)
                if not isinstance(v, torch.Tensor) or v.requires_grad
            ]
            if not kept:
                return None
            if len(kept) < len(values):
                names, values = [n for n, _ in kept], [v for _, v in kept]
        for name, value in zip(names, values):
            if not (isinstance(value, torch.Tensor) and value.requires_grad):
                what = type(value).__name__
                raise ValueError(
                    f"{self}: variable '{name}' (captured as '{x}') is a {what} that does"
                    " not require grad; Grad differentiates only by tensors with"
                    " requires_grad=True (a wildcard focus such as '$p:Parameter' skips"
                    " frozen tensors)"
                )
        return names, values


def _deliver_with(emit: Callable, x: str, others: dict, names: list, pairs) -> None:
    """Each pair as its own result, with the call's other captures beside it."""
    for name, pair in zip(names, pairs):
        emit({**others, x: Capture(x, [name], [pair])})


def _distinct(names: list, values: list) -> tuple[list, list]:
    """Each tensor once (the first name it was captured under)."""
    seen: dict[int, int] = {}
    for i, v in enumerate(values):
        seen.setdefault(id(v), i)
    keep = sorted(seen.values())
    return [names[i] for i in keep], [values[i] for i in keep]


def _gradients(target: Any, xs: list, retain: bool, create: bool) -> tuple:
    """``torch.autograd.grad(target, xs, allow_unused=True, ...)``, by the engine entry
    that ``grad`` ends in when ``grad``'s own checks are known to pass (see *Decisions*).

    Both are looked up on each pass: a ``grad`` that someone wrapped or patched (a
    profiler, a mock) is called itself, and an entry torch swaps in while tracing
    (``torch.compiler``) is the one used."""
    grad = torch.autograd.grad
    run = getattr(torch.autograd.graph, "_engine_run_backward", None) if grad is _GRAD else None
    if (
        run is not None
        and type(target) is torch.Tensor
        and target.dtype.is_floating_point
        and target.numel() == 1
        and not target.is_nested
        and not has_torch_function((target, *xs))
    ):
        return run(
            (target,),
            (torch.ones_like(target, memory_format=torch.preserve_format),),  # as grad
            retain,
            create,
            tuple(xs),
            True,  # allow_unused
            accumulate_grad=False,
        )
    return grad(target, xs, retain_graph=retain, create_graph=create, allow_unused=True)


# torch's own grad: the fast path stands in for it, not for a wrapper around it.
_GRAD = torch.autograd.grad


def _serve(requests: list) -> None:
    """The ``Grad`` requests of one exit, ``(target, xs, names, deliver, grad)``,
    once every rule of the exit has reported: one backward pass per target. One request
    (the common case) is served here, with no grouping and its tensors as they are."""
    if len(requests) != 1:
        _serve_grouped(requests)
        return
    ((target, xs, names, deliver, grad),) = requests
    create = grad.create_graph
    retain = create or grad.retain_graph
    try:
        grads = _gradients(target, xs, retain, create)
    except (RuntimeError, TypeError) as refused:
        error = refused
    else:
        error = None
    if error is not None:
        # torch checks its inputs before running anything, so the graph is intact:
        # find the value that has no gradient (the clear error, raised here rather
        # than inside torch's, or a frozen tensor to skip) and try again; an error
        # that comes from elsewhere goes on as it is.
        grad._check_target(target)
        kept = grad._differentiable(names, xs)
        if kept is None:
            return
        if len(kept[1]) == len(xs):
            raise error
        names, xs = kept
        grads = _gradients(target, xs, retain, create)
    for g in grads:
        if g is None:
            # Zeros for unused inputs by hand: materialize_grads=True costs ~0.1 ms a call.
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(xs, grads)]
            break
    deliver(names, zip(xs, grads))


def _serve_grouped(requests: list) -> None:
    """Several requests in one exit: one ``autograd.grad`` per target over the union of
    their tensors, the graph retained until the last pass."""
    groups: dict[int, list] = {}
    for target, xs, names, deliver, grad in requests:
        grad._check_target(target)
        kept = grad._differentiable(names, xs)
        if kept is not None:
            groups.setdefault(id(target), []).append((target, kept[1], kept[0], deliver, grad))
    pending = list(groups.values())
    for i, group in enumerate(pending):
        target = group[0][0]
        inputs, seen = [], {}
        for req in group:
            for t in req[1]:
                if id(t) not in seen:
                    seen[id(t)] = len(inputs)
                    inputs.append(t)
        create = any(req[4].create_graph for req in group)
        retain = create or any(req[4].retain_graph for req in group) or i < len(pending) - 1
        grads = _gradients(target, inputs, retain, create)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
        for _, xs, names, deliver, _ in group:
            deliver(names, zip(xs, [grads[seen[id(t)]] for t in xs]))
