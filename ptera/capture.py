"""What one match holds, and when it fires.

A ``Rule`` is a compiled selector plus what to do with its results. When a live
call matches one of the rule's templates, a ``Match`` holds that
call's captures. Each reported variable goes through *handlers*, small functions
built once per (template, variable, rule): the common case (an immediate focus
with nothing else to check) is one closure that builds the result dict and
emits it.

Immediate rules emit when the focus is set, with the values every other capture
has then (outer scopes and the same scope). Total rules pool captures until the
focus is set again or its scope ends (core.md section 3).

Decisions:

* A collecting rule (a plugin's, or a total rule without a focus) whose
  templates are roots plus plain captures one ``>>`` below a root is *flat*,
  decided once when the ``Rule`` is built (``_is_flat``): a root call opens one
  list (``FlatRoot``), each report is an ``append`` of ``(capture, name, value)``,
  and the root's exit groups the list into one ``Capture`` per name. Keys,
  filters, ``#exit``/``#error``, deeper nesting and focuses take the general
  ``Match`` path; ``tests/test_capture_flat.py`` runs a corpus both ways.
* A total rule's handlers depend on its templates only, so rules of one compiled
  selector share them (one set for flat rules, one for the others).
* ``Capture`` is a ``dataclass(slots=True)``: built and read as fast as the
  hand-written class it replaces (~190 ns a construction either way), with its
  short ``repr`` kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from weakref import WeakKeyDictionary

from .match import Compiled, Same, Satisfies, Template, VarSpec
from .selector import NOVALUE
from .tags import annotation_matches
from .transform import ABSENT


@dataclass(slots=True, repr=False)
class Capture:
    """A captured variable: its key in results (``capture``), the real names and the values.

    ``name`` is the real name of the variable when there is one (``$v`` may stand
    for several), else the key, as in 1.4.
    """

    capture: str
    names: list
    values: list

    @property
    def name(self) -> str:
        """The variable's real name if it is unique, else the capture key."""
        names = self.names
        if names and all(n == names[0] for n in names):
            return names[0]
        return self.capture

    @property
    def value(self) -> Any:
        """The single value; an error if the capture has several (use ``values``)."""
        if len(self.values) != 1:
            raise ValueError(
                f"capture '{self.capture}' has {len(self.values)} values {self.values!r};"
                " use .values (or map_all / raw=True)"
            )
        return self.values[0]

    def __repr__(self) -> str:
        return f"Capture({self.capture!r}, {self.names!r}, {self.values!r})"


def filter_eq(a: Any, b: Any) -> bool:
    """``a == b`` for a selector's ``=literal`` filter (``True`` is not ``1``); an
    identity (``Same``) or ``~`` function (``Satisfies``) filter decides for itself."""
    if isinstance(b, (Same, Satisfies)):
        return b.matches(a)
    if isinstance(b, bool) or b is None:
        return a is b
    if isinstance(a, bool):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


