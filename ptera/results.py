"""What a call through a selfless object gives back: its value and its collections.

``f.using(q="square > x")(3, 4)`` returns a ``Result`` whose ``value`` is the
return value and whose ``q`` is a ``Collection``: one entry per match, each a
dict of ``Capture`` objects. ``map`` reads single values (a capture with
several values is an error that says to use ``map_all``), ``map_all`` lists,
``map_full`` the capture objects themselves.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .capture import Capture
from .transform import ABSENT

__all__ = ["Collection", "Result", "call_with"]


class Result:
    """The value of a call (``value``) and what its overlays collected, by name."""

    def __init__(self, value: Any = ABSENT, fields: dict[str, list] | None = None):
        self.value = value
        self.fields: dict[str, list] = {} if fields is None else fields
        self.activation: tuple | None = None  # set by the overlay that made it

    def field(self, name: str, kind: type = list) -> list:
        got = self.fields.get(name)
        if got is None:
            got = self.fields[name] = kind()
        return got

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(
            f"the result has no collection '{name}' (it has: {', '.join(fields) or 'none'})"
        )

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"Result(value={self.value!r}{', ' if inner else ''}{inner})"


class Collection(list):
    """The matches of one selector in one call: a list of dicts of ``Capture``."""

    def _one(self, captures: dict, name: str) -> Capture:
        try:
            return captures[name]
        except KeyError:
            raise KeyError(
                f"no capture '{name}' in this match (it has: {', '.join(captures) or 'none'})"
            ) from None

    def _read(self, what: tuple, get: Callable[[Capture], Any]) -> list:
        if len(what) == 1 and callable(what[0]):
            fn = what[0]
            return [
                call_with(fn, {k: get(c) for k, c in captures.items()}, fn) for captures in self
            ]
        if not what:
            return [{k: get(c) for k, c in captures.items()} for captures in self]
        if len(what) == 1:
            return [get(self._one(captures, what[0])) for captures in self]
        return [tuple(get(self._one(captures, n)) for n in what) for captures in self]

    def map(self, *what: str | Callable) -> list:
        """Single values: ``map("x")``, tuples ``map("x", "y")``, or ``map(fn)`` by parameter."""
        return self._read(what, lambda c: c.value)

    def map_all(self, *what: str | Callable) -> list:
        """Like ``map``, with each capture as the list of all its values."""
        return self._read(what, lambda c: c.values)

    def map_full(self, *what: str | Callable) -> list:
        """Like ``map``, with the ``Capture`` objects (``name``, ``value``, ``names``, ``values``)."""
        return self._read(what, lambda c: c)


_params_cache: dict = {}


def _params(fn: Callable) -> tuple[tuple[str, ...], frozenset, bool]:
    """Names ``fn`` accepts by keyword, those it requires, and whether it takes ``**kw``."""
    target = getattr(fn, "__func__", fn)
    key = (getattr(target, "__code__", None) or id(target), hasattr(fn, "__self__"))
    got = _params_cache.get(key)
    if got is None:
        sig = inspect.signature(fn)
        kinds = inspect.Parameter
        names = tuple(
            p.name
            for p in sig.parameters.values()
            if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        )
        required = frozenset(
            p.name for p in sig.parameters.values() if p.name in names and p.default is p.empty
        )
        varkw = any(p.kind is kinds.VAR_KEYWORD for p in sig.parameters.values())
        got = (names, required, varkw)
        if len(_params_cache) > 4096:
            _params_cache.clear()
        _params_cache[key] = got
    return got


def listener_call(fn: Callable) -> Callable[[dict], Any]:
    """``captures -> fn(**values)`` with ``fn``'s parameters looked up once, for listeners."""
    names, required, varkw = _params(fn)
    if varkw:
        return lambda captures: fn(**{k: c.value for k, c in captures.items()})
    if len(names) == 1 and required == {names[0]}:
        # The common listener (``def update(param)``): one lookup, no dict to build.
        (only,) = names

        def call_one(captures: dict) -> Any:
            cap = captures.get(only)
            if cap is None:
                return call_with(fn, {k: c.value for k, c in captures.items()})  # raises clearly
            return fn(**{only: cap.value})

        return call_one

    def call(captures: dict) -> Any:
        if not required <= captures.keys():
            return call_with(fn, {k: c.value for k, c in captures.items()})  # raises clearly
        return fn(**{n: captures[n].value for n in names if n in captures})

    return call


def listener_one(fn: Callable, name: str) -> Callable[[Any], Any] | None:
    """``value -> fn(value)`` when ``fn`` takes the capture ``name`` and needs nothing
    else (the listener of a plugin's one-capture results); ``None`` otherwise."""
    names, required, varkw = _params(fn)
    if varkw or name not in names or not required <= {name}:
        return None
    try:
        first = next(iter(inspect.signature(fn).parameters.values()), None)
    except (TypeError, ValueError):
        first = None
    if first is not None and first.name == name and first.kind is first.POSITIONAL_OR_KEYWORD:
        return fn  # by position: no keyword dict per call
    return lambda value: fn(**{name: value})


def call_with(fn: Callable, data: dict, who: Any = None) -> Any:
    """Call ``fn`` with the entries of ``data`` that its parameters name (all, for ``**kw``)."""
    names, required, varkw = _params(fn)
    if varkw:
        return fn(**data)
    missing = required - data.keys()
    if missing:
        name = getattr(who or fn, "__qualname__", repr(who or fn))
        odd = [k for k in data if not k.isidentifier()]
        hint = (
            f" (a capture such as '{odd[0]}' is no Python name: rename it with 'as',"
            f" as in '{odd[0]} as x')"
            if odd
            else ""
        )
        raise TypeError(
            f"{name} wants {', '.join(sorted(missing))} but the match has only"
            f" {', '.join(data) or 'nothing'}; name its parameters after the captures{hint}"
        )
    return fn(**{n: data[n] for n in names if n in data})
