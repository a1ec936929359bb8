"""``Recurrence``: the storage of a recurrence ``h[i + 1] = f(h[i])``.

Assigning ``h[i] = v`` in a ``@ptera`` function reports variable ``h`` with key
``i``, so ``h[1] as h`` selects one step; the storage itself is a plain mapping.
With a ``window``, only the last ``window`` assignments are kept, which bounds
memory for long recurrences; reading a dropped step says so.

Decisions:

* A step that is missing (never set, or dropped by the window) raises
  ``StepError``, both an ``IndexError`` (a recurrence is read like a sequence,
  ``h[i - 1]``) and a ``KeyError`` (steps are keys), so code written for
  either catches it.
* The window is the first positional argument: ``Recurrence(2)``; the repr
  shows it the same way, ``Recurrence(2, {2: 3, 3: 4})``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

__all__ = ["Recurrence", "StepError"]


class StepError(IndexError, KeyError):
    """A step of a ``Recurrence`` that is not held (never set, or out of the window)."""

    def __str__(self) -> str:
        # KeyError would quote the message; this is a sentence.
        return str(self.args[0]) if self.args else ""


class Recurrence:
    """Steps of a recurrence by key; ``window`` bounds how many are kept."""

    def __init__(self, window: int | None = None):
        if window is not None and window < 1:
            raise ValueError(f"Recurrence window must be at least 1, not {window}")
        self.window = window
        self._steps: dict[Hashable, Any] = {}
        self._dropped = 0

    def __setitem__(self, key: Hashable, value: Any) -> None:
        steps = self._steps
        steps.pop(key, None)
        steps[key] = value
        if self.window is not None and len(steps) > self.window:
            del steps[next(iter(steps))]
            self._dropped += 1

    def __getitem__(self, key: Hashable) -> Any:
        try:
            return self._steps[key]
        except KeyError:
            pass
        held = ", ".join(map(repr, self._steps)) or "none"
        if self._dropped:
            raise StepError(
                f"step {key!r} is not held: this Recurrence keeps the last {self.window}"
                f" steps (held: {held}); use a larger window"
            )
        raise StepError(f"step {key!r} was never set (set: {held})")

    def __contains__(self, key: Hashable) -> bool:
        return key in self._steps

    def __len__(self) -> int:
        return len(self._steps)

    def __iter__(self) -> Iterator:
        return iter(self._steps)

    def items(self):
        """The held ``(key, value)`` pairs, oldest first."""
        return self._steps.items()

    def __repr__(self) -> str:
        window = f"{self.window}, " if self.window is not None else ""
        return f"Recurrence({window}{self._steps!r})"
