"""Named singleton markers that survive pickling and compare by identity."""

from __future__ import annotations


class Sentinel:
    """A unique marker such as ``ABSENT``; ``Sentinel("X") is Sentinel("X")``."""

    _made: dict[str, Sentinel] = {}

    def __new__(cls, name: str, truthy: bool = True):
        made = cls._made.get(name)
        if made is None:
            made = cls._made[name] = super().__new__(cls)
            made._name, made._truthy = name, truthy
        return made

    def __repr__(self) -> str:
        return self._name

    def __bool__(self) -> bool:
        return self._truthy

    def __reduce__(self):
        return (Sentinel, (self._name, self._truthy))
