"""Probes: streams of captured values, on the ``giving`` library.

``probing(selector)`` is a context manager that yields a giving ``ObservableProxy``
of dicts, one per match; every giving operator works on it. ``global_probe``
does the same in every thread until ``deactivate()``.

Decisions:

* A plugin (``Grad``) may stand in for a selector; its matches are streamed.
* A selector with a focus gives an immediate probe (one dict when the focus is
  set); one without gives a total probe (one dict per call of the outermost
  function). ``probe_type`` forces either.
* A selector with both ``!`` and ``!!`` in an immediate probe emits giving's
  ``$wrap`` begin/end markers named after the primary focus (as in 1.4), so
  ``probe.wmap(fn)``, ``probe.wrap(name, fn)`` and ``kwrap`` can bracket the
  region. A secondary focus without a primary one is a ``ValueError``.
* ``override()`` with no argument uses each value of the stream it is called on
  (``probe["y"].map(f).override()``).
* ``override`` on an overridable probe replaces the focus value with the value
  (or ``fn(item)``) of the last override subscriber that saw the emission.
* A probe that ends with no value while its functions ran (instrumented) in
  other threads or tasks warns once a process: the thread pool mistake.
* ``subscribe(fn)`` (or ``on_next=``, or an observer) on the probe itself, with no
  operator in between, keeps ``fn`` in the probe's own tuple of observers instead of
  a reactivex ``AutoDetachObserver``. While every observer is such a plain one, the
  engine calls the probe's *feed*: nothing, the one function itself (no wrapper at
  all after the first value), or a loop over the observers. Any operator chain
  (``.map``, ``["x"]``, ``.where``...) subscribes through reactivex as before and
  switches the feed to the loop over every observer, in subscription order. Values,
  order, exceptions (raised into the probed code, the subscriber stays subscribed)
  and completion (``on_completed`` of every observer when the probe ends) are the
  same on both paths; tests run each shape both ways.
* The observers are a tuple replaced on each change, so a value being delivered
  goes to the observers of when its delivery began: an observer added meanwhile
  starts with the next value, one disposed meanwhile gets no more (giving appended to
  a list in place, so an observer added by a subscriber also got the current value).
* A probe ends (deactivates) even when an observer's ``on_completed`` raises; the
  exception still propagates, and the observers after it are not completed.
"""

from __future__ import annotations

import atexit
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from giving import SourceProxy
from giving import operators as giving_ops
from giving.gvn import DisposableWrapper
from reactivex import abc as rx_abc
from reactivex import create as rx_create

from .capture import Rule
from .lookup import state_by_fid
from .match import compile_selector
from .overlay import activate, caller_env, check_owner, deactivate, missed_calls
from .plugin import is_plugin
from .selector import Scope, SelectorError, check_env, select, split_selectors
from .transform import ABSENT

__all__ = ["OverridableProbe", "Probe", "global_probe", "probing"]


def _selectors(selectors: tuple) -> list:
    out = []
    for s in selectors:
        if is_plugin(s):
            out.append(s)  # a plugin such as Grad
        elif isinstance(s, str):
            parsed = _parsed.get(s)
            if parsed is None:
                if len(_parsed) > 1024:
                    _parsed.clear()
                parsed = _parsed[s] = [select(text) for text in split_selectors(s)]
            out.extend(parsed)
        else:
            out.append(select(s))
    return out


_parsed: dict[str, list[Scope]] = {}  # selector text -> its selectors