class Rule:
    """A compiled selector and what to do with its matches.

    ``emit(data)`` receives a dict of captures (plain values, or ``Capture``
    objects when ``raw``); for an immediate rule that ``intercepts``, its return
    value (unless ``ABSENT``) replaces the focus value.
    """

    __slots__ = (
        "compiled",
        "immediate",
        "raw",
        "emit",
        "intercepts",
        "wrap",
        "handlers",
        "interest",
        "plans",
        "cells",
        "offpath",
        "sides",
        "flat",
    )

    def __init__(
        self,
        compiled: Compiled,
        emit: Callable[[dict], Any],
        *,
        immediate: bool,
        raw: bool = False,
        intercepts: bool = False,
        wrap: str | None = None,
    ):
        self.compiled = compiled
        self.emit = emit
        self.immediate = immediate
        self.raw = raw
        self.intercepts = intercepts
        # With a name, the `!`/`!!` pair emits giving's `$wrap` begin/end markers.
        self.wrap = wrap
        self.interest = {st: frozenset(names) for st, names in compiled.interest.items()}
        self.offpath = frozenset() if immediate else _offpath(compiled)
        # An immediate rule's side branches (`side` in `main(side(y), g(!a))`): what
        # their calls capture is kept by the nearest call on the focus's path, so a
        # result gets it after the side call has returned (1.4).
        self.sides = _offpath(compiled, below=True) if immediate else frozenset()
        self.plans: dict = {}  # plans built with this rule (see overlay.activate)
        self.cells: list = []  # closure cells of handlers that call `emit` directly
        # A flat rule collects into one list per root call (see FlatRoot).
        self.flat = _is_flat(compiled, immediate, intercepts, wrap)
        if not immediate:
            # A total rule's handlers depend on its templates only: build them once.
            kind = "flat" if self.flat else "total"
            shared = compiled.total_handlers.get(kind)
            if shared is None:
                make = _flat_handler if self.flat else _handler
                shared = compiled.total_handlers[kind] = self._handlers(make)
            self.handlers = shared
            return
        self.handlers = self._handlers(_handler)

    def _handlers(self, make: Callable) -> dict[int, dict[str, tuple]]:
        """Per template: name -> handlers of its plain assignments, and ``name + KEYED``
        -> handlers of its keyed ones (``h[1] as h``): a plain ``d`` is not told of
        ``d["k"] = v`` (1.4), which would report ``v`` as ``d``."""
        out = {}
        for temps in self.compiled.templates.values():
            for t in temps:
                table: dict[str, list] = {}
                for name, specs in t.vars.items():
                    for spec in specs:
                        keyed = spec.key is not NOVALUE or spec.key_out is not None
                        slot = name + KEYED if keyed else name
                        table.setdefault(slot, []).append(make(spec, t, self))
                out[id(t)] = {name: tuple(hs) for name, hs in table.items()}
        return out

    def rebind(self, emit: Callable[[dict], Any]) -> None:
        """Send this rule's matches to ``emit`` from now on (a pooled rule's new owner)."""
        self.emit = emit
        for cell in self.cells:
            cell.cell_contents = emit


KEYED = "[]"  # suffix of the handler entries that keyed assignments (`h[k] = v`) reach


class Match:
    """One live call matched by one template of one rule: the captures of that call."""

    __slots__ = (
        "template",
        "rule",
        "parent",
        "captures",
        "names",
        "failed",
        "pending",
        "holder",
        "deferred",
    )

    def __init__(self, template: Template, rule: Rule, parent: Match | None):
        self.template = template
        self.rule = rule
        self.parent = parent
        self.captures: dict = {}
        self.names: dict = {}
        self.failed = template.filters  # equality filters not yet satisfied
        self.pending = {} if template.collects else None
        self.deferred: list | None = None  # a root's results waiting for its exit (_offpath)
        holder = None
        if not rule.immediate:
            a = self
            while a is not None and not a.template.holder:
                a = a.parent
            # None when this match holds itself: no reference cycle to keep
            # tensors alive until the cyclic collector runs.
            holder = a if a is not self else None
        self.holder = holder

    def check(self, spec: VarSpec, value: Any, ok: bool | None = None) -> None:
        """Count whether ``value`` passes ``spec``'s filter (``ok``: already known)."""
        if ok is None:
            ok = filter_eq(value, spec.value)
        key = ("#filter", spec.out)
        seen = self.names.get(key)
        if seen is None:
            self.failed -= ok
        elif seen != ok:
            self.failed += -1 if ok else 1
        self.names[key] = ok

    def chain(self) -> list[Match] | None:
        """This match and its ancestors, outermost first; None if a filter fails."""
        out = []
        a = self
        while a is not None:
            if a.failed:
                return None
            out.append(a)
            a = a.parent
        out.reverse()
        return out

    def set_key(self, out: str, key: Any) -> None:
        if self.rule.immediate:
            self.captures[out] = key
            self.names[out] = "#key"
        else:
            self.add(out, ("#key", key))

    # -- total rules ----------------------------------------------------
    def add(self, out: str | None, entry: tuple) -> None:
        if out is None:
            return
        self.captures.setdefault(out, []).append(entry)
        h = self.holder
        if h is None and self.template.holder:
            h = self
        if h is not None and h.pending is not None:
            h.pending.setdefault(out, []).append(entry)
        elif self.template.node in self.rule.offpath:
            self.root().pool().setdefault(out, []).append(entry)

    def root(self) -> Match:
        a = self
        while a.parent is not None:
            a = a.parent
        return a

    def pool(self) -> dict:
        """A root's captures from branches beside the focus (see ``_offpath``)."""
        if self.deferred is None:
            self.deferred = [{}]
        return self.deferred[0]

    def release(self) -> None:
        """At a root's exit: emit the deferred results, each with the pooled captures."""
        deferred, self.deferred = self.deferred, None
        pool = deferred[0]
        for data in deferred[1:]:
            for out, entries in pool.items():
                data.setdefault(out, []).extend(entries)
            self._emit(data)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if not self._holds(pending):
            return
        if self.rule.offpath:
            root = self.root()
            root.pool()
            root.deferred.append(pending)
            return
        self._emit(pending)

    def _holds(self, pending: dict) -> bool:
        """Whether a total result passes the filters of its call and the calls around
        it: every value it holds for a filtered variable (as 1.4), so that a focus
        is never paired with another iteration's value (``loop(j=2, !y)``)."""
        a = self
        while a is not None:
            t = a.template
            if t.filters:
                for specs in t.vars.values():
                    for spec in specs:
                        if spec.value is NOVALUE or spec.focus == 1:
                            continue  # (the focus's own filter was checked as it was set)
                        entries = pending.get(spec.out)
                        if not entries or not all(filter_eq(v, spec.value) for _, v in entries):
                            return False
            a = a.parent
        return True

    def _emit(self, pending: dict) -> None:
        data = {
            out: Capture(out, [n for n, _ in lst], [v for _, v in lst])
            for out, lst in pending.items()
        }
        if not self.rule.raw:
            data = {out: cap.value for out, cap in data.items()}
        self.rule.emit(data)


