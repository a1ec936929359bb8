"""The overlay engine: active rules, live calls, and what fires when.

All state lives in one ``Engine`` (``ENGINE``, the default one); the names
other modules import (``activate``, ``deactivate``, ``current_plan``, ...) are its
bound methods, and a test can make a fresh ``Engine()``. Within it, context
variables hold each context's plan and frames, so threads and asyncio tasks each
see their own overlays; ``global_probe`` rules live in the engine's tuple, which
every context picks up. A ``Plan`` (one per set of active rules) maps each function id to
the templates that can match it; instrumented code calls the helpers below, which
answer "not interested" with one dict lookup.

A live call that some template matched is a ``Frame``; for each template it
matched, a ``Match`` (``capture.py``) holds the captures of that call, and the
rule decides (immediate or total) when they are emitted; a flat rule's root call
holds a ``FlatRoot`` instead, and the calls below it report into its list through
one shared frame. Frames of calls that are outer scopes in some selector are
pushed on a linked stack in a context variable.

Interest counts say which names each function must report; the union of the
active ones picks the code variant installed (``_install``). An ``Activation``
counts its rules while it lasts; a ``Resident`` (a selfless object's overlay)
counts them once and is then entered per call with one context-variable set.

Decisions:

* ``f > g`` is direct when no call between them on the Python stack is of a
  decorated function or of one that a rule of this context can match; other
  frames (wrappers, ``nn.Module.__call__``, library code) are transparent, whatever
  code they run for other threads' probes. The same test tells which call a keyed
  assignment's key goes to.
* A generator's frame is on the stack while its body runs and off it while it
  is suspended (each ``yield`` takes it off, the resumption puts it back), so
  its calls see it as their caller and the consumer's calls never do; a
  ``yield`` statement comes back on however it resumes (``throw()`` and
  ``close()`` included, for its ``except`` and ``finally`` blocks). Through
  ``yield from x`` it stays on while ``x`` runs (``_delegate``, PEP 380's steps):
  a recursive generator is the caller of the one it delegates to.
* ``#enter``, ``#exit``, ``#loop_i`` and ``#endloop_i`` have the value ``True``
  (as in 1.4; the loop variable itself is ``i``); ``#error`` is the exception.
* ``activate`` returns an ``Activation``; removing it takes away exactly its own
  rules, in any order relative to other activations, and only once. Only the
  context that activated rules can end them (elsewhere: ``ValueError``, and they
  stay active), since a task or a copied context would end them in its copy only.
* A ``Resident``'s counts stay until its owner is collected (a
  ``weakref.finalize`` that holds the counts only, never the rules, whose
  listeners may refer to the owner) or the registry of decorated functions
  changes. Meanwhile a function it could match runs instrumented code even
  outside its calls; ``_enter`` answers "not interested" there with one dict
  lookup. Functions that nothing counts run their idle code (W1's idle row).
* A finalizer that runs while its thread is inside the engine's lock (the
  collector runs on any allocation) defers its release to the end of that
  section, so counts are never changed mid-update.
* ``torch.compile``'s eager stance (``compiled.py``) follows activations and
  resident *calls*, not holds: an object kept alive leaves compiled code alone.
  While nothing is compiled, a resident call takes no lock and is not counted
  (~0.6 us a call); it asks again when it ends (``compiled_meanwhile``).
* A call where only flat roots start, and a call below one flat root, are
  entered without the general path (no parent, key or Python frame to look
  up), and a ``_RootsFrame`` exits by flushing its roots: W3 runs these on
  every step.
* The helpers instrumented code calls at entry and exit (``_enter``, ``_exit``)
  are closures over the engine's fields, made in ``Engine.__init__``, not bound
  methods: against a module function reading globals, a closure reading cells
  cost 0.98x and 1.00x, a bound method reading slots 1.03x and 1.02x (two runs
  of 200,000 calls, CPU time); W1 and W3 with closures are within noise of the
  module-global version (benchmarks/README.md). The helpers that
  touch no engine state (``_report``, ``_report_key``, ``_free``) stay plain
  functions shared by every engine; ``setkey`` is the context variable's ``set``.
* Code objects and a module's ``__ptera__`` are process-wide. An engine that
  installs code in a module points its ``__ptera__`` at its own helpers; while
  another engine runs code it installed in that module, that is a
  ``RuntimeError`` rather than calls that no rule sees.
* ``reset()`` never moves an epoch back (plans in other contexts compare it):
  it records the epoch it starts, and plans, activations and holds from before
  are dropped, inert, and counted again (a resident's) when next used.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from functools import partial
from typing import Any

from .capture import KEYED, FlatRoot, Match, Rule, filter_eq
from .compiled import compiled_meanwhile, nothing_compiled, overlay_ended, overlay_started
from .lookup import FnState, _by_code, state_by_fid
from .match import Template, compile_selector
from .selector import NOVALUE, select
from .sentinel import Sentinel
from .state import settle, take
from .transform import (
    ABSENT,
    ABSENT_NAME,
    DELEGATE,
    ENTER,
    EXIT,
    FREE,
    HELPER,
    HIDE,
    MISSING,
    REPORT,
    REPORT_KEY,
    RESUME,
    SETKEY,
    SETTLE,
    SUSPEND,
    TAKE,
    helper_namespace,
    hide_helpers,
)


class PteraNameError(NameError):
    """A declared variable was read but no value was given for it."""

    def __init__(self, name: str, state: FnState):
        loc = state.source.variables.get(name)
        where = f" ({loc.location[0]}:{loc.location[2]})" if loc else ""
        super().__init__(
            f"variable '{name}' of {state.qualname}{where} is declared but has no value:"
            f" give it one with {state.name}.new({name}=...), a tweak, or the command line",
            name=name,
        )
        self.varname = name
        self.state = state
        self.function = state.function  # as in 1.4: the function itself

    def info(self) -> dict:
        """The variable's record in ``__ptera_info__`` (coleo reads it)."""
        fn = self.state.function
        infos = getattr(fn, "__ptera_info__", None) or {}
        return infos.get(self.varname, {})


