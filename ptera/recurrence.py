"""``Recurrence``: the storage of a recurrence ``h[i + 1] = f(h[i])``.

Assigning ``h[i] = v`` in a ``@ptera`` function reports variable ``h`` with key
``i``, so ``h[1] as h`` selects one step; the storage itself is a plain mapping.
With a ``window``, only the last ``window`` assignments are kept, which bounds
memory for long recurrences; reading a dropped step says so.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

__all__ = ["Recurrence"]


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
            raise KeyError(
                f"step {key!r} is not held: this Recurrence keeps the last {self.window}"
                f" steps (held: {held}); use a larger window"
            )
        raise KeyError(f"step {key!r} was never set (set: {held})")

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
        window = f"window={self.window}, " if self.window is not None else ""
        return f"Recurrence({window}{self._steps!r})"