class _Pool:
    """Idle rules by (compiled selector, options), so a probe entered in a loop reuses
    its rule and the plans built with it (the costly part of an activation).

    A rule goes back only if nothing but its probe and its own plans refers to it
    once the probe has ended: no live call holds an activation of it (a suspended
    generator), and no other context holds one of its plans (a task or thread that
    copied the context). Otherwise such a call could report into the next probe.
    """

    def __init__(self):
        self.idle: dict[tuple, list[Rule]] = {}

    @staticmethod
    def refs(rule: Rule) -> int:
        return sys.getrefcount(rule)

    @staticmethod
    def private(rule: Rule) -> bool:
        """Whether no context or live call holds the rule's plans (see above)."""
        # A plan is referenced by the rule's cache, the loop and getrefcount only;
        # a shared frame of stateless matches by its plan and getrefcount.
        return all(
            sys.getrefcount(plan) <= 3
            and all(
                fp.shared_frame is None or sys.getrefcount(fp.shared_frame) <= 2
                for fp in plan.fns.values()
            )
            for plan in rule.plans.values()
        )

    @staticmethod
    def key(comp: Any, immediate: bool, raw: bool, wrap: str | None) -> tuple:
        return (id(comp), immediate, raw, wrap)

    def take(self, comp: Any, emit: Callable, immediate: bool, raw: bool, wrap: str | None) -> Rule:
        rules = self.idle.get(self.key(comp, immediate, raw, wrap))
        while rules:
            try:
                rule = rules.pop()
            except IndexError:  # another thread took the last one
                break
            if rule.compiled is comp:
                rule.rebind(emit)
                return rule
        return Rule(comp, emit, immediate=immediate, raw=raw, wrap=wrap)

    def give(self, rule: Rule) -> None:
        rule.rebind(_dead)
        if len(self.idle) > 256:
            self.idle.clear()
        key = self.key(rule.compiled, rule.immediate, rule.raw, rule.wrap)
        rules = self.idle.setdefault(key, [])
        if len(rules) < 4:
            rules.append(rule)


def _identity(item: Any) -> Any:
    return item


def _dead(data: dict) -> Any:
    return ABSENT


_pool = _Pool()


def _wrap_name(sel: Scope) -> str | None:
    # Named after the primary focus, as in 1.4: `wrap("#enter", ...)`, `kwrap("n", ...)`.
    if sel.focus is not None and sel.secondary is not None:
        return sel.focus.out_name
    return None


def _check_focus_pattern(sel: Scope) -> None:
    if sel.secondary is not None and sel.focus is None:
        raise SelectorError(
            str(sel),
            0,
            "unsupported focus pattern: a secondary focus '!!' needs a primary focus '!'"
            " (the start of the region that ends at '!!')",
        )


def _noop(*args: Any) -> None:
    return None


class _Direct:
    """An observer that ``subscribe`` on a probe itself makes: plain calls, no reactivex.

    Behaves as reactivex's ``AutoDetachObserver`` does for a probe's observers:
    ``on_next`` is ignored once stopped; ``on_error``/``on_completed`` stop it, then
    detach it; an exception in ``on_next`` propagates and leaves it subscribed.
    It is also the subscription's disposable.
    """

    __slots__ = ("fn", "error", "completed", "is_stopped", "probe")

    def __init__(self, probe: Probe, fn: Callable, error: Callable | None, completed: Callable):
        self.probe = probe
        self.fn = fn
        self.error = error
        self.completed = completed
        self.is_stopped = False

    def on_next(self, value: Any) -> None:
        if not self.is_stopped:
            self.fn(value)

    def on_error(self, error: BaseException) -> None:
        if self.is_stopped:
            return
        self.is_stopped = True
        try:
            if self.error is None:
                raise error
            self.error(error)
        finally:
            self.probe._detach(self)

    def on_completed(self) -> None:
        if self.is_stopped:
            return
        self.is_stopped = True
        try:
            self.completed()
        finally:
            self.probe._detach(self)

    def dispose(self) -> None:
        self.is_stopped = True
        self.probe._detach(self)

    def __enter__(self) -> _Direct:
        return self

    def __exit__(self, *exc) -> None:
        self.dispose()


class _Detach:
    """The disposable of a reactivex observer of a probe: takes it out of the feed."""

    __slots__ = ("probe", "observer")

    def __init__(self, probe: Probe, observer: Any):
        self.probe = probe
        self.observer = observer

    def dispose(self) -> None:
        self.probe._detach(self.observer)