# ---------------------------------------------------------------------------
# Plans and frames


class _FnPlan:
    """What one function does in one plan: its (template, rule, handlers) entries and
    what its calls need, the union over the entries."""

    __slots__ = (
        "entries",
        "pushes_frame",
        "reads_key",
        "checks_direct",
        "exit_work",
        "focus_only",
        "all_roots",
        "shared_frame",
        "flat_children",
        "flat_child",
        "flat_roots",
    )

    def __init__(self):
        self.entries: list[tuple[Template, Rule, dict]] = []
        self.pushes_frame = False  # the call is an outer scope: push it on the frame stack
        self.reads_key = False  # some template filters or captures the call key
        self.checks_direct = False  # some template needs a direct parent (`f > g`)
        self.exit_work = False  # the exit helper has work to do
        self.focus_only = True  # every template fires on its focus alone
        self.all_roots = True  # every template is a root that ignores call keys
        self.shared_frame: Frame | None = None  # one frame for all calls: nothing stored
        # Every entry is a flat rule's template one `>>` below a root: (rule, root node,
        # handlers) for each, the calls report into the root's list (capture.FlatRoot).
        self.flat_children: tuple | None = None
        self.flat_child: tuple | None = None  # the one entry of `flat_children`, if one
        # Every entry is a flat rule's root: the call opens one list per entry and pushes
        # a frame for the calls below, with no parent, key or Python frame to look up.
        self.flat_roots = False

    def add(self, t: Template, rule: Rule, handlers: dict) -> None:
        self.entries.append((t, rule, handlers))
        self.pushes_frame |= t.push
        self.reads_key |= t.keyed
        self.checks_direct |= t.direct
        # The calls below a flat root have nothing to do at exit: the root collects.
        self.exit_work |= t.exits or not (rule.immediate or (rule.flat and t.parent is not None))
        self.focus_only &= t.simple
        self.all_roots &= t.parent is None and not t.keyed

    def finish(self) -> None:
        # A frame that keeps its Python frame must drop it at exit (a reference cycle).
        self.exit_work |= self.pushes_frame or self.checks_direct
        if self.focus_only and not (
            self.pushes_frame or self.reads_key or self.checks_direct or self.exit_work
        ):
            # Nothing is ever stored: every call can share one frame.
            matches = [(Match(t, rule, None), h) for t, rule, h in self.entries]
            self.shared_frame = Frame(None, matches, None, False)
        if all(rule.flat and t.parent is not None for t, rule, _ in self.entries):
            self.flat_children = tuple((rule, t.parent, h) for t, rule, h in self.entries)
            if len(self.flat_children) == 1:
                self.flat_child = self.flat_children[0]
        # (A flat root is never keyed and has no `#exit`: see capture._is_flat.)
        self.flat_roots = all(rule.flat and t.parent is None for t, rule, _ in self.entries)


class Plan:
    """The rules active in one context (plus the global ones), indexed by function id.

    ``global_rules`` are the engine's process-wide rules when the plan is built
    (``None``: the default engine's).
    """

    __slots__ = ("rules", "epoch", "fns")

    def __init__(
        self, rules: tuple[Rule, ...], epoch: int, global_rules: tuple[Rule, ...] | None = None
    ):
        self.rules = rules
        self.epoch = epoch
        fns: dict[int, _FnPlan] = {}
        everything = (ENGINE.rules if global_rules is None else global_rules) + rules
        # Interceptors first, so that listeners see the values that are really used.
        ordered = [r for r in everything if r.intercepts] + [
            r for r in everything if not r.intercepts
        ]
        for rule in ordered:
            comp = rule.compiled
            for fid, temps in comp.templates.items():
                fp = fns.get(fid)
                if fp is None:
                    fp = fns[fid] = _FnPlan()
                for t in temps:
                    fp.add(t, rule, rule.handlers[id(t)])
        for fp in fns.values():
            fp.finish()
        self.fns = fns


class Frame:
    """A live call of an instrumented function that some active template matched.

    ``matches`` pairs each match with its handlers; ``match``/``handlers`` repeat the pair
    when there is exactly one, for the fast path of ``_report``. ``parent`` is the frame
    below on the stack, ``token`` the stack's token when the frame is pushed, ``pyframe``
    the Python frame when a child must check that it is called directly, ``exit``
    whether ``_exit`` has work.
    """

    __slots__ = ("parent", "matches", "match", "handlers", "token", "pyframe", "exit")
    flat_roots = False  # every match is a FlatRoot (see _RootsFrame)

    def __init__(self, parent, matches, pyframe, exit):
        self.parent = parent
        self.matches = matches
        self.pyframe = pyframe
        self.exit = exit
        self.token = None
        if len(matches) == 1:
            self.match, self.handlers = matches[0]
        else:
            self.match = self.handlers = None


class _RootsFrame(Frame):
    """A call where only flat rules' roots start (``_FnPlan.flat_roots``): its exit
    flushes each ``FlatRoot``, with no exit handlers to look up (flat rules have none)."""

    __slots__ = ()
    flat_roots = True


def _find_parent(frame, rule, node, deep, pyframe, fns=None):
    if frame is None:
        return None
    if not deep:
        for a, _ in frame.matches:
            if a.rule is rule and a.template.node == node:
                return a if _direct(pyframe, frame.pyframe, fns) else None
        return None
    while frame is not None:
        for a, _ in frame.matches:
            if a.rule is rule and a.template.node == node:
                return a
        frame = frame.parent
    return None


def _between(f, fns) -> bool:
    """Whether Python frame ``f`` is a call that ``>`` counts: a decorated function, or
    one that some rule active in this context can match (``fns``: the plan's). What
    code a function happens to run (instrumented for another thread's probe, or not)
    must not change the answer."""
    st = _by_code.get(f.f_code)
    return st is not None and (st.tooled or st.fid in fns)


