"""Tweaks, rewrites, collections and listeners, composed into one ``Overlay``.

An ``Overlay`` is an immutable list of effects; ``tweak``, ``rewrite``, ``using``
and ``on`` return a new one. Entering it (``with overlay as result``) activates
all its effects at once and yields a fresh ``Result`` that its collections and
listeners fill. Selfless objects run every call inside their overlay; code that
does not call through an object uses the context managers ``tweaking``,
``rewriting`` and ``using`` directly.

Decisions:

* ``tweak`` and ``rewrite`` act when the focus is set (immediate); ``using`` and
  ``on`` see each match once it is complete (total, core.md section 3).
* A listener's return value is collected under the listener's name, unless it
  is ``None`` (a listener run for its side effect collects nothing); a capture
  with several values passed to a listener is an error (as in ``map``).
* An object's overlay stays installed between its calls (``Overlay.call``, a
  ``Resident`` given back when the overlay is collected): a call is two
  context-variable sets. ``with overlay`` activates and ends it each time, and
  leaves no code swapped after the block.
* A plugin that delivers one-capture results (``Grad``) goes through
  ``plugin.emit_each``: a listener that takes just that capture is called with
  each value, with no dict or ``Capture`` built per value.
* A *plugin* (``Grad``, any ``ptera.plugin.Plugin``) builds its own rules and
  calls ``emit`` with dicts of ``Capture`` (the contract: ``ptera/plugin.py``).
* Entering an overlay that is already active in this context does not stack it
  twice: the inner call reuses the outer activation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from .capture import Capture, Rule
from .lookup import registry_version
from .match import compile_selector
from .overlay import Resident, activate, caller_env, deactivate, engine_lock
from .plugin import is_plugin
from .results import Collection, Result, call_with, listener_call, listener_one
from .selector import Scope, SelectorError, check_env, select
from .transform import ABSENT

__all__ = ["Overlay", "rewriting", "tweaking", "using"]


def _mapping(values: Any, what: str, kind: str) -> Mapping:
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} needs a mapping {{selector: {kind}}}, not {type(values).__name__}")
    return values


def _needs_focus(sel: Scope, what: str) -> Scope:
    if sel.focus is None:
        raise SelectorError(sel, 0, f"{what} needs a focus: mark a variable with '!'")
    return sel


def _kept(env: Mapping) -> Mapping:
    """The namespace an effect keeps for compiling its selector later, with ptera's own
    objects standing in it as what a selector can mean by them (an object as its
    function, an overlay as nothing): else a loop making objects chains each one to
    the previous through its namespace, keeping every earlier model alive."""
    # Asking each distinct type, not each value: a module holds a few hundred names
    # of a few dozen types.
    standing = {t for t in set(map(type, env.values())) if hasattr(t, "__ptera_env__")}
    if not standing:
        return env
    return {
        name: value.__ptera_env__() if type(value) in standing else value
        for name, value in env.items()
    }


class _Effect:
    """One effect: its kind, result name, selector or plugin, and value or function."""

    __slots__ = ("kind", "name", "target", "value", "env")

    def __init__(self, kind: str, name: str | None, target: Any, value: Any, env: Mapping):
        self.kind, self.name, self.target, self.value = kind, name, target, value
        self.env = _kept(env)


class Overlay:
    """A composable set of effects (``tweak``, ``rewrite``, ``using``, ``on``)."""

    def __init__(self, effects: tuple = ()):
        self.effects = effects
        self._current: ContextVar[Result | None] = ContextVar("ptera_result", default=None)
        self._rules: tuple[Rule, ...] | None = None
        self._version = -1
        self._plans: dict = {}  # plans built for these rules, by base (see activate)
        self._fields: tuple | None = None  # (name, kind) of each collection a call makes
        self._resident: Resident | None = None  # the rules `call` keeps installed
        self._resident_version = -1
        self._finalizer: weakref.finalize | None = None

    def __ptera_env__(self) -> None:
        """An overlay means nothing in a selector (see ``overlay.caller_env``)."""
        return None

    def _with(self, effects: list) -> Overlay:
        return Overlay(self.effects + tuple(effects))

    # -- composing --------------------------------------------------------
    def tweak(self, values: Mapping, env: Mapping | None = None) -> Overlay:
        """Replace each selector's focus value by the given value."""
        check_env(env)
        env = env if env is not None else caller_env(1)
        return self._with(
            _Effect("tweak", None, _needs_focus(select(s), "a tweak"), v, env)
            for s, v in _mapping(values, "tweak", "value").items()
        )

    def rewrite(self, functions: Mapping, env: Mapping | None = None) -> Overlay:
        """Replace each selector's focus value by ``fn(**captures)``."""
        check_env(env)
        env = env if env is not None else caller_env(1)
        effects = []
        for s, fn in _mapping(functions, "rewrite", "function").items():
            if not callable(fn):
                raise TypeError(f"rewrite needs functions; got {fn!r} for {s!r} (use tweak)")
            effects.append(_Effect("rewrite", None, _needs_focus(select(s), "a rewrite"), fn, env))
        return self._with(effects)

    def using(self, *selectors: Any, env: Mapping | None = None, **named: Any) -> Overlay:
        """Collect each selector's matches under a name (positional ones: the focus name)."""
        check_env(env)
        env = env if env is not None else caller_env(1)
        effects = []
        for s in selectors:
            sel = select(s)
            if sel.focus is None:
                raise TypeError(
                    f"using({str(sel)!r}): a selector without a focus needs a name: using(name=...)"
                )
            effects.append(
                _Effect("using", _collection_name(sel.focus.out_name, "using"), sel, None, env)
            )
        for name, s in named.items():
            target = s if is_plugin(s) else select(s)
            effects.append(_Effect("using", _collection_name(name, "using"), target, None, env))
        return self._with(effects)

    def on(self, target: Any, fn: Callable, env: Mapping | None = None) -> Overlay:
        """Call ``fn(**captures)`` on each match; collect its results under ``fn.__name__``."""
        if not callable(fn):
            raise TypeError(f"on needs a function to call, not {type(fn).__name__} ({fn!r:.60})")
        check_env(env)
        env = env if env is not None else caller_env(1)
        target = target if is_plugin(target) else select(target)
        name = _collection_name(getattr(fn, "__name__", type(fn).__name__), "on")
        return self._with([_Effect("on", name, target, fn, env)])

    # -- running ------------------------------------------------------------
    def rules(self) -> tuple[Rule, ...]:
        version = registry_version()
        if self._rules is None or self._version != version:
            self._rules = tuple(r for e in self.effects for r in self._rules_for(e))
            self._version = version
            self._plans = {}
        return self._rules

    def _rules_for(self, e: _Effect) -> tuple[Rule, ...]:
        current = self._current
        if e.kind == "tweak":
            value = e.value
            comp = compile_selector(e.target, e.env)
            return (Rule(comp, lambda data: value, immediate=True, intercepts=True),)
        if e.kind == "rewrite":
            fn = e.value
            comp = compile_selector(e.target, e.env)
            return (Rule(comp, lambda data: call_with(fn, data), immediate=True, intercepts=True),)
        name, listener = e.name, e.value
        if listener is None:

            def emit(captures: dict[str, Capture]) -> Any:
                result = current.get()
                if result is not None:
                    result.fields[name].append(captures)
                return ABSENT

        else:
            call = listener_call(listener)

            def emit(captures: dict[str, Capture]) -> Any:
                result = current.get()
                if result is not None:
                    value = call(captures)
                    if value is not None:
                        result.fields[name].append(value)
                return ABSENT

            emit.each = _each(listener, name, current, emit)

        if is_plugin(e.target):
            return tuple(e.target.__ptera_rules__(emit, e.env))
        comp = compile_selector(e.target, e.env)
        return (Rule(comp, emit, immediate=False, raw=True),)

    def _result(self) -> Result:
        fields = self._fields
        if fields is None:
            # Built once per overlay (its effects never change): the first kind of a name wins.
            kinds: dict = {}
            for e in self.effects:
                if e.kind in ("using", "on"):
                    kinds.setdefault(e.name, Collection if e.kind == "using" else list)
            fields = self._fields = tuple(kinds.items())
        if len(fields) == 1:  # the common object (one listener): no comprehension per call
            ((name, kind),) = fields
            return Result(ABSENT, {name: kind()})
        return Result(ABSENT, {name: kind() for name, kind in fields})

    def call(self, fn: Callable, *args: Any) -> Result:
        """``fn(*args)`` with this overlay active; its ``Result`` holds the return value.

        Unlike ``with overlay``, the rules stay installed between calls (a
        ``Resident`` held until this overlay is collected or the registry of
        decorated functions changes): a call costs two context-variable sets.
        """
        result = self._result()
        current = self._current
        if current.get() is not None:  # a nested call: the outer activation serves it
            token = current.set(result)
            try:
                result.value = fn(*args)
            finally:
                current.reset(token)
            return result
        resident = self._resident
        if resident is None or self._resident_version != registry_version():
            resident = self._make_resident()
        if not resident.rules:
            result.value = fn(*args)
            return result
        plan_token, plan, counted = resident.enter()
        token = current.set(result)
        try:
            result.value = fn(*args)
        finally:
            current.reset(token)
            resident.leave(plan_token, plan, counted)
        return result

    def _make_resident(self) -> Resident:
        with engine_lock():
            version = registry_version()
            if self._resident is not None and self._resident_version == version:
                return self._resident  # another thread made it meanwhile
            # The new rules are installed before the old ones are released, so that a
            # call running elsewhere on the old ones keeps its instrumented code.
            new = Resident(self.rules())
            old, finalizer = self._resident, self._finalizer
            self._resident, self._resident_version = new, version
            self._finalizer = weakref.finalize(self, new.hold.release)
            if old is not None:
                finalizer.detach()
                old.hold.release()
            return new

    def __enter__(self) -> Result:
        result = self._result()
        if self._current.get() is not None:
            result.activation = (None, self._current.set(result))
            return result
        rules = self.rules()
        token = self._current.set(result)
        try:
            active = activate(rules, plans=self._plans) if rules else None
            result.activation = (active, token)
        except BaseException:
            self._current.reset(token)
            raise
        return result

    def __exit__(self, *exc) -> bool:
        # The context's current result knows how it was activated (thread-safe).
        current = self._current.get()
        if current is None:
            raise ValueError(
                "this overlay was not entered here: its rules were activated in another"
                " context (another asyncio task, thread or copied context); end them there"
            )
        active, token = current.activation
        try:
            if active is not None:
                deactivate(active)
        finally:
            if active is None or not active.active:  # else another context's: left as is
                self._current.reset(token)
        return False


