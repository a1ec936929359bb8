"""Predicates on step numbers and values, for filtering probes.

``probe.where(step=every(10))`` keeps one result in ten; ``probe.kfilter``,
``filter`` and ``where`` all take these. Each helper returns a plain callable
``value -> bool``.

Decisions:

* ``every`` and ``between`` count from ``start``: ``every(3, start=1)`` keeps
  1, 4, 7, ...; ``end`` is excluded, as in ``range``.
* ``throttle(period)`` is stateful: it keeps the first value it sees, then the
  first value at least ``period`` past the last kept *slot*, so that a stream
  of steps 0, 3, 6, 9, 12, 15 throttled by 5 keeps 0, 6, 12, 15 (slots 0, 5, 10, 15); after
  a jump (0, then 100) the slots catch up at once, so 101 does not pass.
  Use one instance per stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["between", "every", "gt", "gte", "lt", "lte", "throttle"]


class _Steps:
    """Values in ``[start, end)`` that lie on a multiple of ``modulo`` from ``start``."""

    __slots__ = ("start", "end", "modulo")

    def __init__(self, start: Any = 0, end: Any = None, modulo: Any = None):
        if modulo is not None and modulo <= 0:
            raise ValueError(f"the period of every()/between() must be positive, not {modulo}")
        self.start, self.end, self.modulo = start, end, modulo

    def __call__(self, value: Any) -> bool:
        start = self.start
        if start is not None and value < start:
            return False
        if self.end is not None and value >= self.end:
            return False
        return self.modulo is None or (value - (start or 0)) % self.modulo == 0

    def __repr__(self) -> str:
        return f"<steps from {self.start} to {self.end} every {self.modulo}>"


def every(modulo: Any = None, start: Any = 0, end: Any = None) -> Callable[[Any], bool]:
    """True for ``start``, ``start + modulo``, ... below ``end`` (every value if no ``modulo``)."""
    return _Steps(start, end, modulo)


def between(start: Any, end: Any, modulo: Any = None) -> Callable[[Any], bool]:
    """True for values in ``[start, end)``, optionally only every ``modulo`` from ``start``."""
    return _Steps(start, end, modulo)


def lt(bound: Any) -> Callable[[Any], bool]:
    """True for values ``< bound``."""
    return lambda value: value < bound


def lte(bound: Any) -> Callable[[Any], bool]:
    """True for values ``<= bound``."""
    return lambda value: value <= bound


def gt(bound: Any) -> Callable[[Any], bool]:
    """True for values ``> bound``."""
    return lambda value: value > bound


def gte(bound: Any) -> Callable[[Any], bool]:
    """True for values ``>= bound``."""
    return lambda value: value >= bound


class throttle:  # noqa: N801 (a function-like name, as in 1.4)
    """True at most once per ``period`` of a growing value (steps, seconds).

    The first value passes and opens a slot; a value passes again once it
    reaches the next slot boundary, and a repeat of the last passed value
    passes too (several results of the same step).
    """

    def __init__(self, period: Any):
        if period <= 0:
            raise ValueError(f"throttle period must be positive, not {period}")
        self.period = period
        self.last: Any = None
        self.next: Any = None

    def __call__(self, value: Any) -> bool:
        if self.last is None:
            self.last, self.next = value, value + self.period
            return True
        if value == self.last:
            return True
        if value >= self.next:
            self.last = value
            while self.next <= value:
                self.next += self.period
            return True
        return False