def _direct(child, parent, fns) -> bool:
    """No call that ``>`` counts between the child's Python frame and the parent's."""
    f = child.f_back
    while f is not None and f is not parent:
        if _between(f, fns):
            return False
        f = f.f_back
    return True


# The helpers below use no engine state: every engine shares them.


def _report(frame, name, value):
    if frame is None:
        return value
    match = frame.match
    if match is not None:
        hs = frame.handlers.get(name)
        if hs is not None:
            for h in hs:
                value = h(match, name, value, ABSENT)
        return value
    for match, handlers in frame.matches:
        hs = handlers.get(name)
        if hs is not None:
            for h in hs:
                value = h(match, name, value, ABSENT)
    return value


def _report_key(frame, name, value, key):
    if frame is None:
        return value
    slot = name + KEYED
    for match, handlers in frame.matches:
        hs = handlers.get(slot)
        if hs is not None:
            for h in hs:
                value = h(match, name, value, key)
    return value


def _free(frame, state, name, read):
    """A free name at entry: the state's value, else the real one as reported.

    Returns ``ABSENT`` when nothing replaced the real value, so that the body
    keeps reading the name itself.
    """
    value = state.get(name, ABSENT) if state is not ABSENT else ABSENT
    if value is not ABSENT:
        return _report(frame, name, value)
    if frame is None:
        return ABSENT
    try:
        real = read()
    except NameError:
        real = ABSENT
    value = _report(frame, name, real)
    return ABSENT if value is real else value


def _missing(fid, name):
    raise PteraNameError(name, state_by_fid(fid))


class _After(threading.local):
    calls: list = []  # never appended to in place: a thread's first call replaces it


class _Batch(partial):
    """``serve(requests)``, queued by ``exit_batch`` to run after an exit (a ``partial``:
    calling it runs no Python frame of its own)."""

    __slots__ = ()


def _count(counts: dict, interests: Iterable[dict], delta: int) -> list[FnState]:
    """Count each active interest set per function; the code reports their union.

    ``interests`` holds one ``{FnState: names}`` per rule (``Rule.interest``).
    """
    touched = []
    for interest in interests:
        for st, names in interest.items():
            sets = counts.get(st)
            if sets is None:
                sets = counts[st] = {}
            n = sets.get(names, 0) + delta
            if n > 0:
                sets[names] = n
            else:
                sets.pop(names, None)
            touched.append(st)
    return touched