def _each(listener: Callable, name: str, current: ContextVar, emit: Callable) -> Callable:
    """``each(out, names, values)`` for ``plugin.emit_each``: the listener called with each
    value directly when it takes just ``out``, without a dict and a ``Capture`` per value."""
    ones: dict[str, Callable | None] = {}

    def each(out: str, names: list, values: Iterable) -> None:
        one = ones.get(out, _UNKNOWN)
        if one is _UNKNOWN:
            one = ones[out] = listener_one(listener, out)
        if one is None:
            for n, v in zip(names, values):
                emit({out: Capture(out, [n], [v])})
            return
        result = current.get()
        if result is None:
            return
        field = result.fields[name]
        for v in values:
            got = one(v)
            if got is not None:
                field.append(got)

    return each


_UNKNOWN = object()


def tweaking(values: Mapping, env: Mapping | None = None) -> Overlay:
    """A context manager that replaces focus values: ``with tweaking({"f > x": 0}): ...``."""
    return Overlay().tweak(values, env=env if env is not None else caller_env(1))


def rewriting(functions: Mapping, env: Mapping | None = None) -> Overlay:
    """A context manager that recomputes focus values: ``{"f{a} > x": lambda a: a + 1}``."""
    return Overlay().rewrite(functions, env=env if env is not None else caller_env(1))


def _collection_name(name: str, where: str) -> str:
    """``name`` if a ``Result`` can show it as an attribute, else a ``ValueError``."""
    if name.startswith("_") or hasattr(Result, name) or name in ("value", "fields", "activation"):
        raise ValueError(
            f"{where}: '{name}' cannot name a collection: result.{name} is the Result's own"
            " attribute (result.value is the call's return value, result.fields holds the"
            " collections); choose another name"
        )
    return name


def using(*selectors: Any, env: Mapping | None = None, **named: Any) -> Overlay:
    """A context manager yielding a ``Result`` that collects matches by name."""
    env = env if env is not None else caller_env(1)
    return Overlay().using(*selectors, env=env, **named)