class _Sink(list):
    """A flat root's list of ``(out, name, value)`` reports, passed to the handlers of
    the calls below the root in place of a ``Match`` (the class attributes answer the
    engine's questions about matches: no rule to nest under, nothing to flush)."""

    __slots__ = ()
    rule = None
    parent = None
    pending = None
    deferred = None


class FlatRoot:
    """One root call of a flat rule: every report of the call, and of the calls below
    it, is one ``append`` to ``sink``; the root's exit groups them into captures.

    A rule is flat (``Rule.flat``, decided when it is built) when it collects (a
    plugin's rule, or a total rule without a focus) and its templates are roots plus
    plain captures one ``>>`` below a root: no keys, no filters, no ``#exit`` or
    ``#error``, no nesting deeper than that. Everything else takes ``Match``.
    """

    __slots__ = ("template", "rule", "sink", "pending", "child")
    parent = None
    deferred = None

    def __init__(self, template: Template, rule: Rule, parent: None = None):
        self.template, self.rule = template, rule
        self.sink = self.pending = _Sink()
        self.child: tuple | None = None  # (handlers, frame) of the calls below, reused

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        data: dict = {}
        for out, name, value in pending:
            cap = data.get(out)
            if cap is None:
                data[out] = Capture(out, [name], [value])
            else:
                cap.names.append(name)
                cap.values.append(value)
        if not self.rule.raw:
            data = {out: cap.value for out, cap in data.items()}
        self.rule.emit(data)


def _is_flat(compiled: Compiled, immediate: bool, intercepts: bool, wrap: str | None) -> bool:
    """Whether a rule can collect into flat lists (see ``FlatRoot``)."""
    if immediate or intercepts or wrap is not None or not compiled.templates:
        return False
    parents = compiled.parents
    for temps in compiled.templates.values():
        for t in temps:
            if t.filters or t.key is not NOVALUE or t.key_out is not None or t.exits:
                return False
            if t.parent is None:
                if not t.collects:
                    return False
            elif not t.deep or t.holder or t.push or parents.get(t.parent, -1) is not None:
                return False
            for specs in t.vars.values():
                for spec in specs:
                    if (
                        spec.focus
                        or spec.value is not NOVALUE
                        or spec.key is not NOVALUE
                        or spec.key_out is not None
                    ):
                        return False
    return True


def _flat_handler(spec: VarSpec, t: Template, rule: Rule) -> Callable:
    """Handle one reported variable of a flat rule: append it to the root's list."""
    if spec.isa is not NOVALUE:
        return _checked(spec.isa, _flat_handler(replace(spec, isa=NOVALUE), t, rule))
    out = spec.out
    if out is None:
        return _pass
    if t.parent is None:

        def at_root(root, name, value, key):
            if value is not ABSENT:
                root.sink.append((out, name, value))
            return value

        return at_root

    def below(sink, name, value, key):
        if value is not ABSENT:
            sink.append((out, name, value))
        return value

    return below


def _pass(match, name, value, key):
    return value


