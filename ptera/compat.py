"""The 1.4 overlay API on our engine: ``Overlay``, ``no_overlay``, ``autotool``.

Programs written for ptera 1.4.1 build overlays by adding handlers to a mutable
object and enter it as a context manager::

    ol = Overlay()
    ol.tweak({"f > x": 0})          # adds a handler, returns ol itself
    @ol.on("f > y")
    def show(captures): ...         # a dict of plain values
    with ol:
        f(2)

Decisions:

* ``ptera.Overlay`` is this class (1.4.1's). The composable, immutable overlay
  that ``f.tweak(...)`` and the lab use is ``ptera.effects.Overlay``; nothing
  of ours relied on the top-level name.
* Handlers added to an active overlay take effect the next time it is entered.
* Selector names resolve where the handler was created (the caller's scope),
  like every other selector.
* ``no_overlay()`` switches off this context's overlays (probes, tweaks,
  objects' effects) inside its block; ``global_probe`` rules, which every
  thread sees, stay on.
* ``autotool(selector)`` makes the functions a selector names behave as if
  decorated with ``@tooled`` (found by ``*`` and by name anywhere);
  ``autotool(selector, undo=True)`` forgets them again (only those it tooled:
  a function the user decorated stays decorated). Their code is swapped
  only while an overlay needs it, as for any function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import overlay as _engine
from .lookup import NotFound, resolve, unregister_tooled
from .overlay import BaseOverlay, Immediate, Total, caller_env
from .selector import Scope, SelectorError, select
from .tooling import tooled
from .transform import TransformError

__all__ = ["Overlay", "autotool", "no_overlay"]


def _selector(selector: Any, env: Mapping) -> Scope:
    if isinstance(selector, Scope):
        return selector if selector.env is not None else select(selector, env=env)
    return select(selector, env=env)


class _ClassOrInstance:
    """A method that, called on the class, runs on a fresh instance (``Overlay.tweaking``)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: type) -> Callable:
        return self.fn.__get__(obj if obj is not None else owner(), owner)


class Overlay(BaseOverlay):
    """A mutable set of handlers (``tweak``, ``rewrite``, ``on``, ``tap``) used with ``with``."""

    def register(
        self,
        selector: Any,
        fn: Callable[[dict], Any],
        full: bool = False,
        all: bool = False,  # noqa: A002 (1.4's keyword)
        immediate: bool = True,
    ) -> None:
        """Call ``fn(captures)`` on each match.

        ``captures`` maps names to plain values; with ``all``, to lists of values;
        with ``full``, to capture objects (``.name``, ``.value``, ``.values``).
        ``immediate=False`` waits until each match is complete (pooled captures).
        """
        sel = _selector(selector, caller_env(1))

        def call(captures: dict) -> None:
            if full:
                fn(captures)
            elif all:
                fn({k: c.values for k, c in captures.items()})
            else:
                fn({k: c.value for k, c in captures.items()})

        self.add(Immediate(sel, trigger=call) if immediate else Total(sel, call))

    def on(self, selector: Any, **options: Any) -> Callable[[Callable], Callable]:
        """Decorator form of ``register`` (same options)."""
        sel = _selector(selector, caller_env(1))

        def deco(fn: Callable) -> Callable:
            self.register(sel, fn, **options)
            return fn

        return deco

    def tap(self, selector: Any, dest: list | None = None, **options: Any) -> list:
        """Append each match's captures to ``dest`` (a new list if None) and return it."""
        dest = [] if dest is None else dest
        self.register(_selector(selector, caller_env(1)), dest.append, **options)
        return dest

    def tweak(self, values: Mapping) -> Overlay:
        """Replace the focus of each selector by its value; returns this overlay."""
        env = caller_env(1)
        self.add(*(Immediate(_selector(s, env), intercept=_constant(v)) for s, v in values.items()))
        return self

    def rewrite(self, rewriters: Mapping, full: bool = False) -> Overlay:
        """Replace the focus of each selector by ``fn(captures)``; returns this overlay."""
        env = caller_env(1)
        for s, fn in rewriters.items():
            if not callable(fn):
                raise TypeError(f"rewrite needs functions; got {fn!r} for {s!r} (use tweak)")
            self.add(Immediate(_selector(s, env), intercept=_rewriter(fn, full)))
        return self

    @_ClassOrInstance
    def tweaking(self, values: Mapping) -> Overlay:
        """A copy of this overlay that also tweaks (``with Overlay.tweaking({...}):``)."""
        env = caller_env(1)
        return self.fork().tweak({_selector(s, env): v for s, v in values.items()})

    @_ClassOrInstance
    def rewriting(self, rewriters: Mapping, full: bool = False) -> Overlay:
        """A copy of this overlay that also rewrites (usable on the class)."""
        env = caller_env(1)
        return self.fork().rewrite({_selector(s, env): f for s, f in rewriters.items()}, full)

    @_ClassOrInstance
    @contextmanager
    def tapping(self, selector: Any, dest: list | None = None, **options: Any) -> Iterator[list]:
        """Context manager: a copy of this overlay that taps ``selector``; yields the list."""
        ol = self.fork()
        dest = ol.tap(_selector(selector, caller_env(2)), dest, **options)
        with ol:
            yield dest


def _constant(value: Any) -> Callable[[dict], Any]:
    return lambda captures: value


def _rewriter(fn: Callable, full: bool) -> Callable[[dict], Any]:
    if full:
        return fn
    return lambda captures: fn({k: c.value for k, c in captures.items()})


@contextmanager
def no_overlay() -> Iterator[None]:
    """Run a block as if no overlay were active in this context (global probes stay)."""
    engine = _engine.ENGINE
    plan = engine.plan.set(_engine.Plan((), engine.epoch))
    frame = engine.frame.set(None)
    try:
        yield
    finally:
        engine.frame.reset(frame)
        engine.plan.reset(plan)


def autotool(selector: Any, undo: bool = False) -> Scope:
    """Treat every function ``selector`` names as ``@tooled`` (or no longer, with ``undo``)."""
    sel = _selector(selector, caller_env(1))
    for node in sel.walk():
        if not isinstance(node, Scope) or node.fn is None:
            continue
        try:
            states = resolve(node.fn, sel.env)
        except (NotFound, TransformError) as exc:
            text = str(sel)
            raise SelectorError(
                text, max(text.find(node.fn), 0), f"cannot find function '{node.fn}': {exc}"
            ) from None
        for st in states:
            fn = st.function
            if undo:
                if _autotooled.pop(st.fid, None) is not None:
                    unregister_tooled(st)
                    if fn is not None:
                        vars(fn).pop("__ptera_info__", None)
            elif fn is not None and not st.tooled:
                tooled(fn)
                _autotooled[st.fid] = st
    return sel


# Functions that autotool decorated (undo leaves the user's own @tooled alone).
_autotooled: dict[int, object] = {}
