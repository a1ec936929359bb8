"""Functions as configurable objects: ``new``, ``state``, ``using``, ``tweak``, ``on``.

``@ptera`` leaves the function itself unchanged and gives it these methods; each
returns a ``PteraFunction``: the same function with its own ``State`` (values for
declared variables and argument defaults) and its own ``Overlay`` (tweaks,
rewrites, collections, listeners). Objects compose and never change the
function they came from.

Decisions:

* ``on`` adds a listener to the object it is called on (as in the seed:
  ``model = ....clone(); @model.on(...)``). On a plain ``@ptera`` function it is
  an error, since that function must not change: clone it first.
* Values given to ``new`` for arguments are defaults of those arguments; wrap
  them in ``Override`` to force them over the call's own values.
* Names that ``new`` or ``state`` accept: arguments, declared variables
  (``z: int``), defaulted ones (``x = default(1)``) and free names the body
  reads (``debug``, even ``print``), as in the seed. Anything else is an
  error that lists what is settable.
* ``f.state`` of a plain function is the state of direct calls (what
  ``@ptera.defaults`` fills); objects copy the state they are made from.
* A call runs through ``Overlay.call``: the object's rules stay installed between
  calls and go when its overlay is collected (``overlay.Resident``).
"""

from __future__ import annotations

import copy
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

from .effects import Overlay
from .lookup import FnState
from .overlay import caller_env
from .results import Result
from .state import (
    HIGH,
    ConflictError,
    State,
    base_state,
    drop_pending,
    hand_over,
    same,
    split_priority,
)

__all__ = ["PteraFunction", "attach", "defaults"]

_LATER = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def settable_kinds(st: FnState) -> dict[str, str]:
    """The names a state can hold for ``st``'s function, with their kinds."""
    source = st.source
    params = inspect.signature(st.function).parameters.values()
    kinds = {
        p.name: "argument"
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)
    }
    kinds.update((n, "declared") for n in sorted(source.declared))
    kinds.update((n, "default") for n in sorted(source.defaulted))
    for n, var in source.variables.items():
        if var.provenance == "external" and n not in kinds:
            kinds[n] = "free"
    return kinds