def _offpath(compiled: Compiled, below: bool = False) -> frozenset:
    """Nodes of a total selector beside the focus's path, such as ``nager`` in
    ``canard(coincoin(!x), nager(a))``: their captures are pooled in the root call
    and every result of that call, emitted when it ends, gets all of them (1.4).
    With ``below``, also the nodes below the focus's (``f`` in ``h(!w) > f(y)``)."""
    parents = compiled.parents
    focus = next(
        (
            t.node
            for temps in compiled.templates.values()
            for t in temps
            if any(s.focus == 1 for specs in t.vars.values() for s in specs)
        ),
        None,
    )
    if focus is None:
        return frozenset()

    def line(n):
        while n is not None:
            yield n
            n = parents.get(n)

    above = set(line(focus))
    if below:
        return frozenset(n for n in parents if n not in above)
    return frozenset(n for n in parents if n not in above and focus not in set(line(n)))


def _handler(spec: VarSpec, t: Template, rule: Rule) -> Callable:
    """The function that handles one reported variable for ``spec``."""
    if spec.isa is not NOVALUE:
        return _checked(spec.isa, _handler(replace(spec, isa=NOVALUE), t, rule))
    if not rule.immediate:
        return lambda match, name, value, key: _total(match, spec, name, value, key)
    fires = spec.focus == 1 or (spec.focus == 2 and rule.wrap is not None)
    simple = (
        t.parent is None
        and not t.filters
        and spec.key is NOVALUE
        and spec.key_out is None
        and not rule.raw
        and rule.wrap is None
    )
    if fires and simple:
        focus = _fast_focus(spec.out, rule.emit, rule.intercepts, keep=not t.simple)
        rule.cells.append(focus.__closure__[focus.__code__.co_freevars.index("emit")])
        return focus
    if fires:
        return lambda match, name, value, key: _fire(match, spec, name, value, key)
    if t.node in rule.sides and spec.out is not None:
        return lambda match, name, value, key: _beside(match, spec, name, value, key)
    if spec.key is NOVALUE and spec.key_out is None and spec.value is NOVALUE and spec.out:
        return _fast_capture(spec.out)
    return lambda match, name, value, key: _immediate(match, spec, name, value, key)


def _checked(wanted: Any, handler: Callable) -> Callable:
    """Handle only values whose class matches ``wanted`` (``$p:Parameter`` on ``self.a``).

    The answer is kept per class, weakly (classes made on the fly, one per
    ``torch.fx`` module, are not kept alive): matching a name walks the class's MRO
    (~1.5 us a value), and the same few classes come back on every call."""
    known: WeakKeyDictionary = WeakKeyDictionary()

    def check(match, name, value, key):
        cls = type(value)
        try:
            ok = known.get(cls)
        except TypeError:  # a metaclass with `__eq__` and no `__hash__`
            ok = annotation_matches(cls, wanted)
        else:
            if ok is None:
                ok = known[cls] = annotation_matches(cls, wanted)
        if ok:
            return handler(match, name, value, key)
        return value

    return check


def _fast_capture(out: str) -> Callable:
    """``_immediate`` for a plain captured variable (no key, no filter): one call."""

    def capture(match, name, value, key):
        if value is not ABSENT:
            match.captures[out] = value
            match.names[out] = name
        return value

    return capture


def _fast_focus(out: str, emit: Callable, intercepts: bool, keep: bool) -> Callable:
    # `emit` is a closure variable, rebound in place when the rule changes hands
    # (Rule.rebind): no attribute lookup per value.
    if keep and not intercepts:
        # The focus is kept with the call's other captures, so that a result lists
        # them in the order they were first set (as in 1.4). Only for templates
        # with captures: a simple one's match may be shared by calls.

        def focus(match, name, value, key):
            if value is not ABSENT:
                caps = match.captures
                caps[out] = value
                emit(caps.copy())
            return value

        return focus
    if intercepts:

        def focus(match, name, value, key):
            data = match.captures.copy()
            if value is not ABSENT:
                data[out] = value
            result = emit(data)
            return value if result is ABSENT else result

    else:

        def focus(match, name, value, key):
            if value is not ABSENT:
                caps = match.captures
                if caps:
                    data = caps.copy()
                    data[out] = value
                else:
                    data = {out: value}
                emit(data)
            return value

    return focus


