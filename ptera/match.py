"""Compile a selector tree into per-function templates: what each function reports.

For every function a selector can touch, a ``Template`` says which of its variables
matter (``vars``: real variable name -> the ``VarSpec`` of each matching selector
variable), where the node sits in the tree (``node``, ``parent``, ``deep``), and
what key the call must have. The engine keeps these in dicts keyed by function
id, so the hot path never walks a selector.

Decisions:

* ``f >> x`` is ``x`` in ``f`` plus ``x`` in any instrumented function below it:
  the ``@tooled`` ones, and the undecorated ones that ``f`` can reach through the
  names its code uses (reach.py says what that finds and what it cannot).
* ``h[1] as h`` is a keyed variable (a ``Recurrence`` slot or a subscript
  assignment ``h[k] = v``) of the enclosing scope when ``h`` names no function,
  or when some instrumented function assigns ``h[k] = ...``.
* Naming a variable that the named function does not have is an error, not an
  empty stream; so is naming a function that cannot be found.
* ``$v:Tag`` also covers the ``self`` attributes a method reads, checked on the
  value's class when it is reported; a ``>>`` wildcard reaches, for those
  attributes, the ``forward`` of the module classes in scope (the ``env``'s modules
  and their submodules): ``f >> $p:Parameter`` with ``net`` in scope.
* A name that resolves to a module *instance* (``net.2``, ``model.layers.3.mlp``,
  or an instance bound in ``env``) matches only that instance's calls: an identity
  filter on the method's ``self`` (``Same``). A class name matches every instance.
* A key (``Linear[1]``) on functions that no call can key (not decorated, and no
  decorated function has ``h[k] = f(...)``) is a ``SelectorError``.
* A free name the function reads (a global, a builtin) is one of its variables
  when named (``f > debug``): its value at entry is reported and can be
  replaced. ``$v`` and ``*`` stand for the function's own variables only.
"""

from __future__ import annotations

import sys
import types
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .lookup import (
    FnState,
    NotFound,
    _getattr_path,
    bound_instance,
    module_forwards,
    registry_version,
    resolve,
    state_for,
    tooled_states,
)
from .reach import reachable
from .selector import (
    NOVALUE,
    Focus,
    Predicate,
    Scope,
    SelectorError,
    UnmatchedSelectorWarning,
    UnresolvedSelectorError,
    Var,
)
from .tags import Tag, annotation_matches, spelled_tags
from .transform import ABSENT, CALLKEY, TransformError, self_name

META_TAGS = {"@enter": ("#enter", "#receive"), "@exit": ("#exit", "#yield")}
FRAME_POINT = "#frame"  # interest marker: run the entry/exit of the call
META_POINTS = {"#enter", "#exit", "#error", "#value", "#yield", "#receive"}
# The caches below are emptied whole when they pass these sizes: a program uses a few
# dozen selectors, and one that builds new ones in a loop must not grow without bound.
CACHE_SIZE = 512  # compiled selectors (and their fast, identity-keyed entries)
NAMES_CACHE_SIZE = 1024  # a selector tree's function and tag names: cheap entries


@dataclass(frozen=True, slots=True)
class VarSpec:
    """A selector variable as it applies to one real variable."""

    out: str | None  # key in results (None: not captured)
    focus: Focus
    value: Any = NOVALUE  # equality filter
    key: Any = NOVALUE  # for keyed variables: the key filter
    key_out: str | None = None  # for keyed variables: capture the key as
    isa: Any = NOVALUE  # attribute points (``self.weight``): the tag the value's class must match


@dataclass(slots=True)
class Template:
    """One selector node as matched in one function."""

    node: int
    parent: int | None
    deep: bool
    vars: dict[str, tuple[VarSpec, ...]] = field(default_factory=dict)
    key: Any = NOVALUE
    key_out: str | None = None
    filters: int = 0  # number of variables with an equality filter
    holder: bool = False  # holds the focus (or is the root of a focusless selector)
    collects: bool = False  # a holder without a focus variable: pools from entry to exit
    # What a plan needs to know, fixed once compiled (see Template.settle):
    push: bool = False  # has child nodes: its calls are outer scopes
    keyed: bool = False  # filters or captures the call key
    direct: bool = False  # needs a direct parent (`f > g`)
    exits: bool = False  # captures `#exit` or `#error`
    simple: bool = False  # a root that only ever fires on its focus: needs no state

    def settle(self, pushers: set[int]) -> None:
        self.push = self.node in pushers
        self.keyed = self.key is not NOVALUE or self.key_out is not None
        self.direct = self.parent is not None and not self.deep
        self.exits = "#exit" in self.vars or "#error" in self.vars
        self.simple = (
            self.parent is None
            and not self.filters
            and all(
                s.focus == Focus.PRIMARY and s.key is NOVALUE
                for sp in self.vars.values()
                for s in sp
            )
        )


