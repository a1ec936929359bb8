"""The values a call takes for its declared variables, and their priorities.

A function that declares variables (``z: int``) or gives them defaults
(``x = default(1)``) fetches a ``State`` once per call (``take``): the state of the
selfless object it was called through (handed over just before the call), else
the function's own base state. Declared variables read it; defaulted ones are
*settled* against it (``settle``).

Priorities: ``default(v)`` is low, a plain value normal, ``Override(v)`` high.
The higher one wins; two values of equal priority that differ raise
``ConflictError`` naming both sources. Values given to ``new`` for *arguments*
are defaults of those arguments: a value passed in the call wins unless the
state's value is an ``Override``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from .sentinel import Sentinel

__all__ = ["ConflictError", "Default", "Override", "State", "default"]

LOW, NORMAL, HIGH = 0, 1, 2
_NAMES = {LOW: "default", NORMAL: "plain", HIGH: "Override"}
_UNSET = Sentinel("UNSET")


class ConflictError(Exception):
    """Two values of the same priority disagree for one variable."""


class Default:
    """A value of low priority: anything else given for the variable wins."""

    __slots__ = ("value",)
    priority = LOW

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"default({self.value!r})"


class Override(Default):
    """A value of high priority: it wins over plain values and defaults."""

    __slots__ = ()
    priority = HIGH

    def __repr__(self) -> str:
        return f"Override({self.value!r})"


def default(value: Any) -> Default:
    """Mark ``value`` as a default: a state, a tweak or the command line may replace it."""
    return Default(value)


def split_priority(value: Any) -> tuple[int, Any]:
    """``(priority, plain value)`` of a possibly wrapped value."""
    if isinstance(value, Default):
        return value.priority, value.value
    return NORMAL, value


def same(a: Any, b: Any) -> bool:
    """Whether two values agree (identity, else ``==`` that yields a plain bool)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


class State(dict):
    """The values of a selfless object's variables: ``state.x`` reads, ``state.x = v`` writes.

    ``kinds`` maps each settable name to ``"argument"``, ``"declared"``,
    ``"default"`` or ``"free"`` (a global or builtin the function reads); writing
    any other name is a ``TypeError`` that lists them. ``on_free(name)`` is called
    when a free name gets a value (the function must then read it from states).
    """

    __slots__ = ("_meta", "_kinds", "_owner", "_on_free")

    def __init__(self, owner: str = "", kinds: dict | None = None, on_free=None):
        super().__init__()
        object.__setattr__(self, "_meta", {})
        object.__setattr__(self, "_kinds", kinds)
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_on_free", on_free)

    def set(self, name: str, value: Any, source: str) -> None:
        """Give ``name`` a value (maybe wrapped in ``default``/``Override``) from ``source``."""
        kinds = self._kinds
        if kinds is not None and name not in kinds:
            settable = ", ".join(f"{n} ({k})" for n, k in kinds.items()) or "none"
            raise TypeError(
                f"{source}: {self._owner} has no settable variable '{name}'"
                f" (settable: {settable}); declare it in the body (`{name}: type`)"
                f" or assign it with `{name} = default(...)`"
            )
        if kinds is not None and kinds[name] == "free" and self._on_free is not None:
            self._on_free(name)
        priority, plain = split_priority(value)
        self[name] = plain
        self._meta[name] = (priority, source)

    def priority(self, name: str) -> int:
        return self._meta.get(name, (NORMAL, ""))[0]

    def source(self, name: str) -> str:
        return self._meta.get(name, (NORMAL, "the state"))[1]

    def copy(self) -> State:
        new = State(self._owner, self._kinds, self._on_free)
        new.update(self)
        new._meta.update(self._meta)
        return new

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"{self._owner} has no value for '{name}' (it has: {', '.join(self) or 'none'})"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self.set(name, value, f"{self._owner}.state.{name}")

    def __delattr__(self, name: str) -> None:
        self.pop(name, None)
        self._meta.pop(name, None)

    def __repr__(self) -> str:
        return f"State({dict.__repr__(self)})"


EMPTY = State()
_pending: ContextVar[tuple | None] = ContextVar("ptera_state", default=None)
_base: dict[int, State] = {}  # fid -> the state of calls made directly to the function


def base_state(fid: int, owner: str, kinds: dict, on_free=None) -> State:
    """The state a function uses when it is called directly (``fn.state``)."""
    st = _base.get(fid)
    if st is None:
        st = _base[fid] = State(owner, kinds, on_free)
    return st


def hand_over(fid: int, state: State) -> None:
    """The next call of function ``fid`` in this context takes ``state``."""
    _pending.set((fid, state))


def drop_pending(fid: int, state: State) -> None:
    """Forget our hand-over if no call took it (the call failed before its body ran)."""
    p = _pending.get()
    if p is not None and p[0] == fid and p[1] is state:
        _pending.set(None)


def take(fid: int) -> State:
    """The state of the call of ``fid`` that is starting (a helper of instrumented code)."""
    p = _pending.get()
    if p is not None and p[0] == fid:
        _pending.set(None)
        return p[1]
    return _base.get(fid, EMPTY)


def settle(state: State, fid: int, name: str, value: Any) -> Any:
    """Choose between the code's ``name = default(v)`` (or Override) and the state."""
    code_priority, plain = split_priority(value)
    if name not in state:
        return plain
    theirs = state.priority(name)
    if theirs > code_priority:
        return state[name]
    if theirs < code_priority or same(state[name], plain):
        return plain
    from .lookup import state_by_fid

    fn = state_by_fid(fid)
    var = fn.source.variables.get(name)
    where = f"{var.location[0]}:{var.location[2]}" if var else fn.qualname
    raise ConflictError(
        f"'{name}' of {fn.qualname} has two {_NAMES[theirs]} values: {state[name]!r}"
        f" from {state.source(name)} and {plain!r} set in the code ({where});"
        " wrap the one that should win in Override(...)"
    )