def _key_ok(spec: VarSpec, key: Any) -> bool:
    """A keyed variable (``h[1]``, ``h[$i]``) matches only assignments with a key."""
    if spec.key is NOVALUE and spec.key_out is None:
        return True
    return key is not ABSENT and (spec.key is NOVALUE or filter_eq(key, spec.key))


def _immediate(match: Match, spec: VarSpec, name: str, value: Any, key: Any) -> Any:
    if not _key_ok(spec, key):
        return value
    if value is ABSENT:
        return value
    if spec.value is not NOVALUE:
        match.check(spec, value)
    if spec.out is not None:
        match.captures[spec.out] = value
        match.names[spec.out] = name
    if spec.key_out is not None:
        match.set_key(spec.key_out, key)
    return value


def _beside(match: Match, spec: VarSpec, name: str, value: Any, key: Any) -> Any:
    """A capture of a side branch: also kept by the nearest match on the focus's path.

    With filters in the branch, its captures go up while none of its filters has
    seen a wrong value (one not yet set lets them through, as 1.4), and are taken
    back when one does.
    """
    value = _immediate(match, spec, name, value, key)
    if value is ABSENT or not _key_ok(spec, key):
        return value
    sides, keeper = match.rule.sides, match.parent
    while keeper is not None and keeper.template.node in sides:
        keeper = keeper.parent
    if keeper is None:
        return value
    if not match.template.filters:
        keeper.captures[spec.out] = value
        keeper.names[spec.out] = name
        return value
    refused = any(ok is False for k, ok in match.names.items() if type(k) is tuple)
    for out, got in match.captures.items():
        if refused:
            keeper.captures.pop(out, None)
        else:
            keeper.captures[out] = got
            keeper.names[out] = match.names.get(out, out)
    return value


def _fire(match: Match, spec: VarSpec, name: str, value: Any, key: Any) -> Any:
    if not _key_ok(spec, key):
        return value
    rule = match.rule
    if value is ABSENT and not rule.intercepts:
        return value
    if spec.value is not NOVALUE:
        if not filter_eq(value, spec.value):
            return value
        match.check(spec, value, True)  # the focus meets its own filter (`f > y=2`)
    chain = match.chain()
    if chain is None:
        return value
    # Innermost scope first, each in the order its captures were first set (as in 1.4:
    # a printed result reads the same); an inner capture wins over an outer one. An
    # match that calls may share (a simple template's) is never written to.
    keep = value is not ABSENT and not match.template.simple
    if keep:
        match.captures[spec.out] = value
        match.names[spec.out] = name
    data, names = {}, {}
    for a in reversed(chain):
        for k, v in a.captures.items():
            data.setdefault(k, v)
        for k, v in a.names.items():
            names.setdefault(k, v)
    if value is not ABSENT and not keep:
        data[spec.out] = value
        names[spec.out] = name
    if spec.key_out is not None:
        data[spec.key_out] = key
        names[spec.key_out] = "#key"
    if rule.raw:
        data = {k: Capture(k, [names.get(k, k)], [v]) for k, v in data.items()}
    if rule.wrap is not None:
        step = "begin" if spec.focus == 1 else "end"
        if spec.focus == 1 and value is not ABSENT:
            # The end marker of the region carries the value it began with.
            match.captures[spec.out] = value
            match.names[spec.out] = name
        data["$wrap"] = {"id": id(match), "name": rule.wrap, "step": step}
    result = rule.emit(data)
    return value if result is ABSENT or not rule.intercepts else result


def _total(match: Match, spec: VarSpec, name: str, value: Any, key: Any) -> Any:
    if value is ABSENT:
        return value
    if not _key_ok(spec, key):
        return value
    entry = (name, value)
    if spec.focus == 1:
        # `f > y=2`: another value of y is no focus value (as in 1.4, the last one
        # stays current). Other filters are checked on the whole result (Match._holds).
        if spec.value is not NOVALUE and not filter_eq(value, spec.value):
            return value
        if match.pending is not None:
            match.flush()
        pending: dict = {}
        line = []
        a = match
        while a is not None:
            line.append(a)
            a = a.parent
        for a in reversed(line):  # outermost first: an inner capture wins
            for out, lst in a.captures.items():
                pending[out] = [lst[-1]]
        pending[spec.out] = [entry]
        if spec.key_out is not None:
            pending[spec.key_out] = [("#key", key)]
        match.pending = pending
        return value
    match.add(spec.out, entry)
    if spec.key_out is not None:
        match.add(spec.key_out, ("#key", key))
    return value