@dataclass(slots=True)
class Compiled:
    """A selector compiled against the functions it names."""

    selector: Scope
    templates: dict[int, list[Template]]  # fid -> templates
    interest: dict[FnState, set[str]]
    focus: Var | None
    secondary: Var | None
    parents: dict[int, int | None]  # node -> parent node
    pushers: set[int]  # nodes with child nodes
    total_handlers: dict = field(default_factory=dict)  # shared by total rules (capture.Rule)
    # What could match nothing (each warned about once, when compiled): the errors
    # that `select(..., strict=True)` raises.
    unmatched: tuple[SelectorError, ...] = ()


def _user_level() -> int:
    """The ``stacklevel`` of the first frame outside ptera (where the user made the probe)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("ptera."):
        frame, level = frame.f_back, level + 1
    return level


def _error(selector: Scope, node: Var | Scope | None, needle: str, message: str) -> SelectorError:
    """An error about ``node`` of ``selector``: the caret on ``needle`` within that node,
    in the text as typed (the canonical form for a tree built by hand)."""
    text = selector.source
    if text is None:
        text = str(selector)
        return UnresolvedSelectorError(text, max(text.find(needle), 0), message)
    span = node.span if node is not None else None
    if span is not None:
        col = text.find(needle, *span)
        return UnresolvedSelectorError(text, col if col >= 0 else span[0], message)
    return UnresolvedSelectorError(text, max(text.find(needle), 0), message)


def _is_slot(node: Scope) -> bool:
    return bool(node.children) and all(
        isinstance(c, Var) and c.name in ("#key", "#value") for c in node.children
    )


def _slot_var(node: Scope) -> tuple[Var, Var | None]:
    """``h{#key=1, #value as h}`` seen as the variable ``h`` and its key filter
    (``h[1]`` alone captures the slot under ``h``, not nothing)."""
    key = next((c for c in node.children if c.name == "#key"), None)
    val = next((c for c in node.children if c.name == "#value"), None)
    var = Var(
        node.fn,
        val.capture if val else node.fn,
        focus=val.focus if val else Focus.NONE,
        value=val.value if val else NOVALUE,
        deep=node.deep,
        span=node.span,
    )
    return var, key


class _NoVariable(Exception):
    """A named function lacks a variable; the ``SelectorError`` is built only if raised
    (printing the selector for each of n missing captures would be quadratic)."""

    def __init__(self, var: Var, st: FnState, variables: dict, comprehended: bool = False):
        super().__init__(var.name)
        self.var, self.name, self.st, self.variables = var, var.name, st, variables
        self.comprehended = comprehended

    def error(self, selector: Scope) -> SelectorError:
        if self.comprehended:
            message = (
                f"'{self.name}' of '{self.st.qualname}' lives only in a comprehension, a scope"
                " of its own that ptera does not instrument: assign it in the function"
                " (a for loop) to probe it"
            )
            return _error(selector, self.var, self.name, message)
        source = self.st.source
        known = ", ".join(n for n, x in self.variables.items() if x.provenance != "external")
        if source.stores:
            known += f"; the attributes it assigns: {', '.join(source.stores)}"
        if source.attributes:
            known += f"; the attributes of self it reads: {', '.join(source.attributes)}"
        message = f"'{self.st.qualname}' has no variable '{self.name}' (it has: {known or 'none'})"
        return _error(selector, self.var, self.name, message)


class Same:
    """An identity filter: the call's ``self`` is this object (``net.2 > input``).

    Holds a weak reference where it can, so a compiled selector in the cache does
    not keep a model alive; equal to another ``Same`` of the same live object.
    """

    def __init__(self, obj: Any, capture: bool = False):
        self.capture = capture  # results include the object as `self`
        try:
            self.ref = weakref.ref(obj)
        except TypeError:
            self.ref = lambda: obj

    def matches(self, value: Any) -> bool:
        return value is self.ref()

    def __eq__(self, other):
        return isinstance(other, Same) and self.ref() is other.ref() and self.ref() is not None

    def __hash__(self):
        return id(self.ref())

    def __repr__(self):
        return f"Same({self.ref()!r})"


class Satisfies:
    """A ``~`` filter resolved: the value passes when ``fn(value)`` is true."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any):
        self.fn = fn

    def matches(self, value: Any) -> bool:
        try:
            return bool(self.fn(value))
        except Exception as exc:
            exc.add_note(f"(raised by the selector's ~ function {self.fn!r} on {value!r:.80})")
            raise

    def __repr__(self):
        return f"Satisfies({self.fn!r})"


def _bound(name: str, env: Mapping[str, Any] | None) -> Any:
    """What a ``~`` name (``pred``, ``cfg.pred``) stands for in ``env`` now, or a
    ``ValueError`` saying why nothing."""
    head, *rest = name.split(".")
    if not env or head not in env:
        raise ValueError(f"'{head}' is not bound where the selector is used (give it in env=)")
    try:
        return _getattr_path(env[head], rest)
    except AttributeError as exc:
        raise ValueError(f"cannot resolve '{name}': {exc}") from None


def satisfies(pred: Predicate, env: Mapping[str, Any] | None) -> Satisfies:
    """Resolve a ``~`` filter in ``env`` (``ValueError`` saying what went wrong)."""
    fn = _bound(pred.name, env)
    if pred.call:
        try:
            fn = fn(*pred.args, **dict(pred.kwargs))
        except Exception as exc:
            raise ValueError(f"{pred} raised {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"'{pred}' is {type(fn).__name__}, not a function of the value")
    return Satisfies(fn)


def _predicate_target(var: Var, env: Mapping[str, Any] | None) -> Any:
    """What a ``~`` name stands for now (``cfg.pred``: the attribute, not ``cfg``)."""
    try:
        return _bound(var.value.name, env)
    except ValueError:
        return None


class _Compiler:
    """Walk a selector tree once, emitting the templates of every node.

    Working state: ``templates`` (fid -> templates) and ``interest`` (function ->
    names it must report), the results; ``parents`` and ``pushers`` (the tree's
    shape, by node number); ``counter`` (the next node number); ``roots`` (node ->
    the nearest named functions above it, where ``>>`` starts reaching);
    ``keyed_calls`` (some node filters or captures a call key).
    """

    def __init__(
        self, selector: Scope, env, collect: bool, resolved: dict, instances=None, forwards=()
    ):
        self.instances: dict[str, Same] = instances or {}
        self.forwards: tuple[FnState, ...] = forwards
        self.selector = selector
        self.collect = collect
        self.resolved = resolved
        self.env = env
        self.templates: dict[int, list[Template]] = {}
        self.unmatched_errors: list[SelectorError] = []
        self.interest: dict[FnState, set[str]] = {}
        self.parents: dict[int, int | None] = {}
        self.pushers: set[int] = set()
        self.counter = 0
        self.roots: dict[int, list[FnState] | None] = {}  # node -> nearest named functions
        self.keyed_calls = False
        self.predicates: dict[int, Satisfies] = {}  # id of a Var -> its `~` filter

    def compile(self) -> Compiled:
        root = self.selector
        if root.fn is not None and _is_slot(root) and not self._names_function(root):
            root = Scope(None, (root,))
        self.node(root, None)
        if self.keyed_calls:
            for st in tooled_states():
                if st.source.keyed_calls:
                    self.interest.setdefault(st, set()).add(CALLKEY)
        for temps in self.templates.values():
            for t in temps:
                t.settle(self.pushers)
        return Compiled(
            self.selector,
            self.templates,
            self.interest,
            self.selector.focus,
            self.selector.secondary,
            self.parents,
            self.pushers,
            unmatched=tuple(self.unmatched_errors),
        )

    def functions(self, node: Scope) -> list[FnState] | None:
        if node.fn is None:
            return None
        found = self.resolved[node.fn]
        if isinstance(found, NotFound):
            message = f"cannot find function '{node.fn}': {found}"
            # the caret under the part that failed (`7` in `net.layers.7`)
            needle = node.fn if found.part is None else f".{found.part}"
            err = _error(self.selector, node, needle, message)
            if found.part is not None and err.column < len(err.text):
                err = type(err)(err.text, err.column + 1, message)
            raise err
        if isinstance(found, TransformError):
            raise _error(self.selector, node, node.fn, str(found))
        return found

    def node(self, node: Scope, parent: int | None, extra: tuple = ()) -> None:
        """Emit the templates of ``node`` (a child of node ``parent``), then of its children.

        ``extra`` adds (variable, key) pairs: a ``>>`` variable of the parent, looked for
        in this (anonymous, deep) node.
        """
        nid = self.counter
        self.counter += 1
        self.parents[nid] = parent
        fns = self.functions(node)
        key, key_out = self.call_key(node)
        pairs, sub_scopes = self.captures(node, fns, extra)
        if key is not NOVALUE or key_out is not None:
            self.check_keyed(node, fns)
        holds = self.holds_focus(pairs, parent)
        deep_vars = [(v, k) for v, k in pairs if v.deep]
        if sub_scopes or deep_vars:
            self.pushers.add(nid)
        self.roots[nid] = fns if fns is not None else self.roots.get(parent)
        # With several functions under one name, a variable must exist in one of them.
        missing: dict[int, Exception | None] = {}
        for st in self.candidates(node, fns, pairs, parent):
            try:
                variables = st.variables()
            except TransformError as exc:
                if fns is None:
                    continue
                raise _error(self.selector, node, node.fn or "*", str(exc)) from None
            template = Template(nid, parent, node.deep, key=key, key_out=key_out, holder=holds)
            template.vars = self.match_vars(st, variables, pairs, fns is not None, missing)
            template.filters = sum(var.value is not NOVALUE for var, _ in pairs)
            template.collects = holds and (self.collect or self.selector.focus is None)
            if fns is None and not template.vars and not sub_scopes and not deep_vars:
                continue
            self.templates.setdefault(st.fid, []).append(template)
            self.interest.setdefault(st, set()).update(template.vars, (FRAME_POINT,))
        for err in missing.values():
            if isinstance(err, _NoVariable):
                raise err.error(self.selector) from None
            if err is not None:
                raise err
        for var, keyvar in deep_vars:
            # `f >> x`: x also in any instrumented call below f.
            below = replace(var, deep=False)
            self.node(Scope(None, (), deep=True), nid, extra=((below, keyvar),))
            if (var.name is not None and not var.name.startswith("#")) or (
                var.name is None and var.tag is not None and var.tag not in META_TAGS
            ):
                self.check_found(var, node)
        for child in sub_scopes:
            self.node(child, nid)

    def call_key(self, node: Scope) -> tuple[Any, str | None]:
        """The key filter and key capture of a call (``f[0]``, ``f[$i]``)."""
        key, key_out = NOVALUE, None
        for child in node.children:
            if isinstance(child, Var) and child.name == "#key":
                key, key_out = child.value, child.capture
                self.keyed_calls = True
        return key, key_out

    def captures(
        self, node: Scope, fns: list[FnState] | None, extra: tuple
    ) -> tuple[list[tuple[Var, Var | None]], list[Scope]]:
        """The (variable, key) pairs to look for in ``node``'s calls, and its sub-scopes.

        Besides its own variables: ``extra``, the method's ``self`` when ``node``
        names an instance, and keyed variables written as scopes (``h[1] as h``).
        """
        pairs: list[tuple[Var, Var | None]] = [
            (child, None)
            for child in node.children
            if isinstance(child, Var) and child.name != "#key"
        ]
        pairs += extra
        same = self.instances.get(node.fn)
        if same is not None and fns:
            # A module named by instance (`net.2 > input`) or a method of one object
            # (`cow.cry > x`, which also captures its first argument under its own
            # name, `self`, `salf` or `cls`, as 1.4): only that object's calls match.
            me = self_name(fns[0].source.fn, fns[0].source.tree)
            if me is not None:
                pairs.append((Var(me, me if same.capture else None, value=same), None))
        sub_scopes = []
        for child in node.children:
            if isinstance(child, Scope):
                if _is_slot(child) and not self._names_function(child):
                    pairs.append(_slot_var(child))
                else:
                    sub_scopes.append(child)
        return pairs, sub_scopes

    def holds_focus(self, pairs: list[tuple[Var, Var | None]], parent: int | None) -> bool:
        """Whether this node's templates hold the focus (or pool a focusless selector)."""
        if self.collect:
            return parent is None
        return any(v.focus == Focus.PRIMARY for v, _ in pairs) or (
            parent is None and self.selector.focus is None
        )

    def candidates(
        self,
        node: Scope,
        fns: list[FnState] | None,
        pairs: list[tuple[Var, Var | None]],
        parent: int | None,
    ) -> list[FnState]:
        """The functions whose calls ``node`` may match: the named ones, else any
        instrumented one (and, below a ``>>``, what the parent's functions reach)."""
        if fns is not None:
            return fns
        candidates = tooled_states()
        if node.deep:
            # `f >> $p:Parameter` reaches the parameters stock modules read (`self.weight`).
            candidates = candidates + [st for st in self.forwards if not st.tooled]
        named = bool(pairs) and all(v.name is not None for v, _ in pairs)
        if node.deep and named and self.roots.get(parent):
            # Only for named variables: `f >> $v` would instrument every callee.
            candidates = candidates + self.reachable(self.roots[parent], candidates)
        if node.tag is not None:  # `*:Tag(...)`: by the functions' return annotations
            wanted = self.tag(node.tag)
            candidates = [st for st in candidates if annotation_matches(_returns(st), wanted)]
            if not candidates:
                err = _error(
                    self.selector,
                    node,
                    node.tag,
                    f"no decorated function returns a value annotated with the tag or type"
                    f" '{node.tag}' (yet): this selector matches nothing",
                )
                self.unmatched(err)
        return candidates

    def match_vars(
        self,
        st: FnState,
        variables: dict,
        pairs: list[tuple[Var, Var | None]],
        named_fn: bool,
        missing: dict[int, Exception | None],
    ) -> dict[str, tuple[VarSpec, ...]]:
        """Real variable name -> the specs of the pairs it matches, in function ``st``.

        A pair that finds nothing records its error in ``missing`` (by position) unless
        another function already matched it; ``named_fn``: the node names ``st``, so a
        variable it lacks is an error rather than a miss.
        """
        found: dict[str, list[VarSpec]] = {}  # lists, not tuples: n captures stay linear
        for i, (var, keyvar) in enumerate(pairs):
            try:
                names = self.names_for(var, st, variables, strict=named_fn and not var.deep)
                if not named_fn and not st.tooled and st in self.forwards:
                    # A stock module's forward: only the attributes it reads.
                    names = [n for n in names if n in st.source.attributes]
            except (SelectorError, _NoVariable) as err:
                missing.setdefault(i, err)
                names = []
            else:
                missing[i] = None
            spec = VarSpec(
                out=var.out_name,
                focus=Focus.NONE if self.collect else var.focus,
                value=self.value_filter(var),
                key=keyvar.value if keyvar is not None else NOVALUE,
                key_out=keyvar.capture if keyvar is not None else None,
            )
            for name in names:
                one = spec
                store = st.source.stores.get(name)
                if var.tag is not None and (
                    name in st.source.attributes
                    or (store is not None and store.annotation is ABSENT)
                ):
                    # An attribute has no annotation: its value's class is checked.
                    one = replace(spec, isa=self.tag(var.tag, var))
                found.setdefault(name, []).append(one)
        # A variable captured under several names (`f(!y, y as yy)`): the plain
        # captures first, so the result the focus fires has them all.
        return {
            name: tuple(specs) if len(specs) == 1 else tuple(sorted(specs, key=_fires_last))
            for name, specs in found.items()
        }

    def unmatched(self, err: SelectorError) -> None:
        """A part of the selector that can match nothing: a warning (see ``Compiled``)."""
        self.unmatched_errors.append(err)
        warnings.warn(str(err), UnmatchedSelectorWarning, stacklevel=_user_level())

    def check_found(self, var: Var, node: Scope) -> None:
        """Warn when no function a ``>>`` reaches has ``var`` (a typo, most often).

        A warning, not an error: a function decorated later (a lazy import) may
        still have it, and the selector is compiled again when one is.
        """
        temps = [t for ts in self.templates.values() for t in ts]
        if var.tag is None:
            if any(var.name in t.vars for t in temps):
                return
        elif any(
            # `>> $p:Tag` (few per selector): whether any variable passed the filter
            spec.out == var.out_name
            for t in temps
            for specs in t.vars.values()
            for spec in specs
        ):
            return
        where = f"below '{node.fn}'" if node.fn else "anywhere"
        what = (
            f"a variable '{var.name}'"
            if var.tag is None
            else f"a variable{f' {var.name!r}' if var.name else ''} annotated with the tag"
            f" or type '{var.tag.lstrip('@')}'"
        )
        err = _error(
            self.selector,
            var,
            var.name or var.tag,
            f"no function ptera can reach {where} has {what} (yet): this"
            " selector matches nothing (a misspelled name?)",
        )
        self.unmatched(err)

    def check_keyed(self, node: Scope, fns: list[FnState] | None) -> None:
        """``Linear[1] > x`` can match only if something calls ``Linear`` with a key."""
        if fns is None or any(st.tooled for st in fns):
            return  # `f[k](...)` keys a call of a decorated function
        if any(st.source.keyed_calls for st in tooled_states()):
            return  # `h[k] = g(...)` in decorated code may call it
        raise _error(
            self.selector,
            node,
            node.fn,
            f"'{node.fn}[...]' can never match: a call gets a key only from `h[k] = f(...)`"
            " in a @tooled function or from `f[k](...)` on a @tooled f, and no @tooled"
            " function does either; to pick one module, name it by path (`net.2 > input`,"
            " `model.layers.3.mlp > x`) or bind it in env",
        )

    def reachable(self, roots: list[FnState], known: list[FnState]) -> list[FnState]:
        """Undecorated functions that the named ones may call (``outer >> x``, reach.py)."""
        have = {st.fid for st in known}
        fns = [st.function for st in roots if st.function is not None]
        found = [state_for(fn) for fn in reachable(fns)]
        return [st for st in dict.fromkeys(found) if st.fid not in have]

    def _names_function(self, node: Scope) -> bool:
        # `h[1] as h` is a keyed variable when some instrumented function assigns
        # `h[k] = ...`, even if a function named `h` exists somewhere.
        if not isinstance(self.resolved.get(node.fn), list):
            return False
        return not any(node.fn in st.source.keyed for st in tooled_states())

    def names_for(self, var: Var, st: FnState, variables: dict, strict: bool) -> list[str]:
        if var.name is not None and var.name.startswith("#"):
            return (
                [var.name]
                if var.name in META_POINTS or var.name.startswith(("#loop_", "#endloop_"))
                else []
            )
        if var.name is not None:
            v = variables.get(var.name)
            if (v is None or v.provenance == "external") and var.name in st.source.attributes:
                return [var.name]
            store = st.source.stores.get(var.name) if v is None else None
            if store is not None:  # `self.x`, assigned here
                if var.tag is not None and not self.store_passes(var, st, store, strict):
                    return []
                return [var.name]
            base, _, attr = var.name.partition(".")
            if (
                v is None
                and attr in st.source.attributes
                and base == self_name(st.source.fn, st.source.tree)
            ):
                return [attr]  # `Linear.forward > self.weight`: the attribute it reads
            if v is None and strict and base in variables:
                # `f > x.y` where `f` has `x` but never assigns `x.y`: nothing, with a
                # warning (1.4 gave nothing; `x.y` may be set by a form not instrumented)
                err = _NoVariable(var, st, variables).error(self.selector)
                self.unmatched(err)
                return []
            if v is None and var.name in st.source.comprehended and strict:
                raise _NoVariable(var, st, variables, comprehended=True)
            if v is None:
                if strict:
                    raise _NoVariable(var, st, variables)
                return []
            names = [var.name]
        elif var.tag in META_TAGS:
            return list(META_TAGS[var.tag])
        else:
            names = [n for n, x in variables.items() if x.provenance != "external"]
        if var.tag is not None:
            wanted = self.tag(var.tag, var)
            kept = [n for n in names if annotation_matches(variables[n].annotation, wanted)]
            if var.name is None:
                kept += list(st.source.attributes)  # checked on their values (VarSpec.isa)
            if strict and not kept:
                err = self.no_tagged(var, st, [n for n in names if n in variables], variables)
                if var.name is not None:
                    raise err
                # `f > $v:Tag` that no variable has: nothing, with a warning (1.4 gave
                # nothing, and its own tests rely on it; a named `f > v:Tag` was its error)
                self.unmatched(err)
            names = kept
        return names

    def store_passes(self, var: Var, st: FnState, store, strict: bool) -> bool:
        """Whether ``self.x:T`` can match the store ``self.x``: by its annotation if
        it has one (``self.x: T = v``), else by each value's class (checked as it
        comes); a tag needs the annotation, since no value carries one."""
        wanted = self.tag(var.tag, var)
        if store.annotation is not ABSENT:
            ok = annotation_matches(store.annotation, wanted)
            why = f"is annotated {_annotation_text(store.annotation)}"
        else:  # (`@Name` is 1.4's spelling of a tag)
            ok = not (isinstance(wanted, Tag) or var.tag.startswith("@"))
            why = "has no annotation, and a tag filter reads annotations"
        if not ok and strict:
            raise _error(
                self.selector,
                var,
                var.tag,
                f"'{st.qualname}' assigns '{var.name}' but it {why}: '{var.tag}'"
                " never passes, so this selector matches nothing",
            )
        return ok

    def value_filter(self, var: Var) -> Any:
        """``var``'s ``=`` literal, or its ``~`` function resolved (once per node)."""
        if not isinstance(var.value, Predicate):
            return var.value
        got = self.predicates.get(id(var))
        if got is None:
            try:
                got = self.predicates[id(var)] = satisfies(var.value, self.env)
            except ValueError as exc:
                raise _error(self.selector, var, var.value.name, str(exc)) from None
        return got

    def no_tagged(self, var: Var, st: FnState, names: list[str], variables: dict) -> Exception:
        """The error for a tag or type filter that no variable of ``st`` can pass."""
        shown = var.tag.lstrip("@")
        annotated = ", ".join(
            f"{n}: {_annotation_text(variables[n].annotation)}"
            for n in names
            if variables[n].annotation is not ABSENT
        )
        what = f"variable '{var.name}'" if var.name else "variable"
        return _error(
            self.selector,
            var,
            var.tag,
            f"'{st.qualname}' has no {what} annotated with the tag or type '{shown}'"
            f" (annotated: {annotated or 'none'}), so this selector matches nothing",
        )

    def tag(self, text: str, var: Var | None = None) -> Any:
        env = self.env or {}
        if text.startswith("##"):
            if text not in env:
                raise _error(self.selector, var, text, f"'{text}' is not bound in env")
            return env[text]
        if text.startswith("@"):  # 1.4's spelling of a tag: `$x:@Important`
            return text[1:]
        head, *rest = text.split(".")
        if head in env:
            obj = env[head]
            try:
                for part in rest:
                    obj = getattr(obj, part)
            except AttributeError:
                return text
            if isinstance(obj, (Tag, type)):
                return obj
        return text.split(".")[-1] if not rest else text


def compile_selector(
    selector: Scope, env: Mapping[str, Any] | None = None, *, collect: bool = False
) -> Compiled:
    """Resolve the functions a selector names and build its per-function templates.

    With ``collect``, the root call holds every capture, focuses included, until
    it ends (what ``Grad`` needs: all the tensors of one call at once).
    """
    env = env if env is not None else selector.env
    heads, tag_names, fresh = _names_of(selector)
    forwards = tuple(module_forwards(env)) if _reaches_attributes(selector) else ()
    fast = None
    if (
        not fresh
        and env is not None
        and all(h in env for h in heads)
        and all(t in env for t in tag_names)
    ):
        # Every name is bound in the caller: the bound objects (and the registry's
        # version) decide the result, so a probe entered in a loop skips resolution.
        # Keyed by identities (hashing a selector tree costs more than this lookup).
        bound = (selector, *(env[h] for h in heads), *(env[t] for t in tag_names))
        fast = (collect, *map(id, bound), registry_version(), *forwards)
        hit = _fast_cache.get(fast)
        if hit is not None and all(a is b for a, b in zip(hit[0], bound)):
            return hit[1]
    resolved: dict[str, list[FnState] | Exception] = {}
    instances: dict[str, Same] = {}
    for node in selector.walk():
        if isinstance(node, Scope) and node.fn is not None and node.fn not in resolved:
            try:
                resolved[node.fn] = resolve(node.fn, env)
            except (NotFound, TransformError) as exc:
                resolved[node.fn] = exc
            obj = bound_instance(node.fn, env)
            if obj is not None:
                instances[node.fn] = Same(obj)
    signature = tuple(
        (name, tuple(st.fid for st in found) if isinstance(found, list) else str(found))
        for name, found in resolved.items()
    )
    tags = tuple(
        (n.tag, id(_tag_object(n.tag, env)))
        for n in selector.walk()
        if n.tag is not None  # (a variable's, or a function's: `*:Tag(...)`)
    ) + tuple(  # `~` filters: the function each names, as bound now
        (n.value, id(_predicate_target(n, env)))
        for n in selector.walk()
        if isinstance(n, Var) and isinstance(n.value, Predicate)
    )
    for name, obj in _instances(selector, env, resolved).items():
        instances.setdefault(name, Same(obj, capture=True))
    key = (selector, collect, signature, tags, registry_version(), *instances.items(), *forwards)
    compiled = None if fresh else _cache.get(key)
    if compiled is None:
        compiled = _Compiler(selector, env, collect, resolved, instances, forwards).compile()
        if fresh:
            return compiled
        if len(_cache) > CACHE_SIZE:
            _cache.clear()
        _cache[key] = compiled
    if fast is not None:
        if len(_fast_cache) > CACHE_SIZE:
            _fast_cache.clear()
        _fast_cache[fast] = (bound, compiled)
    return compiled


def _instances(selector: Scope, env, resolved: dict) -> dict[str, Any]:
    """The objects that bound methods named like ``cow.cry`` (or bound in ``env``)
    belong to: an instance, or the class of a classmethod (``A.cm``)."""
    out = {}
    if not env:
        return out
    for name, found in resolved.items():
        head, *rest = name.split(".")
        if head not in env or not isinstance(found, list):
            continue
        try:
            obj = _getattr_path(env[head], rest)
        except AttributeError:
            continue
        if isinstance(obj, types.MethodType):
            out[name] = obj.__self__
        elif isinstance(obj, classmethod) and rest:
            # looked up in the class dict: bind it to the class the selector names
            out[name] = _getattr_path(env[head], rest[:-1])
    return out


_cache: dict = {}
_fast_cache: dict = {}  # (selector, collect, ids of bound names, version) -> (objects, compiled)


def _returns(st: FnState) -> Any:
    """The return annotation of ``st``'s function, evaluated (``ABSENT`` if none, or if
    it cannot be evaluated: such a function has no tag to match)."""
    fn = st.function
    ann = getattr(fn, "__annotations__", {}).get("return", ABSENT) if fn is not None else ABSENT
    for _ in range(2):  # (a quoted annotation under `from __future__ import annotations`)
        if not isinstance(ann, str):
            break
        if ann.startswith("@"):  # 1.4's spelling, as for variables
            return spelled_tags(ann)
        try:
            ann = eval(ann, fn.__globals__)
        except Exception:
            return ABSENT
    return ann


def _reaches_attributes(selector: Scope) -> bool:
    """Whether a ``>>`` variable may name module attributes (``f >> $p:Parameter``)."""
    return any(
        isinstance(n, Var) and n.deep and (n.tag is not None or n.name is not None)
        for n in selector.walk()
    )


def _names_of(selector: Scope) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """The names of a selector's functions and its tags (what the env binds), and
    whether it is compiled afresh each time: a ``~`` function made by a call
    (``j~throttle(5)``) may keep state, so each probe or overlay gets its own, as
    1.4 made one per ``select``."""
    got = _names_cache.get(id(selector))
    if got is None or got[0] is not selector:
        if len(_names_cache) > NAMES_CACHE_SIZE:
            _names_cache.clear()
        got = _names_cache[id(selector)] = (selector, _names(selector))
    return got[1]


_names_cache: dict[int, tuple] = {}


def _names(selector: Scope) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    names = [n.fn for n in selector.walk() if isinstance(n, Scope) and n.fn is not None]
    tags = {
        n.tag if n.tag.startswith("##") else n.tag.split(".")[0]: None
        for n in selector.walk()
        if n.tag is not None
    }
    predicates = [
        n.value.name
        for n in selector.walk()
        if isinstance(n, Var) and isinstance(n.value, Predicate)
    ]
    tags.update((p.split(".")[0], None) for p in predicates)
    # Only plain names qualify: an attribute path (`mod.f`, `~cfg.pred`) or an import
    # path (`/mod/f`) may be rebound behind the object, so those always resolve. "/"
    # is never in an env, which turns the fast path off.
    heads = tuple(dict.fromkeys(n if n.isidentifier() else "/" for n in names))
    if any("." in p for p in predicates):
        heads += ("/",)
    fresh = any(
        isinstance(n, Var) and isinstance(n.value, Predicate) and n.value.call
        for n in selector.walk()
    )
    return heads, tuple(tags), fresh


def _fires_last(spec: VarSpec) -> bool:
    return spec.focus != Focus.NONE


def _annotation_text(annotation: Any) -> str:
    return getattr(annotation, "__qualname__", None) or str(annotation)


def _tag_object(text: str, env) -> Any:
    head = text.split(".")[0]
    return env.get(text if text.startswith("##") else head) if env else None