def _callable_or_none(what: str, fn: Any) -> None:
    if fn is not None and not callable(fn):
        raise TypeError(f"subscribe: {what} must be a function, not {fn!r:.60}")


class Probe(SourceProxy):
    """A stream of the values that selectors capture (a giving ``SourceProxy``)."""

    def __init__(
        self,
        *selectors: str | Scope,
        raw: bool = False,
        probe_type: str | None = None,
        env: dict | None = None,
        _obs=None,
        _root=None,
    ):
        super().__init__(_obs=_obs, _root=_root)
        if _obs is not None:
            return
        # Our own source instead of giving's: observers in a tuple we can feed from.
        self._obs = rx_create(self._attach)
        self._observers: tuple = ()
        self._lock = threading.Lock()
        self._closed = False
        self._emitted = False
        self._feed: Callable[[Any], Any] = self._push_none
        self._pooled: list[Rule] = []
        if not selectors:
            raise TypeError("probing() needs at least one selector")
        if probe_type not in (None, "immediate", "total"):
            raise TypeError(f"probe_type must be 'immediate', 'total' or None, not {probe_type!r}")
        check_env(env)
        # caller_env skips ptera's own frames (probing, subclasses): one level up is the user.
        self._env = env if env is not None else caller_env(1)
        self._selectors = _selectors(selectors)
        self._raw = raw
        self._rules = tuple(
            rule
            for sel in self._selectors
            for rule in (self._plugin(sel) if is_plugin(sel) else (self._rule(sel, probe_type),))
        )
        self._activation = None
        self._used = False

    def _rule(self, sel: Scope, probe_type: str | None) -> Rule:
        _check_focus_pattern(sel)
        comp = compile_selector(sel, sel.env if sel.env is not None else self._env)
        immediate = probe_type == "immediate" or (probe_type is None and sel.focus is not None)
        if immediate and sel.focus is None:
            raise SelectorError(
                sel, 0, "an immediate probe needs a focus: mark a variable with '!'"
            )
        rule = _pool.take(
            comp,
            # Nothing reads what a non-intercepting rule's emit returns: feed directly.
            self._feed,
            immediate=immediate,
            raw=self._raw,
            wrap=_wrap_name(sel) if immediate else None,
        )
        self._pooled.append(rule)
        return rule

    def _plugin(self, plugin) -> tuple[Rule, ...]:
        raw = self._raw

        def emit(caps: dict) -> Any:
            self._feed(caps if raw else {k: c.value for k, c in caps.items()})
            return ABSENT

        return tuple(plugin.__ptera_rules__(emit, self._env))

    def _enter(self, glob: bool = False):
        if self._used:
            raise RuntimeError("a probe can be activated only once; make a new one")
        self._used = True
        rules = self._rules
        plans = rules[0].plans if len(rules) == 1 else None
        self._activation = activate(rules, glob=glob, plans=plans)
        self._emitted = False
        with self._lock:
            self._refeed()  # a lone subscriber's feed notes the first value again
        self._fids = {fid for r in rules for fid in r.compiled.templates}
        self._missed = None if glob else missed_calls(self._fids)
        # Global probes never pool: other threads may be inside their functions.
        self._refs = None if glob else [_Pool.refs(r) for r in self._pooled]
        return self

    def _exit(self):
        if self._activation is not None:
            deactivate(self._activation)  # from another context: raises, the probe stays on
            self._activation = None
            if self._missed is not None and not self._emitted:
                _warn_other_threads(self, self._missed)
            pooled, refs, self._pooled = self._pooled, self._refs, []
            if refs is not None:
                now = [_Pool.refs(r) for r in pooled]
                for rule, before, after in zip(pooled, refs, now):
                    # More references now than when activated: a live call holds it.
                    if before == after and _Pool.private(rule):
                        _pool.give(rule)

    def __exit__(self, *exc) -> None:
        root = self._root
        if root is not self:
            root.__exit__(*exc)
            return
        if self._activation is not None:
            # From another context: fail before the subscribers are completed.
            check_owner(self._activation)
        with self._lock:
            self._closed = True  # values still reported (a suspended call) take the loop
            self._refeed()
            observers, self._observers = self._observers, ()
        try:
            for obs in observers:
                obs.on_completed()
        finally:
            self._exit()

    # Feeding: the engine calls `self._feed(data)` (the selector rules' emit is the
    # feed itself, rebound whenever the observers change).

    def subscribe(self, on_next=None, on_error=None, on_completed=None, **kwargs):
        """Call ``on_next`` with each value (giving's ``subscribe``); on the probe
        itself, a plain call with no reactivex in between."""
        if self._root is not self or kwargs:  # an operator chain, or a scheduler
            return super().subscribe(on_next, on_error, on_completed, **kwargs)
        if isinstance(on_next, rx_abc.ObserverBase) or callable(getattr(on_next, "on_next", None)):
            on_next, on_error, on_completed = (
                on_next.on_next,
                on_next.on_error,
                on_next.on_completed,
            )
        for what, fn in (
            ("on_next", on_next),
            ("on_error", on_error),
            ("on_completed", on_completed),
        ):
            _callable_or_none(what, fn)
        direct = _Direct(self, on_next or _noop, on_error, on_completed or _noop)
        self._add(direct)
        return DisposableWrapper(self, direct)

    def _attach(self, observer: Any, scheduler: Any = None) -> _Detach:
        # The source's subscribe function: a reactivex observer (an operator chain).
        self._add(observer)
        return _Detach(self, observer)

    def _add(self, observer: Any) -> None:
        with self._lock:
            self._observers = (*self._observers, observer)
            self._refeed()

    def _detach(self, observer: Any) -> None:
        with self._lock:
            self._observers = tuple(o for o in self._observers if o is not observer)
            self._refeed()

    def _refeed(self) -> None:
        """Choose the cheapest feed for the current observers and rebind the rules."""
        observers = self._observers
        if self._closed or any(type(o) is not _Direct for o in observers):
            feed = self._push_all
        elif not observers:
            feed = self._push_none
        elif len(observers) == 1:
            feed = self._first(observers[0].fn)
        else:
            feed = self._push_all
        self._set_feed(feed)

    def _set_feed(self, feed: Callable[[Any], Any]) -> None:
        self._feed = feed
        for rule in self._pooled:  # emptied when the probe ends: then another's
            rule.rebind(feed)

    def _first(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        # Notes that a value came (see _warn_other_threads), then hands over to fn.
        def first(data: Any) -> Any:
            self._emitted = True
            if self._feed is first:
                with self._lock:
                    if self._feed is first:
                        self._set_feed(fn)
            fn(data)

        return first

    def _push_none(self, data: Any) -> None:
        self._emitted = True

    def _push_all(self, data: Any) -> None:
        self._emitted = True
        for obs in self._observers:
            obs.on_next(data)

    def _push(self, data: Any) -> None:
        self._feed(data)

    def activate(self) -> Probe:
        """Activate this probe in the current context (until ``deactivate``)."""
        return self.__enter__()

    def deactivate(self) -> None:
        """Stop this probe; every probed function runs its original code again."""
        self._root.__exit__(None, None, None)

    def where(self, /, *keys, **conditions):
        """giving's ``where``; ``self`` is a condition like any other capture name
        (``probing("Linear(self) > input").where(self=net[2])``)."""
        return self.pipe(giving_ops.where(*keys, **conditions))

    # giving's failure helpers should point past ptera's and reactivex's frames.
    def fail(self, *args, skip=(), **kwargs):
        return super().fail(*args, skip=["ptera.*", "reactivex.*", "giving.*", *skip], **kwargs)


def _not_overridable(self, *args: Any, **kwargs: Any) -> Any:
    """Only an overridable probe overrides (its rules intercept the values)."""
    raise TypeError(
        "this probe was made without overridable=True: override and koverride need"
        " probing(..., overridable=True), as in ptera 1.4"
    )


Probe.override = Probe.koverride = _not_overridable


class OverridableProbe(Probe):
    """A probe whose subscribers can replace the focus value (``override``)."""

    def __init__(self, *selectors, _obs=None, _root=None, **kwargs):
        if _obs is None:
            self._cell = None
        super().__init__(*selectors, _obs=_obs, _root=_root, **kwargs)

    def _rule(self, sel: Scope, probe_type: str | None) -> Rule:
        _check_focus_pattern(sel)
        if probe_type == "total" or sel.focus is None:
            raise SelectorError(
                sel, 0, "an overridable probe needs a focus: mark a variable with '!'"
            )
        comp = compile_selector(sel, sel.env if sel.env is not None else self._env)
        return Rule(comp, self._emit, immediate=True, raw=self._raw, intercepts=True)

    def _emit(self, data: dict) -> Any:
        root = self._root
        cell, root._cell = root._cell, [ABSENT]
        try:
            self._push(data)
            return root._cell[0]
        finally:
            root._cell = cell

    def override(self, setter: Any = _identity) -> Any:
        """Replace the focus value with ``setter(item)``, or with ``setter`` if not callable.

        With no argument, each item of this stream is the new value
        (``probe["y"].map(f).override()``).
        """
        root = self._root

        def change(item):
            root._cell[0] = setter(item) if callable(setter) else setter

        return self.subscribe(change)

    def koverride(self, setter: Callable) -> Any:
        """Replace the focus value with ``setter(**item)``."""
        if not callable(setter):
            raise TypeError(f"koverride needs a function of the captures, not {setter!r:.60}")
        root = self._root

        def change(item):
            root._cell[0] = setter(**item)

        return self.subscribe(change)


def _warn_other_threads(probe: Probe, before: dict[int, int]) -> None:
    """Warn (once a process) that a probe saw nothing while its functions ran elsewhere."""
    if _warned:
        return
    now = missed_calls(before)
    ran = [fid for fid, n in now.items() if n > before[fid]]
    if ran:
        _warned.append(True)
        names = ", ".join(sorted({state_by_fid(fid).qualname for fid in ran}))
        selectors = "; ".join(str(s) for s in probe._selectors)
        warnings.warn(
            f"probe {selectors!r} ended with no value, but {names} ran in another thread or"
            " task while it was active: a probe sees only its own thread or task (a thread"
            " pool's workers are other threads); use global_probe(...) to see every thread",
            RuntimeWarning,
            stacklevel=4,
        )


_warned: list = []


def probing(
    *selectors: str | Scope,
    raw: bool = False,
    probe_type: str | None = None,
    env: dict | None = None,
    overridable: bool = False,
) -> Probe:
    """A probe on ``selectors``, active inside a ``with`` block.

    >>> with probing("f > y") as probe:   # doctest: +SKIP
    ...     probe["y"].print()
    ...     f(3)
    """
    env = env if env is not None else caller_env(1)
    cls = OverridableProbe if overridable else Probe
    return cls(*selectors, raw=raw, probe_type=probe_type, env=env)


def global_probe(
    *selectors: str | Scope,
    raw: bool = False,
    probe_type: str | None = None,
    env: dict | None = None,
) -> Probe:
    """A probe active in every thread at once, until its ``deactivate()`` (or the
    interpreter's exit, which completes it: ``max().print()`` then prints, as in 1.4)."""
    env = env if env is not None else caller_env(1)
    probe = Probe(*selectors, raw=raw, probe_type=probe_type, env=env)
    probe._enter(glob=True)
    probe.__class__ = _GlobalProbe
    if not _open_globals:
        atexit.register(_complete_globals)
    _open_globals[id(probe)] = probe
    return probe


_open_globals: dict[int, Probe] = {}


def _complete_globals() -> None:
    for key in list(_open_globals):  # in the order they were made
        probe = _open_globals.pop(key, None)
        if probe is not None and probe._activation is not None:
            probe.deactivate()


class _GlobalProbe(Probe):
    def __enter__(self):
        # Already active; `with global_probe(...)` just scopes its lifetime.
        return self

    def _exit(self):
        _open_globals.pop(id(self), None)
        super()._exit()