class PteraFunction:
    """A ``@ptera`` function with its own state and overlay; call it like the function."""

    def __init__(
        self,
        fn: types.FunctionType,
        st: FnState,
        state: State,
        overlay: Overlay | None = None,
        return_object: bool = False,
        positions: dict[str, int] | None = None,
    ):
        self.__wrapped__ = fn
        self.__name__, self.__qualname__, self.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        self._st = st
        self.state = state
        self._overlay = overlay or Overlay()
        self._return_object = return_object
        self._stateful = st.source.stateful
        self._later = bool(st.original.co_flags & _LATER)
        if positions is None:
            params = inspect.signature(fn).parameters.values()
            positions = {
                p.name: i for i, p in enumerate(params) if p.kind is p.POSITIONAL_OR_KEYWORD
            }
        self._positions = positions

    # -- making new objects ------------------------------------------------
    def _copy(self, overlay: Overlay | None = None, return_object: bool | None = None):
        return PteraFunction(
            self.__wrapped__,
            self._st,
            self.state.copy(),
            self._overlay if overlay is None else overlay,
            self._return_object if return_object is None else return_object,
            self._positions,  # copies share the signature: no inspect per new/using
        )

    def __ptera_env__(self) -> Any:
        """What this object stands for in a selector's namespace: its function."""
        return self.__wrapped__

    def __copy__(self) -> PteraFunction:
        return self._copy()

    def __deepcopy__(self, memo: dict) -> PteraFunction:
        """A copy whose state values are deep copies (the function, its overlay and the
        names its selectors resolved stay shared: they are not data)."""
        obj = self._copy()
        for name in list(obj.state):
            dict.__setitem__(obj.state, name, copy.deepcopy(obj.state[name], memo))
        return obj

    def __reduce__(self):
        raise TypeError(
            f"{self.__name__}: an object made with new/using/tweak/... cannot be pickled"
            " (it holds code and overlays); pickle its state values (`obj.state`) and"
            " rebuild it with .new(...) where they are loaded"
        )

    def new(self, **values: Any) -> PteraFunction:
        """A copy whose state also holds ``values`` (wrap in ``default``/``Override`` for priority)."""
        obj = self._copy()
        for name, value in values.items():
            obj.state.set(name, value, f"{self.__name__}.new({name}=...)")
        obj._stateful = self._st.source.stateful  # a free name may have made it so
        return obj

    def clone(self, return_object: bool | None = None) -> PteraFunction:
        """A copy; with ``return_object=True`` calls return the ``Result`` object."""
        return self._copy(return_object=return_object)

    def using(self, *selectors: Any, **named: Any) -> PteraFunction:
        """A copy whose calls return a ``Result`` with one collection per selector."""
        overlay = self._overlay.using(*selectors, env=caller_env(1), **named)
        return self._copy(overlay, return_object=True)

    def tweak(self, values: Mapping) -> PteraFunction:
        """A copy that replaces the focus of each selector with the given value."""
        return self._copy(self._overlay.tweak(values, env=caller_env(1)))

    def rewrite(self, functions: Mapping) -> PteraFunction:
        """A copy that replaces the focus of each selector with ``fn(**captures)``."""
        return self._copy(self._overlay.rewrite(functions, env=caller_env(1)))

    def on(self, target: Any) -> Callable[[Callable], Callable]:
        """Decorator: call the listener on each match; results go to ``result.<listener>``."""
        env = caller_env(1)

        def register(fn: Callable) -> Callable:
            self._overlay = self._overlay.on(target, fn, env=env)
            return fn

        return register

    # -- calling -----------------------------------------------------------
    def _bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Apply the state's argument values: defaults, or forced when ``Override``."""
        state = self.state
        kinds = state._kinds
        for name in state:
            if kinds[name] != "argument":
                continue
            value, forced = state[name], state.priority(name) >= HIGH
            i = self._positions.get(name)
            if i is not None and i < len(args):
                if forced:
                    args = args[:i] + (self._force(name, args[i], value),) + args[i + 1 :]
            elif name in kwargs:
                if forced:
                    kwargs[name] = self._force(name, kwargs[name], value)
            else:
                kwargs[name] = value
        return args, kwargs

    def _force(self, name: str, given: Any, value: Any) -> Any:
        priority, given = split_priority(given)
        if priority >= HIGH and not same(given, value):
            raise ConflictError(
                f"argument '{name}' of {self.__name__} has two Override values:"
                f" {value!r} from {self.state.source(name)} and {given!r} from the call"
            )
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        if len(state):
            args, kwargs = self._bind(args, dict(kwargs))
        overlay = self._overlay
        if not overlay.effects:
            value = self._invoke(args, kwargs)
            return Result(value) if self._return_object else value
        if self._later:
            raise TypeError(
                f"{self.__name__} is a generator or async function: its body runs after"
                " the call returns, outside the object's tweaks, rewrites and listeners;"
                " wrap the iteration (or the await) in `with tweaking(...)`, `with"
                " using(...) as result` or `with probing(...)` instead"
            )
        result = overlay.call(self._invoke, args, kwargs)
        return result if self._return_object else result.value

    def _invoke(self, args: tuple, kwargs: dict) -> Any:
        fn = self.__wrapped__
        if not self._stateful:
            if not (self.state and self._st.source.stateful):
                return fn(*args, **kwargs)
            self._stateful = True  # `obj.state.debug = ...` gave a free name a value
        if self._later:
            return self._invoke_later(args, kwargs)
        fid, state = self._st.fid, self.state
        hand_over(fid, state)
        try:
            return fn(*args, **kwargs)
        finally:
            # A call that failed binding its arguments never took the state: it
            # must not leak into the next direct call of the function.
            drop_pending(fid, state)

    def _invoke_later(self, args: tuple, kwargs: dict) -> Any:
        """Generators and coroutines start later: hand the state over when they do."""
        fn, fid, state = self.__wrapped__, self._st.fid, self.state
        flags = self._st.original.co_flags
        if flags & inspect.CO_COROUTINE:

            async def run():
                coro = fn(*args, **kwargs)  # binds the arguments; the body starts below
                hand_over(fid, state)
                try:
                    return await coro
                finally:
                    drop_pending(fid, state)

            return run()
        if flags & inspect.CO_ASYNC_GENERATOR:

            async def agen():
                inner = fn(*args, **kwargs)
                hand_over(fid, state)
                try:
                    async for item in inner:
                        yield item
                finally:
                    drop_pending(fid, state)

            return agen()

        def gen():
            inner = fn(*args, **kwargs)
            hand_over(fid, state)
            try:
                return (yield from inner)
            finally:
                drop_pending(fid, state)

        return gen()

    def __repr__(self) -> str:
        return f"<PteraFunction {self.__qualname__} state={dict(self.state)!r}>"