def _without(active: tuple[Rule, ...], rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """``active`` less the block ``rules`` that one activation appended (the last one)."""
    n = len(rules)
    for i in range(len(active) - n, -1, -1):
        if all(a is b for a, b in zip(active[i : i + n], rules)):
            return active[:i] + active[i + n :]
    return tuple(r for r in active if all(r is not x for x in rules))


# Plans an overlay keeps, one per base (the rules active where it is entered): a
# handful of nesting contexts at most; past this many the bases are not repeating.
_PLANS_KEPT = 16


# ---------------------------------------------------------------------------
# The engine


class Engine:
    """All of the overlay engine's state; the module-level functions are ``ENGINE``'s.

    A fresh ``Engine()`` shares nothing with the default one but the functions'
    code objects (see *Decisions*): tests make one to start from a clean slate.

    Working state:

    * ``rules``: the process-wide rules (``global_probe``), in activation order.
    * ``epoch``: bumped when ``rules`` change; a context's plan built at an older
      epoch is rebuilt on its next use.
    * ``reset_epoch``: the epoch of the last ``reset``; plans, activations and holds
      from before it are dropped, inert, and taken again (a resident's) on use.
    * ``live``: activations not yet removed (each keeps ``torch.compile`` eager).
    * ``lock``: a reentrant lock around every change of rules and counts.
    * ``deferred``: holds released while their thread was inside ``lock``.
    * ``counts``: ``{FnState: {interest set: count}}``; their union picks the code.
    * ``plan``, ``frame``, ``pending_key``: context variables: the context's
      ``Plan``, its innermost pushed ``Frame``, the key of the next keyed call.
    * ``after``: per thread, the work queued by ``after_exit`` for the exit running.
    * ``missed``: ``{fid: calls}`` that ran instrumented code no rule of theirs saw.
    * ``empty``: the plan with no rules, the default of ``plan``.
    * ``helpers``: ``{"__ptera__": namespace}``, what instrumented code calls.
    """

    __slots__ = (
        "rules",
        "epoch",
        "reset_epoch",
        "live",
        "lock",
        "deferred",
        "counts",
        "plan",
        "frame",
        "pending_key",
        "after",
        "missed",
        "empty",
        "helpers",
        "_section",
        "_enter",
        "_exit",
        "_setkey",
        "_suspend",
        "_resume",
        "_delegate",
    )

    def __init__(self):
        self.rules: tuple[Rule, ...] = ()
        self.epoch = 0
        self.reset_epoch = 0
        self.live = 0
        self.lock = threading.RLock()
        self.deferred: list[_Hold] = []
        self.counts: dict[FnState, dict[frozenset, int]] = {}
        self.empty = Plan((), 0, ())
        self.plan: ContextVar[Plan] = ContextVar("ptera_plan", default=self.empty)
        self.frame: ContextVar[Frame | None] = ContextVar("ptera_frame", default=None)
        self.pending_key: ContextVar[Any] = ContextVar("ptera_key", default=ABSENT)
        self.after = _After()
        self.missed: dict[int, int] = {}
        self._section = _Section(self)
        (
            self._enter,
            self._exit,
            self._setkey,
            self._suspend,
            self._resume,
            self._delegate,
        ) = _call_helpers(self)
        helpers = {
            ENTER: self._enter,
            EXIT: self._exit,
            REPORT: _report,
            REPORT_KEY: _report_key,
            TAKE: take,
            SETTLE: settle,
            MISSING: _missing,
            SETKEY: self._setkey,
            SUSPEND: self._suspend,
            RESUME: self._resume,
            DELEGATE: self._delegate,
            FREE: _free,
            ABSENT_NAME: ABSENT,
            HIDE: hide_helpers,
        }
        # What goes into a user's module: one global, whose attributes are the helpers.
        namespace = helper_namespace(helpers)
        namespace.engine = self  # which engine a module's code calls (see _claim)
        self.helpers = {HELPER: namespace}

    def __repr__(self) -> str:
        default = " (default)" if self is globals().get("ENGINE") else ""
        return f"<ptera Engine{default}: {len(self.rules)} global rules, epoch {self.epoch}>"

    # -- plans ---------------------------------------------------------------

    def current_plan(self) -> Plan:
        """The plan of this context, rebuilt if the global rules changed since."""
        plan = self.plan.get()
        if plan.epoch != self.epoch:
            rules = plan.rules if plan.epoch >= self.reset_epoch else ()
            plan = Plan(rules, self.epoch, self.rules)
            self.plan.set(plan)
        return plan

    def reset(self) -> None:
        """End everything active on this engine at once (for tests).

        Global rules, interest counts (every counted function gets its idle code
        back), missed calls and this thread's queued ``after_exit`` work go; this
        context's plan, frame stack and pending key are emptied, and other contexts'
        plans drop their rules on their next use. Activations made before are inert
        (removing them does nothing); a resident made before takes its counts again
        on its next call.
        """
        with self.lock:
            self.rules = ()
            self.epoch += 1
            self.reset_epoch = self.epoch
            states = list(self.counts)
            self.counts.clear()
            self.deferred.clear()
            self._install(states)
            self.missed.clear()
            self.after.calls = []
            for _ in range(self.live):
                overlay_ended()
            self.live = 0
            self.plan.set(self.empty)
            self.frame.set(None)
            self.pending_key.set(ABSENT)

    def _plan_with(self, base: Plan, rules: tuple[Rule, ...], plans: dict | None) -> Plan:
        """The plan of ``base`` plus ``rules``, kept in ``plans`` by base."""
        with self.lock:
            key = (base.rules, self.epoch, self)
            new = Plan(base.rules + rules, self.epoch, self.rules)
            if plans is not None:
                if len(plans) > _PLANS_KEPT:
                    plans.clear()
                plans[key] = new
            return new

    def active_rule_count(self) -> int:
        """How many rules are active in this context plus globally (for leak checks)."""
        return len(self.current_plan().rules) + len(self.rules)

    # -- after exits and missed calls --------------------------------------------

    def after_exit(self, call: Callable[[], Any]) -> None:
        """Run ``call`` once the exit being processed has emitted all its results."""
        after = self.after
        calls = after.calls
        if calls:
            calls.append(call)
        else:
            after.calls = [call]

    def exit_batch(self, serve: Callable[[list], Any]) -> list:
        """The list of requests for ``serve`` in the exit being processed: the first call
        in an exit queues ``serve(requests)`` as ``after_exit`` does, and every call in
        that exit with an equal ``serve`` returns the same list. It goes with the exit's
        other queued work."""
        after = self.after
        calls = after.calls
        for call in calls:
            if type(call) is _Batch and call.func == serve:  # (a bound method is a new object)
                return call.args[0]
        requests: list = []
        if calls:
            calls.append(_Batch(serve, requests))
        else:
            after.calls = [_Batch(serve, requests)]
        return requests

    def missed_calls(self, fids) -> dict[int, int]:
        """How many calls of each function ran instrumented code for other contexts' overlays."""
        missed = self.missed
        return {fid: missed.get(fid, 0) for fid in fids}

    # -- code swapping ----------------------------------------------------------

    def _install(self, states: Iterable[FnState]) -> None:
        for st in states:
            sets = self.counts.get(st)
            if not sets:
                st.set_code(st.idle)
                continue
            names = next(iter(sets)) if len(sets) == 1 else frozenset().union(*sets)
            code = st.code_for(names)
            if code is not st.current:
                # Every function object running the variant needs the helper, copies made
                # with other globals (``types.FunctionType(code, g)``) included.
                for fn in st.functions():
                    self._claim(fn.__globals__)
                st.set_code(code)

    def _claim(self, module_globals: dict) -> None:
        """Point a module's ``__ptera__`` at this engine, unless another engine uses it."""
        ours = self.helpers[HELPER]
        theirs = module_globals.get(HELPER)
        if theirs is ours:
            return
        other = getattr(theirs, "engine", None)
        if other is not None and other is not self and other._uses(module_globals):
            raise RuntimeError(
                f"module {module_globals.get('__name__')!r}: its functions are instrumented"
                f" by {other!r}; one engine at a time may instrument a module's functions"
            )
        module_globals.update(self.helpers)

    def _uses(self, module_globals: dict) -> bool:
        """Whether some function of the module runs code this engine installed."""
        return any(
            sets and st.function is not None and st.function.__globals__ is module_globals
            for st, sets in self.counts.items()
        )

    def _install_counted(self, interests: tuple[dict, ...]) -> None:
        touched = _count(self.counts, interests, +1)
        try:
            self._install(touched)
        except Exception:
            self._install(_count(self.counts, interests, -1))
            raise

    def _release_deferred(self) -> None:
        """Release the holds collected inside an engine section (under the lock, after it)."""
        deferred = self.deferred
        while deferred:
            deferred.pop()._release_locked()

    def engine_lock(self) -> _Section:
        """``with engine_lock(): ...``: the engine's (reentrant) lock, releasing at the end
        the objects collected meanwhile."""
        return self._section

    # -- activation -------------------------------------------------------------

    def activate(
        self, rules: tuple[Rule, ...], *, glob: bool = False, plans: dict | None = None
    ) -> Activation:
        """Activate rules in this context (or everywhere); ``remove()`` the result to end them.

        ``plans``, a dict owned by the caller, keeps the plans built for these rules
        so that activating them again on the same base costs a lookup.
        """
        with self.lock:
            self._install_counted(tuple(r.interest for r in rules))
            overlay_started()
            self.live += 1
            if glob:
                self.rules += rules
                self.epoch += 1
                return Activation(rules, True, None, self)
            plan = self.current_plan()
            new = plans.get((plan.rules, self.epoch, self)) if plans is not None else None
            if new is None:
                new = self._plan_with(plan, rules, plans)
            token = self.plan.set(new)
            if self.deferred:
                self._release_deferred()
            return Activation(rules, False, token, self)

    def _reset_owned(self, token: Token) -> None:
        # Only the context that activated rules can end them: a task or a copied context
        # sees them too, but ending them there would leave them active where they started.
        # The token knows its context.
        try:
            self.plan.reset(token)
        except ValueError:
            raise ValueError(
                "these rules were activated in another context (another asyncio task,"
                " thread or copied context): end them where they were activated"
            ) from None

    def check_owner(self, activation: Activation) -> None:
        """Raise ``ValueError`` unless ``deactivate(activation)`` may run here (its context)."""
        with self.lock:
            if activation.active and not activation.glob and not self._stale(activation):
                now = self.plan.get()
                self._reset_owned(activation.token)
                activation.token = self.plan.set(now)  # the same old value: an equivalent token

    def deactivate(self, activation: Activation) -> None:
        """Undo ``activate``: remove its rules and restore code that nothing needs."""
        if activation.engine is not self:
            raise ValueError(f"this activation belongs to {activation.engine!r}, not {self!r}")
        with self.lock:
            if not activation.active:
                return
            if self._stale(activation):  # its rules went with a reset
                activation.active, activation.token = False, None
                return
            rules, token = activation.rules, activation.token
            if activation.glob:
                self.rules = _without(self.rules, rules)
                self.epoch += 1
            else:
                rules_now = self.plan.get().rules
                self._reset_owned(token)
                before = token.old_value if token.old_value is not Token.MISSING else self.empty
                if rules_now != before.rules + rules:
                    # Not the newest activation: keep the ones made since.
                    self.plan.set(Plan(_without(rules_now, rules), self.epoch, self.rules))
                plan = self.plan.get()
                if plan.epoch != self.epoch:
                    self.plan.set(Plan(plan.rules, self.epoch, self.rules))
            activation.active, activation.token = False, None
            self.live -= 1
            self._install(_count(self.counts, (r.interest for r in rules), -1))
            overlay_ended()
            if self.deferred:
                self._release_deferred()

    def _stale(self, activation: Activation) -> bool:
        return activation.since < self.reset_epoch

    def resident(self, rules: tuple[Rule, ...]) -> Resident:
        """A ``Resident`` of ``rules`` on this engine."""
        return Resident(rules, self)


def _call_helpers(engine: Engine) -> tuple[Callable, ...]:
    """The engine's ``_enter``, ``_exit`` and the other helpers of instrumented code:
    closures over its fields, which run the hot path as fast as module functions over
    globals (faster than bound methods)."""
    plan_var, frame_var, key_var = engine.plan, engine.frame, engine.pending_key
    missed, after = engine.missed, engine.after

    def _enter(fid):
        plan = plan_var.get()
        if plan.epoch != engine.epoch:
            plan = engine.current_plan()
        fp = plan.fns.get(fid)
        if fp is None:
            # Instrumented for another thread or task, not this one (probe.py warns).
            missed[fid] = missed.get(fid, 0) + 1
            return None
        if fp.shared_frame is not None:
            return fp.shared_frame
        child = fp.flat_child
        if child is not None:
            # Reports go to one flat root above: find it (`_find_parent`'s walk, written
            # out here since it runs on every call below the root).
            rule, node, handlers = child
            frame = frame_var.get()
            while frame is not None:
                for root, _ in frame.matches:
                    if root.rule is rule and root.template.node == node:
                        below = root.child
                        if below is None or below[0] is not handlers:
                            # Stateless: the calls below this root with these handlers
                            # share one frame.
                            below = root.child = (
                                handlers,
                                Frame(None, [(root.sink, handlers)], None, False),
                            )
                        return below[1]
                frame = frame.parent
            return None
        if fp.flat_children is not None:
            return _enter_flat(fp.flat_children)
        if fp.flat_roots:
            # Only flat roots start here: a fresh list for each, and the frame pushed
            # when rules reach the calls below.
            entries = fp.entries
            if len(entries) == 1:
                ((t, rule, handlers),) = entries
                matches = [(FlatRoot(t, rule), handlers)]
            else:
                matches = [(FlatRoot(t, rule), handlers) for t, rule, handlers in entries]
            if not fp.pushes_frame:
                return _RootsFrame(None, matches, None, True)
            frame = _RootsFrame(frame_var.get(), matches, None, True)
            frame.token = frame_var.set(frame)
            return frame
        if fp.all_roots and not (fp.pushes_frame or fp.checks_direct):
            # Every template starts here: no parent to find, no key, nothing to push.
            return Frame(
                None,
                [
                    ((FlatRoot if rule.flat else Match)(t, rule, None), h)
                    for t, rule, h in fp.entries
                ],
                None,
                fp.exit_work,
            )
        parent = frame_var.get()
        pyframe = sys._getframe(1) if (fp.pushes_frame or fp.checks_direct) else None
        key = key_var.get() if fp.reads_key else ABSENT
        if key is not ABSENT:
            key = _key_of_call(key, sys._getframe(1), plan.fns)
        matches = []
        for t, rule, handlers in fp.entries:
            if t.parent is None:
                parent_match = None
            else:
                parent_match = _find_parent(parent, rule, t.parent, t.deep, pyframe, plan.fns)
                if parent_match is None:
                    continue
            if t.key is not NOVALUE and (key is ABSENT or not filter_eq(key, t.key)):
                continue
            if not rule.flat:
                match = Match(t, rule, parent_match)
            elif parent_match is None:
                match = FlatRoot(t, rule)
            else:
                matches.append((parent_match.sink, handlers))  # reports go to the root's list
                continue
            if t.key_out is not None and key is not ABSENT:
                match.set_key(t.key_out, key)
            matches.append((match, handlers))
        if not matches:
            return None
        frame = Frame(parent, matches, pyframe, fp.exit_work)
        if fp.pushes_frame:
            frame.token = frame_var.set(frame)
        return frame

    def _enter_flat(children: tuple):
        """``_enter`` for a call whose templates report into flat roots above it (several
        entries; one is written out in ``_enter``)."""
        stack = frame_var.get()
        matches = []
        for rule, node, handlers in children:
            root = _find_parent(stack, rule, node, True, None)
            if root is not None:
                matches.append((root.sink, handlers))
        return Frame(None, matches, None, False) if matches else None

    def _exit(frame, error):
        if frame is None or not frame.exit:
            return
        if frame.token is not None:
            if frame.token is not _OUT:  # (a generator closed while suspended is off)
                try:
                    frame_var.reset(frame.token)
                except ValueError:
                    frame_var.set(frame.parent)
            frame.token = None
        try:
            if frame.flat_roots:
                for root, _ in frame.matches:
                    if root.pending is not None:  # (once, even if exit runs twice)
                        root.flush()
            else:
                frame.pyframe = None
                for match, handlers in frame.matches:
                    if error is not ABSENT and not isinstance(error, GeneratorExit):
                        for h in handlers.get("#error", ()):
                            h(match, "#error", error, ABSENT)
                    for h in handlers.get("#exit", ()):
                        h(match, "#exit", True, ABSENT)
                    if match.pending is not None and match.template.holder:
                        match.flush()
                    if match.deferred is not None and match.parent is None:
                        match.release()
        except BaseException:
            # A listener of this exit raised: the work it queued goes with it (else a
            # later exit would run it too, e.g. a second SGD step from one Grad).
            after.calls = []
            raise
        calls = after.calls  # (one read: a thread-local's attribute costs ~45 ns)
        if calls:
            # Work that needs every result of this exit first (Grad's one backward pass);
            # dropped when the call failed.
            after.calls = []
            if error is ABSENT:
                for call in calls:
                    call()

    def _setkey(key):
        # The key of the call on the right of `h[k] = f(...)`, and the frame making it;
        # ABSENT once that call is over (transform clears it).
        key_var.set(ABSENT if key is ABSENT else (key, sys._getframe(1)))

    def _suspend(frame):
        # A generator yields: its frame leaves the stack (see transform.paused).
        if frame is not None and frame.token is not None and frame.token is not _OUT:
            try:
                frame_var.reset(frame.token)
            except ValueError:  # resumed in another context than the one it set
                frame_var.set(frame.parent)
            frame.token = _OUT

    def _resume(frame, value):
        # ... and comes back when the generator is resumed, wherever that is.
        if frame is not None and frame.token is _OUT:
            frame.token = frame_var.set(frame)
        return value

    def _delegate(frame, iterable):
        # `yield from iterable` of an instrumented generator (PEP 380's steps written
        # out): its frame is on the stack while `iterable` runs, as the caller of what
        # it delegates to, and off it while the consumer runs between values. What is
        # thrown in is passed on outside the `except` that caught it, so the delegate
        # sees no exception context that plain `yield from` would not give it.
        it = iter(iterable)
        try:
            value = next(it)
        except StopIteration as stop:
            return stop.value
        while True:
            _suspend(frame)
            thrown = None
            try:
                sent = yield value
            except BaseException as exc:
                thrown = exc
            _resume(frame, None)
            try:
                if thrown is None:
                    value = next(it) if sent is None else it.send(sent)
                elif isinstance(thrown, GeneratorExit):
                    close = getattr(it, "close", None)
                    if close is not None:
                        close()
                    raise thrown
                else:
                    throw = getattr(it, "throw", None)
                    if throw is None:
                        raise thrown
                    value = throw(thrown)
            except StopIteration as stop:
                if thrown is not None and stop is thrown:
                    raise
                return stop.value
            finally:
                thrown = None  # (no cycle through the traceback)

    return _enter, _exit, _setkey, _suspend, _resume, _delegate


# A suspended generator's frame: off the stack until the generator resumes.
_OUT = Sentinel("SUSPENDED")


def _key_of_call(pending: tuple, entered, fns) -> Any:
    """The pending key if the call entering ``entered`` is the keyed call itself: the
    nearest frame above it that ``>`` counts (see ``_between``) is the one that set
    the key. A call nested inside the keyed one gets no key."""
    key, caller = pending
    f = entered.f_back
    while f is not None and f is not caller and not _between(f, fns):
        f = f.f_back
    return key if f is caller else ABSENT


class Activation:
    """Rules made active by ``activate``; ``remove()`` (or leaving ``with``) ends them.

    Removing takes away exactly these rules, whatever was activated or removed
    since (activations may end in any order); removing twice does nothing; removing
    in another context (task, thread) is a ``ValueError`` that leaves them active.
    """

    __slots__ = ("rules", "glob", "token", "active", "engine", "since")

    def __init__(self, rules: tuple[Rule, ...], glob: bool, token: Any, engine: Engine):
        self.rules, self.glob, self.token, self.engine = rules, glob, token, engine
        self.active = True
        self.since = engine.epoch  # made after the engine's last reset, or not

    def remove(self) -> None:
        """End this activation (idempotent)."""
        self.engine.deactivate(self)

    def __enter__(self) -> Activation:
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False


class Resident:
    """Rules whose code stays installed while their owner lives, entered per call.

    Made once per overlay of a selfless object (and again when the registry of
    decorated functions changes): the interest counts go up once, so the
    instrumented code stays in place between calls, and a call is ``enter`` (one
    context-variable set, the plan looked up by its base) and ``leave``. The owner
    gives the counts back with ``hold.release()``, typically from a
    ``weakref.finalize`` when it is collected; functions that nothing else needs
    get their idle code again. While it is held, a decorated function that it
    could match but that runs outside its calls runs instrumented code whose
    ``_enter`` answers "not interested" with one dict lookup; undecorated functions
    (library code named by path) are instrumented for the calls only.
    """

    __slots__ = ("rules", "plans", "hold", "per_call", "last", "engine")

    def __init__(self, rules: tuple[Rule, ...], engine: Engine | None = None):
        self.engine = engine = ENGINE if engine is None else engine
        self.rules = rules
        self.plans: dict = {}  # plan with these rules, by base (see activate)
        # Only decorated functions stay instrumented between calls. Others (library
        # code named by path, `nn.Linear`) are instrumented for the call only: held
        # code there would change what other selectors' `>` means (an instrumented
        # frame is a call between two others) and what torch.compile traces, for as
        # long as the object lives.
        interests = [r.interest for r in rules]
        held = tuple({st: n for st, n in i.items() if st.tooled} for i in interests)
        per_call = ({st: n for st, n in i.items() if not st.tooled} for i in interests)
        self.per_call = tuple(i for i in per_call if i)
        self.hold = _Hold(held, engine)
        # (base plan, plan with our rules) of the last call: one tuple, so that
        # threads read a consistent pair; the base's identity skips hashing its rules.
        self.last: tuple = (None, None)

    def enter(self) -> tuple[Token, Plan, bool]:
        """Make the rules active in this context for one call; pass the triple to ``leave``."""
        engine = self.engine
        plan = engine.plan.get()
        base, new = self.last
        if plan is not base or new.epoch != engine.epoch:
            hold = self.hold
            if hold.held and hold.since < engine.reset_epoch:
                hold.take()  # the engine was reset since: count again
            epoch = engine.epoch
            if plan.epoch != epoch:
                plan = engine.current_plan()
            new = self.plans.get((plan.rules, epoch, engine))
            if new is None:
                new = engine._plan_with(plan, self.rules, self.plans)
            self.last = (plan, new)
        # torch.compile's stance follows the calls, not the hold: an object kept alive
        # must not keep compiled code elsewhere eager.
        if self.per_call:
            with engine._section:
                engine._install_counted(self.per_call)
                overlay_started()
            counted = True
        elif nothing_compiled():
            # No compiled code to keep eager (the common case): no lock and no count;
            # ``leave`` sees whether something was compiled during the call.
            counted = False
        else:
            with engine.lock:  # the stance's count changes no interest counts
                overlay_started()
            counted = True
        return engine.plan.set(new), new, counted

    def leave(self, token: Token, plan: Plan, counted: bool) -> None:
        """End the call's activation (in the context that entered, like a token)."""
        engine = self.engine
        try:
            if engine.plan.get() is plan:
                engine.plan.reset(token)
                return
            # Something activated during the call is still active: keep it, drop ours.
            with engine.lock:
                rules_now = engine.plan.get().rules
                engine.plan.reset(token)
                engine.plan.set(Plan(_without(rules_now, self.rules), engine.epoch, engine.rules))
        finally:
            if counted or engine.deferred or not nothing_compiled():
                with engine.lock:
                    if self.per_call:
                        engine._install(_count(engine.counts, self.per_call, -1))
                    if counted:
                        overlay_ended()
                    elif not nothing_compiled():
                        compiled_meanwhile()  # torch.compile first called in the call
                    if engine.deferred:  # objects collected inside the engine: released here
                        engine._release_deferred()


class _Hold:
    """Interest counts taken once and given back once.

    It holds only the counts (functions' states and name sets) and the engine,
    never the rules, whose functions may refer to the owner: a finalizer that
    calls ``release`` must not keep its owner alive.
    """

    __slots__ = ("interests", "held", "engine", "since")

    def __init__(self, interests: tuple[dict, ...], engine: Engine):
        self.interests = interests
        self.engine = engine
        self.held, self.since = False, -1
        self.take()

    def take(self) -> None:
        """Take the counts (again, if the engine was reset since they were taken)."""
        engine = self.engine
        with engine.lock:
            if self.since < engine.reset_epoch:
                engine._install_counted(self.interests)
                self.held, self.since = True, engine.epoch

    def release(self) -> None:
        """Give the counts back (idempotent); safe from a finalizer."""
        engine = self.engine
        if engine.lock._is_owned():
            # Collected while this thread is inside the engine (the collector runs on
            # any allocation, maybe mid-count): released when that section ends.
            engine.deferred.append(self)
            return
        with engine.lock:
            self._release_locked()

    def _release_locked(self) -> None:
        if self.held:
            self.held = False
            engine = self.engine
            if self.since >= engine.reset_epoch:  # else a reset took the counts already
                engine._install(_count(engine.counts, self.interests, -1))


class _Section:
    """The engine's lock as a context manager that releases, at the end, the holds
    collected meanwhile (``Engine.engine_lock``); it keeps no state of its own."""

    __slots__ = ("engine",)

    def __init__(self, engine: Engine):
        self.engine = engine

    def __enter__(self) -> None:
        self.engine.lock.acquire()

    def __exit__(self, *exc) -> None:
        try:
            self.engine._release_deferred()
        finally:
            self.engine.lock.release()


# The default engine, and its methods under the names the rest of ptera imports.
ENGINE = Engine()
HELPERS = ENGINE.helpers
current_plan = ENGINE.current_plan
active_rule_count = ENGINE.active_rule_count
activate = ENGINE.activate
deactivate = ENGINE.deactivate
check_owner = ENGINE.check_owner
after_exit = ENGINE.after_exit
exit_batch = ENGINE.exit_batch
missed_calls = ENGINE.missed_calls
engine_lock = ENGINE.engine_lock
_enter = ENGINE._enter
_exit = ENGINE._exit
_setkey = ENGINE._setkey


# ---------------------------------------------------------------------------
# The coleo-facing overlay API


def _handler_fn(owner: str, name: str, fn: Any) -> Any:
    if fn is not None and not callable(fn):
        raise TypeError(f"{owner}: {name} is a function, not {fn!r:.60}")
    return fn


def _only_checked(owner: str, check: bool, pass_info: bool) -> None:
    # 1.4's accumulators took these two; say plainly what is not kept rather than
    # run the handler differently.
    if not check:
        raise ValueError(f"{owner}(check=False): value filters such as 'f(x=1)' are always checked")
    if pass_info:
        raise ValueError(
            f"{owner}(pass_info=True): 1.4's accumulator and element objects do not exist"
            " here; handlers receive the dict of captures only"
        )


def _trigger_rule(comp: Any, trigger: Callable) -> Rule:
    def emit(data):
        trigger(data)
        return ABSENT

    return Rule(comp, emit, immediate=True, raw=True)


class _Handler:
    """What ``Immediate`` and ``Total`` share: 1.4's accumulator arguments."""

    kind = ""

    def __init__(self, selector, trigger, intercept, close, check, pass_info):
        self.selector = _in_caller(selector)
        self.trigger = _handler_fn(self.kind, "trigger", trigger)
        self.intercept = _handler_fn(self.kind, "intercept", intercept)
        self.close = _handler_fn(self.kind, "close", close)
        _only_checked(self.kind, check, pass_info)

    def rules(self) -> tuple[Rule, ...]:
        """The rules that run these handlers: intercept, trigger (both when the focus
        is set), then close (once each match is complete)."""
        comp = compile_selector(self.selector)
        rules = []
        if self.intercept is not None:
            rules.append(Rule(comp, self.intercept, immediate=True, raw=True, intercepts=True))
        if self.trigger is not None:
            rules.append(_trigger_rule(comp, self.trigger))
        if self.close is not None:
            rules.append(Rule(comp, self.close, immediate=False, raw=True))
        return tuple(rules)

    def rule(self) -> Rule:
        """The one rule of a handler given one function (see ``rules``)."""
        rules = self.rules()
        if len(rules) != 1:
            raise ValueError(f"this {self.kind} has {len(rules)} rules: use rules()")
        return rules[0]


class Immediate(_Handler):
    """Call ``trigger`` (listen) or ``intercept`` (replace) when the focus is set.

    As in 1.4, ``trigger`` is the second argument; each function receives a dict of
    ``Capture`` objects (``.value``, ``.values``, ``.name``); ``close`` is called
    once each match is complete. Names in a text selector resolve in the caller's
    scope.
    """

    kind = "Immediate"

    def __init__(
        self,
        selector,
        trigger: Callable | None = None,
        *,
        intercept: Callable | None = None,
        close: Callable | None = None,
        check: bool = True,
        pass_info: bool = False,
    ):
        super().__init__(selector, trigger, intercept, close, check, pass_info)


def _in_caller(selector):
    """A selector whose names resolve where the handler was made (unless it has an env)."""
    sel = select(selector)  # a TypeError unless a string or a Scope
    return sel if sel.env is not None else select(sel, env=caller_env(1))  # past ptera


class Total(_Handler):
    """Call ``close(captures)`` with pooled captures when each match completes
    (and, as in 1.4, ``trigger``/``intercept`` when the focus is set)."""

    kind = "Total"

    def __init__(
        self,
        selector,
        close: Callable,
        trigger: Callable | None = None,
        *,
        intercept: Callable | None = None,
        check: bool = True,
        pass_info: bool = False,
    ):
        if close is None:  # the one function a Total needs (others are checked below)
            raise TypeError("Total: close is a function, not None")
        super().__init__(selector, trigger, intercept, close, check, pass_info)


class BaseOverlay:
    """A context manager that activates handlers (``Immediate``, ``Total`` or rules)."""

    def __init__(self, *handlers):
        for h in handlers:
            if not (isinstance(h, Rule) or hasattr(h, "rule")):
                raise TypeError(
                    "BaseOverlay needs handlers (Immediate, Total or Rule),"
                    f" not {type(h).__name__} ({h!r:.60})"
                )
        self.handlers = list(handlers)
        # Per context (a tuple, so that a copied context cannot change ours): one
        # overlay shared by threads or tasks ends, on exit, the activation it made there.
        self._activations: ContextVar[tuple[Activation, ...]] = ContextVar(
            "ptera_base_overlay", default=()
        )

    def fork(self) -> BaseOverlay:
        """A new overlay of the same type with the same handlers."""
        return type(self)(*self.handlers)

    def add(self, *handlers) -> None:
        """Add handlers (used from the next time the overlay is entered)."""
        self.handlers.extend(handlers)

    def __enter__(self):
        rules = tuple(
            r for h in self.handlers for r in ((h,) if isinstance(h, Rule) else _rules_of(h))
        )
        self._activations.set((*self._activations.get(), activate(rules)))
        return self

    def __exit__(self, *exc):
        stack = self._activations.get()
        if not stack:
            raise ValueError(
                "this BaseOverlay was not entered here: its rules were activated in another"
                " context (another asyncio task, thread or copied context); end them there"
            )
        deactivate(stack[-1])  # from a copied context: raises, nothing changed
        self._activations.set(stack[:-1])
        return False


def _rules_of(handler: Any) -> tuple[Rule, ...]:
    rules = getattr(handler, "rules", None)
    return rules() if callable(rules) else (handler.rule(),)


def caller_env(skip: int = 1) -> Mapping[str, Any]:
    """Names visible where the user called us: locals over globals, past ptera's frames.

    ``skip`` frames above the caller are passed over (never past the outermost one),
    then any frame of ptera itself or of ``contextlib``.
    """
    f = sys._getframe(1)
    for _ in range(skip):
        if f.f_back is None:
            break
        f = f.f_back
    while f is not None and f.f_globals.get("__name__", "").split(".")[0] in (
        "ptera",
        "contextlib",
    ):
        f = f.f_back
    if f is None:
        return {}
    # A snapshot: names resolve as they were bound here, even if rebound later (rules
    # are compiled late, and again when the registry changes; see effects._kept).
    return {**f.f_globals, **f.f_locals}


def __getattr__(name: str):
    # 1.4's `ptera.overlay` also held these; they live in compat.py (imported late,
    # since compat builds on this module).
    if name in ("Overlay", "no_overlay", "autotool"):
        from . import compat

        return getattr(compat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