def _base_object(fn: types.FunctionType, st: FnState) -> PteraFunction:
    return PteraFunction(fn, st, fn.state)


def _on_plain(fn: types.FunctionType) -> Callable:
    def on(target: Any) -> Callable:
        raise TypeError(
            f"{fn.__name__}.on(...) would change {fn.__name__} itself, which ptera never does;"
            f" listen on a copy: g = {fn.__name__}.clone(return_object=True); @g.on(...)"
        )

    return on


def attach(fn: types.FunctionType, st: FnState) -> None:
    """Give a ``@ptera`` function its object methods and its base ``state``."""
    if getattr(fn, "__ptera_object__", None) is st:
        return
    fn.state = base_state(st.fid, st.qualname, settable_kinds(st), st.enable_free)
    for name in ("new", "clone", "using", "tweak", "rewrite"):
        setattr(fn, name, _delegate(fn, st, name))
    fn.on = _on_plain(fn)
    fn.__ptera_object__ = st


def _delegate(fn: types.FunctionType, st: FnState, name: str) -> Callable:
    # Selectors still resolve names where the user wrote them: caller_env skips ptera.
    def method(*args, **kwargs):
        return getattr(_base_object(fn, st), name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = f"{fn.__name__}.{name}"
    method.__doc__ = getattr(PteraFunction, name).__doc__
    return method


def defaults(**values: Any) -> Callable:
    """Decorator: ``@ptera.defaults(debug=False)`` instruments and gives low-priority values."""
    from .tooling import tooled

    def deco(fn: Any) -> Any:
        fn = tooled(fn)
        state = fn.state
        args = {}
        for name, value in values.items():
            state.set(name, value, f"@ptera.defaults({name}=...)")
            if state._kinds.get(name) == "argument":
                args[name] = state[name]
        if args:
            _set_arg_defaults(fn, args)
        return fn

    return deco


def _set_arg_defaults(fn: types.FunctionType, values: dict) -> None:
    """Make ``values`` the Python defaults of ``fn``'s arguments, so direct calls see them."""
    sig = inspect.signature(fn)
    positional = [p for p in sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    kwonly = {p.name: p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
    merged = [values.get(p.name, p.default) for p in positional]
    while merged and merged[0] is inspect.Parameter.empty:
        merged.pop(0)
    if any(v is inspect.Parameter.empty for v in merged):
        first = next(n for n in values if n in (p.name for p in positional))
        raise TypeError(
            f"@ptera.defaults: cannot give argument '{first}' of {fn.__name__} a default"
            " while a later positional argument has none; make it keyword-only"
        )
    fn.__defaults__ = tuple(merged) or None
    kw = dict(fn.__kwdefaults__ or {})
    kw.update((n, v) for n, v in values.items() if n in kwonly)
    fn.__kwdefaults__ = kw or None
