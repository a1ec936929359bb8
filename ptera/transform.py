"""Rewrite a function's AST so that each of its points can report to the engine.

A *point* is a place where a variable gets a value: an argument on entry, every
assignment form, a bare declaration (``W: Parameter``), the return value
(``#value``), yields and what they receive, loop iterations, call entry and exit.

One function has many instrumented variants: each reports only the points in its
*interest* set, so a probe on ``b`` pays nothing for ``a``. Variants are compiled
on demand and cached. Helpers reach the code through one global, ``__ptera__``
(the trailing underscores keep it safe from class-private name mangling), so the
variant keeps the original's free variables and can be swapped into the same
function object, and a user's module gains one name only.

Decisions:

* Points are reported after Python's own evaluation, in Python's order; a report
  may return a replacement value (an override), which is what gets stored. For
  unpacking targets the names are bound first, then each is reported and rebound.
* ``h[k] = v`` evaluates ``v``, ``h`` and ``k`` once, in Python's order, and reports
  variable ``h`` with key ``k``. When ``v`` is a call and some active selector keys
  calls, ``k`` is evaluated before the call and becomes the callee's key.
* An item target anywhere else is the same keyed report: unpacked (``h[0], x =
  pair``, starred, nested), chained (``x = h[0] = v``), annotated (``h[0]: int =
  v``), a ``for`` or ``with`` target (``for i, h[i] in ...``). Where it is wanted the
  statement is written out in Python's own steps: the value unpacked into
  temporaries, then each target stored in turn, its container and key evaluated
  just before its store, so that a later key sees the names stored before it and
  an unpacking that fails midway leaves the earlier stores made. ``with a as h[0],
  b`` becomes ``with a as t: h[0] = t; with b: ...``. Names in such a statement
  are still reported after it; a call there gets no key. Comprehension targets
  are left alone.
* ``obj.attr = v`` is a point named ``"obj.attr"`` when a selector names it
  (``Koala.moo > self.x``, 1.4), in any assignment form (annotated, unpacked,
  chained, ``+=``, a ``for`` or ``with`` target; ``self.__n`` as the source spells
  it): ``v`` is reported, and what the report returns is stored. Only a name's
  attribute, and never for ``$v`` or the every-point variant: those mean variables.
* A declared variable with no value (``z: int``) takes its value from the
  call's *state* (a selfless object's, see ``selfless.py``), else it holds a
  sentinel and reading it raises ``PteraNameError`` naming the variable and the
  function. ``x = default(v)`` (or ``Override(v)``), recognised by the callee's
  name, is *settled* against the state by priority. Functions with either kind
  of point fetch their state once per call, even when idle.
* Nested functions, lambdas and classes defined in the body are left alone: they
  are functions of their own.
* ``case`` patterns bind variables like assignments: each name a pattern binds is
  reported at the start of its case body (after the guard, which sees the
  unreported value).
* One global rather than one per helper costs an attribute read per use. The helpers
  used at points (``report``, ``report_key``, ``settle``, ``ABSENT``) are bound at
  entry to hidden locals (``__ptera_report__ = __ptera__.report``) when the code may
  use them more than once a call (twice, or in a loop), so that those uses cost what
  the old globals did; other helpers are read in place (``__ptera__.enter(7)``). What
  remains is a few nanoseconds a call (1-2% of W1's probe on one value).
* The engine's locals (``__ptera_F__``, bound helpers, temporaries) are hidden from
  ``locals()``, ``vars()`` and ``dir()`` called in the body (they return filtered
  copies); ``frame.f_locals``, debuggers and tracebacks still show them.
* In a method, each read of ``self.a`` is a point named ``a`` (unless a local is
  named ``a``), so ``Linear > weight`` sees the parameter ``Linear.forward`` reads.
  Attributes are kept out of ``__ptera_info__`` (coleo's contract lists locals).
* A free name (a global, builtin or closure variable the body reads and never
  assigns) is a point only where it is wanted: when a selector names it, or a
  state gives it a value. It gets its value once, at entry (after the
  arguments): the state's, else an override's; every read in the body then sees
  that value, or reads the name as Python would when nothing replaced it, so a
  global that changes during the call is still seen. Reads inside nested
  functions and lambdas are theirs and see the real name.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import sys
import textwrap
import types
import warnings
from dataclasses import dataclass, field
from typing import Any

from .sentinel import Sentinel

HELPER = "__ptera__"  # the one global instrumented code reads; its attributes are the helpers
FRAME = "__ptera_F__"  # the local holding the call's frame record
STATE = "__ptera_S__"  # the local holding the call's state

# The helpers, by their attribute names on ``__ptera__`` (see ``helper_namespace``).
ENTER, EXIT, FREE, TAKE = "enter", "exit", "free", "take"  # once a call
REPORT, REPORT_KEY, SETTLE = "report", "report_key", "settle"  # at points
MISSING, SETKEY, HIDE = "missing", "setkey", "hide"  # rarely: errors, keyed calls, locals()
SUSPEND, RESUME = "suspend", "resume"  # around a generator's yields
DELEGATE = "delegate"  # `yield from x` of a generator some rule reaches
ABSENT_NAME = "ABSENT"  # the sentinel `ABSENT` itself
# Used at points, maybe many times a call: bound once at entry to a hidden local where
# the code may use one more than once (see `_bind_helpers`), so that each use costs what
# reading a global did; the others are read where they are used.
BOUND_AT_ENTRY = (REPORT, REPORT_KEY, SETTLE, ABSENT_NAME)
PRIORITY_WRAPPERS = ("default", "Override")  # callees that make `x = default(v)` settle

CALLKEY = "#callkey"  # interest flag: pass subscript keys to calls


ABSENT = Sentinel("ABSENT", truthy=False)


def hide_helpers(names: Any) -> Any:
    """``locals()``, ``vars()`` or ``dir()`` of an instrumented call, less the engine's names.

    The helper names are removed from the frame's own dict, which is returned, so that
    ``locals() is locals()`` and ``exec(code, globals(), locals())`` behave as in plain
    Python. Under ``sys.settrace`` the interpreter re-syncs that dict at each trace event,
    so the helpers can reappear in it until the next ``locals()``.
    """
    if isinstance(names, dict):
        for k in [k for k in names if _is_helper(k)]:
            del names[k]
        return names
    if isinstance(names, list):
        return [k for k in names if not _is_helper(k)]
    return names


def _is_helper(name: Any) -> bool:
    return isinstance(name, str) and name.startswith("__ptera_") and name.endswith("__")


def helper_namespace(helpers: dict[str, Any]) -> types.ModuleType:
    """The object that instrumented code reads as ``__ptera__``: ``helpers`` as attributes.

    A module, because Python reads a module's attributes as fast as a global.
    """
    namespace = types.ModuleType(HELPER, "ptera's helpers for instrumented code")
    vars(namespace).update(helpers)
    return namespace


class TransformError(Exception):
    """A function cannot be instrumented (no source, a lambda, ...)."""


@dataclass(slots=True)
class Variable:
    """What is known of one variable of a function (the coleo-facing record)."""

    annotation: Any
    provenance: str  # "argument", "body" or "external"
    doc: str | None
    location: tuple

    def as_dict(self) -> dict:
        return {
            "annotation": self.annotation,
            "provenance": self.provenance,
            "doc": self.doc,
            "location": self.location,
        }


@dataclass(slots=True)
class Source:
    """The parsed source of a function, ready to be instrumented."""

    fn: types.FunctionType
    tree: ast.FunctionDef | ast.AsyncFunctionDef
    filename: str
    lines: list[str]
    variables: dict[str, Variable]
    declared: frozenset[str]  # declared without a value
    defaulted: frozenset[str]  # assigned `default(v)` / `Override(v)`
    keyed: frozenset[str]  # names assigned by subscript, `h[k] = v`
    loops: frozenset[str]  # names of for-loop variables
    keyed_calls: bool
    class_name: str | None
    fid: int = 0
    comprehended: frozenset[str] = frozenset()  # bound only in comprehensions (not points)
    # ``self.a`` read in a method's body, by attribute name: points named ``a``.
    attributes: dict[str, Variable] = field(default_factory=dict)
    # ``obj.attr = v`` in the body, by ``"obj.attr"``: points a selector names so.
    stores: dict[str, Variable] = field(default_factory=dict)
    variants: dict = field(default_factory=dict)
    # Free names (read, never assigned) that some state gives a value: every
    # variant, the idle one included, reads them from the call's state first.
    free_state: frozenset[str] = frozenset()

    @property
    def local_names(self) -> frozenset[str]:
        return frozenset(
            n for n, v in self.variables.items() if v.provenance in ("argument", "body")
        )

    @property
    def stateful(self) -> bool:
        """Whether calls fetch a state (declared, defaulted or state-set free variables)."""
        return bool(self.declared or self.defaulted or self.free_state)


def _class_of(qualname: str) -> str | None:
    parts = qualname.split(".")
    if len(parts) >= 2 and parts[-2] != "<locals>":
        return parts[-2]
    return None


def _mangling_class(qualname: str) -> str | None:
    """The class whose name Python mangles ``__private`` names with in this function:
    the nearest class around it (``K`` for ``K.m.<locals>.inner`` too)."""
    scopes = qualname.split(".")[:-1]
    for i in range(len(scopes) - 1, -1, -1):
        if scopes[i] != "<locals>" and scopes[i + 1 : i + 2] != ["<locals>"]:
            return scopes[i]
    return None


def parse_function(fn: types.FunctionType) -> Source:
    """Read and parse the source of ``fn``; collect its variables."""
    code = fn.__code__
    if code.co_name == "<lambda>":
        raise TransformError(
            f"cannot instrument a lambda ({code.co_filename}:{code.co_firstlineno})"
        )
    filename = code.co_filename
    try:
        lines = _source_lines(fn)
        block = inspect.getblock(lines[code.co_firstlineno - 1 :])
    except (OSError, TypeError, IndexError) as exc:
        raise TransformError(
            f"cannot instrument {fn.__qualname__}: its source is not available ({exc});"
            f" it was defined in {filename!r}: code run by `python -c` or `exec` of a string"
            " has no source, define the function in a file or a notebook cell"
        ) from None
    if filename.startswith("<frozen "):
        filename = inspect.getsourcefile(sys.modules[fn.__module__]) or filename
    src = textwrap.dedent("".join(block))
    module = ast.parse(src)
    ast.increment_lineno(module, code.co_firstlineno - 1)
    tree = module.body[0]
    if not isinstance(tree, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise TransformError(f"cannot instrument {fn.__qualname__}: not a def statement")
    plain = any(
        getattr(d, "id", None) in ("staticmethod", "classmethod") for d in tree.decorator_list
    )
    tree.decorator_list = []
    all_lines = lines
    scan = _Scanner()
    for stmt in tree.body:
        scan.visit(stmt)
    annotations = _annotations(fn, scan)  # (locals' and `self.x: T = v`'s)
    variables = _collect_variables(fn, tree, scan, all_lines, annotations)
    attributes = {} if plain else _self_attributes(fn, tree, variables)
    return Source(
        fn=fn,
        tree=tree,
        filename=filename,
        lines=all_lines,
        variables=variables,
        declared=frozenset(scan.declared.keys() - scan.assigned.keys() - _arg_names(tree.args)),
        defaulted=frozenset(scan.defaulted),
        keyed=frozenset(scan.keyed),
        loops=frozenset(scan.loops),
        keyed_calls=scan.keyed_calls,
        class_name=_class_of(fn.__qualname__),
        attributes=attributes,
        stores={
            name: Variable(
                annotations.get(name, ABSENT),
                "attribute",
                _comment_above(all_lines, line),
                (filename, fn.__qualname__, line),
            )
            for name, line in scan.stores.items()
        },
        comprehended=frozenset(scan.comprehended - variables.keys()),
    )


def self_name(fn: types.FunctionType, tree: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The name of a method's first argument (``self``), or None for a plain function."""
    args = tree.args.posonlyargs + tree.args.args
    if _class_of(fn.__qualname__) is None or not args:
        return None
    return args[0].arg


def _self_attributes(fn, tree, variables: dict[str, Variable]) -> dict[str, Variable]:
    """The attributes of ``self`` a method reads (``Linear.forward`` reads ``weight``).

    A name that is also a local variable stays the local's: one name, one point.
    """
    me = self_name(fn, tree)
    if me is None:
        return {}
    found: dict[str, Variable] = {}
    for stmt in tree.body:
        for node in _walk_own_scope(stmt):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Load)
                and isinstance(node.value, ast.Name)
                and node.value.id == me
                and node.attr not in found
                and variables.get(node.attr, _EXTERNAL).provenance == "external"
            ):
                loc = (fn.__code__.co_filename, fn.__qualname__, node.lineno)
                found[node.attr] = Variable(ABSENT, "attribute", None, loc)
    return found


def _walk_own_scope(node: ast.AST):
    """``ast.walk`` that does not enter nested functions, lambdas and classes (``node``
    itself being one included)."""
    todo = [] if isinstance(node, _SCOPES) else [node]
    while todo:
        n = todo.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if not isinstance(child, _SCOPES):
                todo.append(child)


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _source_lines(fn: types.FunctionType) -> list[str]:
    """The lines of the file that defines ``fn`` (frozen stdlib modules included)."""
    try:
        return inspect.findsource(fn.__code__)[0]
    except OSError:
        if not fn.__code__.co_filename.startswith("<frozen "):
            raise  # `exec` of a string, `python -c`: the module's file is another text
        module = sys.modules.get(fn.__module__)
        path = module and inspect.getsourcefile(module)
        lines = path and linecache.getlines(path)
        if not lines:
            raise
        return lines


_EXTERNAL = Variable(ABSENT, "external", None, ())


def _arg_names(args: ast.arguments) -> set[str]:
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return set(names)


def _leaves(target: ast.AST) -> list[ast.AST]:
    """The single targets of an assignment target, in order (tuples, lists and
    starred targets opened)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [leaf for elt in target.elts for leaf in _leaves(elt)]
    if isinstance(target, ast.Starred):
        return _leaves(target.value)
    return [target]


def _target_names(target: ast.AST) -> list[str]:
    return [leaf.id for leaf in _leaves(target) if isinstance(leaf, ast.Name)]


def _stored_attribute(target: ast.AST) -> str | None:
    """``"obj.attr"`` for an assignment target ``obj.attr`` (a name's attribute)."""
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        return f"{target.value.id}.{target.attr}"
    return None


def _attribute_leaves(target: ast.AST) -> list[ast.Attribute]:
    """The targets ``obj.attr`` (a name's attribute) in an assignment target."""
    return [leaf for leaf in _leaves(target) if _stored_attribute(leaf)]


def _item_names(target: ast.AST) -> list[str]:
    """The names ``h`` of the item targets ``h[k]`` in an assignment target."""
    return [
        leaf.value.id
        for leaf in _leaves(target)
        if isinstance(leaf, ast.Subscript) and isinstance(leaf.value, ast.Name)
    ]


def _pattern_names(pattern: ast.pattern) -> list[str]:
    """The names a ``case`` pattern binds, in source order."""
    found = []
    for node in ast.walk(pattern):
        name = getattr(node, "rest" if isinstance(node, ast.MatchMapping) else "name", None)
        if isinstance(name, str):
            found.append((node.end_lineno, node.end_col_offset, name))  # where the name ends
    return [name for *_, name in sorted(found)]


class _Scanner(ast.NodeVisitor):
    """Find the variables a function body binds and reads (not nested scopes)."""

    def __init__(self):
        self.assigned: dict[str, int] = {}
        self.declared: dict[str, int] = {}
        self.annotations: dict[str, ast.expr] = {}
        self.loaded: set[str] = set()
        self.loops: set[str] = set()
        self.defaulted: set[str] = set()
        self.keyed: set[str] = set()
        self.keyed_calls = False
        self.comprehended: set[str] = set()  # names bound only by comprehensions
        self.stores: dict[str, int] = {}  # `obj.attr = v`: "obj.attr" -> first line

    def bind(self, name: str, line: int) -> None:
        self.assigned.setdefault(name, line)

    def visit_FunctionDef(self, node):
        self.bind(node.name, node.lineno)
        for d in node.decorator_list:
            self.visit(d)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.bind(node.name, node.lineno)

    def visit_Lambda(self, node):
        pass

    def visit_ListComp(self, node):
        # A comprehension is a scope of its own: its targets are not the function's.
        own: set[str] = set()
        for gen in node.generators:
            own.update(_target_names(gen.target))
        outer, self.loaded = self.loaded, set()
        assigned = dict(self.assigned)
        for child in ast.iter_child_nodes(node):
            self.visit(child)
        self.assigned = {**assigned, **{k: v for k, v in self.assigned.items() if k not in own}}
        self.comprehended.update(own - self.assigned.keys())
        self.loaded = outer | (self.loaded - own)

    visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp

    def visit_comprehension(self, node):
        self.visit(node.target)
        self.visit(node.iter)
        for cond in node.ifs:
            self.visit(cond)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            self.loaded.add(node.id)
        else:
            self.bind(node.id, node.lineno)

    def visit_AnnAssign(self, node):
        if isinstance(node.target, ast.Name):
            name = node.target.id
            self.annotations.setdefault(name, node.annotation)
            if node.value is None:
                self.declared.setdefault(name, node.lineno)
            else:
                self.bind(name, node.lineno)
                if is_priority_call(node.value):
                    self.defaulted.add(name)
                self.visit(node.value)
        else:
            if node.value is not None:
                stored = _stored_attribute(node.target)
                if stored:
                    self.annotations.setdefault(stored, node.annotation)
                self.store(node.target, node.lineno)
                self.keyed.update(_item_names(node.target))
                self.keyed_calls |= isinstance(node.target, ast.Subscript) and isinstance(
                    node.value, ast.Call
                )
            self.generic_visit(node)

    def visit_AugAssign(self, node):
        self.keyed.update(_item_names(node.target))
        self.store(node.target, node.lineno)
        self.generic_visit(node)

    def store(self, target: ast.AST, line: int) -> None:
        """Record the ``obj.attr`` targets in ``target`` (points named ``"obj.attr"``)."""
        for attribute in _attribute_leaves(target):
            self.stores.setdefault(_stored_attribute(attribute), line)

    def visit_For(self, node):
        for name in _target_names(node.target):
            self.loops.add(name)
        self.keyed.update(_item_names(node.target))
        self.store(node.target, node.lineno)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_With(self, node):
        for item in node.items:
            if item.optional_vars is not None:
                self.keyed.update(_item_names(item.optional_vars))
                self.store(item.optional_vars, node.lineno)
        self.generic_visit(node)

    visit_AsyncWith = visit_With

    def visit_Assign(self, node):
        target = node.targets[0]
        if len(node.targets) == 1 and isinstance(target, ast.Name) and is_priority_call(node.value):
            self.defaulted.add(target.id)
        for t in node.targets:
            self.keyed.update(_item_names(t))
            self.store(t, node.lineno)
        if (
            len(node.targets) == 1
            and isinstance(node.targets[0], ast.Subscript)
            and isinstance(node.value, ast.Call)
        ):
            self.keyed_calls = True
        self.generic_visit(node)

    def visit_ExceptHandler(self, node):
        if node.name:
            self.bind(node.name, node.lineno)
        self.generic_visit(node)

    def visit_match_case(self, node):
        for name in _pattern_names(node.pattern):
            self.bind(name, node.pattern.lineno)
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            self.bind((alias.asname or alias.name).split(".")[0], node.lineno)

    visit_ImportFrom = visit_Import


def priority_wrapper(node: ast.expr) -> str | None:
    """``"default"`` or ``"Override"`` when ``node`` calls one (bare or as an attribute)."""
    if not isinstance(node, ast.Call):
        return None
    fn = node.func
    name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else None
    return name if name in PRIORITY_WRAPPERS else None


def is_priority_call(node: ast.expr) -> bool:
    """Whether ``node`` is ``default(...)`` or ``Override(...)``."""
    return priority_wrapper(node) is not None


def _comment_above(lines: list[str], lineno: int) -> str | None:
    """The block of ``#`` comments right above line ``lineno`` (1-based), or a trailing one."""
    docs = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        docs.append(lines[i].strip()[1:].strip())
        i -= 1
    if docs:
        return "\n".join(reversed(docs))
    if 0 < lineno <= len(lines) and "#" in lines[lineno - 1]:
        code, _, comment = lines[lineno - 1].partition("#")
        if (
            code.strip()
            and comment.strip()
            and code.count("'") % 2 == 0
            and code.count('"') % 2 == 0
        ):
            return comment.strip()
    return None


def _eval_annotation(expr: ast.expr | None, fn: types.FunctionType) -> Any:
    """The value of a local's annotation; raises what evaluating it raises."""
    if expr is None:
        return ABSENT
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        if expr.value.startswith("@"):
            # 1.4's spelling of tags: `x: "@Important & @Other"`.
            from .tags import spelled_tags

            return spelled_tags(expr.value)
    env = {**fn.__globals__, **closure_values(fn)}
    return eval(compile(ast.Expression(expr), "<annotation>", "eval"), env)


def closure_values(fn: types.FunctionType) -> dict[str, Any]:
    """The values of ``fn``'s closure cells by name (empty cells left out)."""
    out = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    return out


def _annotations(fn, scan: _Scanner) -> dict[str, Any]:
    """The evaluated annotations of the body's locals.

    Python never evaluates a local's annotation, so one that fails (a typo such
    as ``torch.nn.Parmeter``) is no error for the program; but tag and type
    filters would then skip the variable without a word, so each failure is
    reported in one ``AnnotationWarning`` and the variable has no annotation.
    """
    from .tags import AnnotationWarning

    out, failures = {}, []
    for name, expr in scan.annotations.items():
        try:
            out[name] = _eval_annotation(expr, fn)
        except Exception as exc:
            out[name] = ABSENT
            failures.append((name, expr, exc))
    if failures:
        filename = fn.__code__.co_filename
        lines = "; ".join(
            f"`{name}: {ast.unparse(expr)}` at {filename}:{expr.lineno}"
            f" ({type(exc).__name__}: {exc})"
            for name, expr, exc in failures
        )
        one = len(failures) == 1
        warnings.warn_explicit(
            f"in {fn.__qualname__}, {'an annotation' if one else 'annotations'} failed to"
            f" evaluate: {lines}; tag and type filters (`$x:Tag`, `:Parameter`) will not"
            f" match {'this variable' if one else 'these variables'}",
            AnnotationWarning,
            filename,
            failures[0][1].lineno,
        )
    return out


def _collect_variables(fn, tree, scan: _Scanner, lines, annotations) -> dict[str, Variable]:
    qual = fn.__qualname__
    filename = fn.__code__.co_filename
    out: dict[str, Variable] = {}
    args = tree.args
    arg_nodes = args.posonlyargs + args.args + args.kwonlyargs
    arg_nodes += [a for a in (args.vararg, args.kwarg) if a is not None]
    for a in arg_nodes:
        ann = fn.__annotations__.get(a.arg, ABSENT)
        out[a.arg] = Variable(
            ann, "argument", _comment_above(lines, a.lineno), (filename, qual, a.lineno)
        )
    for name, line in sorted({**scan.declared, **scan.assigned}.items(), key=lambda kv: kv[1]):
        if name in out:
            continue
        ann = annotations.get(name, ABSENT)
        decl_line = scan.declared.get(name, line)
        out[name] = Variable(
            ann, "body", _comment_above(lines, decl_line), (filename, qual, decl_line)
        )
    for name in sorted(scan.loaded - out.keys()):
        out[name] = Variable(ABSENT, "external", None, (filename, qual, None))
    return out


# ---------------------------------------------------------------------------
# The rewriter


def _name(id: str, ctx=None) -> ast.Name:
    return ast.Name(id=id, ctx=ctx or ast.Load())


def _const(v: Any) -> ast.Constant:
    return ast.Constant(value=v)


def _helper(name: str) -> ast.expr:
    """Helper ``name`` as the code reads it: its entry-bound local, else ``__ptera__.name``."""
    if name in BOUND_AT_ENTRY:
        return _name(_bound_local(name))
    return ast.Attribute(value=_name(HELPER), attr=name, ctx=ast.Load())


def _bound_local(name: str) -> str:
    """The hidden local that holds helper ``name`` during a call."""
    return f"__ptera_{name}__"


def _call(helper: str, *args: ast.expr) -> ast.Call:
    """A call of helper ``helper``."""
    return ast.Call(func=_helper(helper), args=list(args), keywords=[])


def _report(name: str, value: ast.expr) -> ast.Call:
    return _call(REPORT, _name(FRAME), _const(name), value)


def _bind_helpers(body: list[ast.stmt], at: ast.stmt) -> list[ast.stmt]:
    """Bind at entry the helpers of ``BOUND_AT_ENTRY`` that ``body`` may use more than
    once a call: ``__ptera_report__ = __ptera__.report``, located at ``at``. A helper
    used once is read in place instead (``__ptera__.report(...)``): binding it would
    cost more than the one read it saves."""
    locals_ = {_bound_local(h): h for h in BOUND_AT_ENTRY}
    uses = dict.fromkeys(locals_, 0)
    todo = [(stmt, 1) for stmt in body]
    while todo:
        node, weight = todo.pop()
        if isinstance(node, ast.Name) and node.id in uses:
            uses[node.id] += weight
        if isinstance(node, _LOOPS):
            weight = 2  # a use in a loop may run many times
        todo.extend((child, weight) for child in ast.iter_child_nodes(node))
    once = {name for name, n in uses.items() if n == 1}
    if once:
        unbind = _ReadInPlace({name: locals_[name] for name in once})
        body[:] = [unbind.visit(stmt) for stmt in body]
    return [
        ast.copy_location(
            ast.Assign(
                targets=[_name(name, ast.Store())],
                value=ast.Attribute(value=_name(HELPER), attr=helper, ctx=ast.Load()),
            ),
            at,
        )
        for name, helper in locals_.items()
        if uses[name] > 1
    ]


_LOOPS = (
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


class _ReadInPlace(ast.NodeTransformer):
    """Turn reads of the given helper locals into ``__ptera__.<helper>``."""

    def __init__(self, helpers: dict[str, str]):
        self.helpers = helpers

    def visit_Name(self, node):
        helper = self.helpers.get(node.id)
        if helper is None:
            return node
        read = ast.Attribute(value=_name(HELPER), attr=helper, ctx=ast.Load())
        return ast.copy_location(read, node)


def _clearing(body: list, temporaries, node: ast.stmt, first: list = ()) -> ast.Try:
    """``try: body finally: first; temporaries = None``, located at ``node``: the
    temporaries are cleared even on an error (a value may be a large tensor)."""
    clear = ast.Assign(targets=[_name(t, ast.Store()) for t in temporaries], value=_const(None))
    stmt = ast.Try(body=body, handlers=[], orelse=[], finalbody=[*first, clear])
    _located([stmt], node, statements=True)
    return stmt


def _located(made: list, node: ast.stmt, statements: bool = False) -> list:
    """``made`` (code written for ``node``) at ``node``'s line: what the program raises
    there is shown at its own line. Nodes that have a location (visited user code)
    keep it; with ``statements``, every statement takes ``node``'s."""
    for stmt in made:
        for s in ast.walk(stmt):
            if (statements and isinstance(s, ast.stmt)) or (
                "lineno" in s._attributes and getattr(s, "lineno", None) is None
            ):
                ast.copy_location(s, node)
    return made


def _rebind(name: str, node: ast.AST) -> ast.Assign:
    """``name = report(F, "name", name)``, located at ``node``."""
    stmt = ast.Assign(targets=[_name(name, ast.Store())], value=_report(name, _name(name)))
    return ast.copy_location(stmt, node)


class _Instrumenter(ast.NodeTransformer):
    """Rewrite one function body for a given interest set (``None``: everything)."""

    def __init__(self, source: Source, interest: frozenset | None):
        self.source = source
        self.interest = interest
        self.tmp = 0
        self.me = self_name(source.fn, source.tree) if source.attributes else None

        # Free names that are points here: read from the state or reported at entry.
        external = {n for n, v in source.variables.items() if v.provenance == "external"}
        self.free = sorted(
            n
            for n in external
            if n in source.free_state or (interest is not None and n in interest)
        )
        # A generator's frame leaves the stack at each yield and comes back after it,
        # so that the consumer's calls between two values never see it as their caller.
        generator = source.fn.__code__.co_flags & (
            inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
        )
        self.pausing = bool(generator) and (interest is None or bool(interest))

    def wants(self, name: str) -> bool:
        return self.interest is None or name in self.interest

    def store_name(self, target: ast.expr) -> str | None:
        """``"obj.attr"`` for ``obj.attr = ...`` if a selector names it (``$v`` and the
        every-point variant give variables, not attributes), as the source spells it."""
        name = _stored_attribute(target)
        return name if name is not None and self.interest and name in self.interest else None

    def fresh(self) -> str:
        self.tmp += 1
        return f"__ptera_t{self.tmp}__"

    # Nested scopes are functions of their own.
    def visit_FunctionDef(self, node):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        return node

    def visit_Lambda(self, node):
        return node

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in self.free:
            # The value given at entry, else the name as Python would read it.
            held = _free_local(node.id)
            check = ast.IfExp(
                test=ast.Compare(
                    left=_name(held), ops=[ast.IsNot()], comparators=[_helper(ABSENT_NAME)]
                ),
                body=_name(held),
                orelse=_name(node.id),
            )
            return ast.copy_location(check, node)
        if isinstance(node.ctx, ast.Load) and node.id in self.source.declared:
            # Reading a declared variable that got no value is an error with a name.
            check = ast.IfExp(
                test=ast.Compare(
                    left=_name(node.id), ops=[ast.IsNot()], comparators=[_helper(ABSENT_NAME)]
                ),
                body=_name(node.id),
                orelse=_call(MISSING, _const(self.source.fid), _const(node.id)),
            )
            return ast.copy_location(check, node)
        return node

    def visit_Attribute(self, node):
        node = self.generic_visit(node)
        if (
            isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Name)
            and node.value.id == self.me
            and node.attr in self.source.attributes
            and self.wants(node.attr)
        ):
            # Each read of `self.weight` reports `weight`; an override replaces what is read.
            return ast.copy_location(_report(node.attr, node), node)
        return node

    def visit_NamedExpr(self, node):
        node.value = self.visit(node.value)
        name = node.target.id
        if self.wants(name):
            node.value = ast.copy_location(_report(name, node.value), node.value)
        return node

    def visit_Return(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        if self.wants("#value"):
            value = node.value or _const(None)
            node.value = ast.copy_location(_report("#value", value), node)
        return node

    def yielded(self, node: ast.Yield) -> None:
        """Rewrite what ``node`` yields in place: visited, and reported as ``#yield``."""
        if node.value is not None:
            node.value = self.visit(node.value)
        if self.wants("#yield"):
            node.value = ast.copy_location(_report("#yield", node.value or _const(None)), node)

    def visit_Yield(self, node):
        self.yielded(node)
        out = self.paused(node)
        if self.wants("#receive"):
            return ast.copy_location(_report("#receive", out), node)
        return out

    def visit_Expr(self, node):
        if not (isinstance(node.value, ast.Yield) and self.pausing) or self.wants("#receive"):
            return self.generic_visit(node)
        # `yield v` alone: off the stack while out, and back on it however it resumes,
        # a `throw()` or `close()` included, so that its `except` and `finally` blocks'
        # calls have it as their caller.
        self.yielded(node.value)
        back = ast.Expr(_call(RESUME, _name(FRAME), _const(None)))
        out = [
            ast.Expr(_call(SUSPEND, _name(FRAME))),
            ast.Try(
                body=[node],
                handlers=[
                    ast.ExceptHandler(
                        type=_name("BaseException"), name=None, body=[back, ast.Raise()]
                    )
                ],
                orelse=[back],
                finalbody=[],
            ),
        ]
        return _located(out, node)

    def visit_YieldFrom(self, node):
        node.value = self.visit(node.value)
        if not self.pausing:
            return node
        # `yield from delegate(FRAME, x)`: the generator stays on the stack while `x`
        # runs (it is the caller of what it delegates to) and leaves it at each value.
        node.value = ast.copy_location(_call(DELEGATE, _name(FRAME), node.value), node.value)
        return node

    def paused(self, node: ast.expr) -> ast.expr:
        """``resume(FRAME, (suspend(FRAME), <yield>)[1])``: off the stack while out."""
        if not self.pausing:
            return node
        pair = ast.Tuple(elts=[_call(SUSPEND, _name(FRAME)), node], ctx=ast.Load())
        inner = ast.Subscript(value=pair, slice=_const(1), ctx=ast.Load())
        return ast.copy_location(_call(RESUME, _name(FRAME), inner), node)

    def visit_Assign(self, node):
        target = node.targets[0]
        if len(node.targets) == 1 and isinstance(target, ast.Name):
            node.value = self.settle(target.id, self.visit(node.value))
            if self.wants(target.id):
                node.value = ast.copy_location(_report(target.id, node.value), node.value)
            return node
        stored = self.store_name(target) if len(node.targets) == 1 else None
        if stored is not None:
            # `self.x = v`: the value is reported as `self.x` before it is stored.
            node.value = self.visit(node.value)
            node.value = ast.copy_location(_report(stored, node.value), node.value)
            node.targets = [self.visit(target)]
            return node
        if (
            len(node.targets) == 1
            and isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and (self.wants(target.value.id) or self.wants(CALLKEY))
        ):
            return self.keyed_assign(node, target)
        if any(self.has_point_target(t) for t in node.targets):
            return self.split_assign(node)
        node = self.generic_visit(node)
        names = [n for t in node.targets for n in _target_names(t)]
        return [node] + [_rebind(n, node) for n in dict.fromkeys(names) if self.wants(n)]

    def has_point_target(self, target: ast.expr) -> bool:
        """Whether ``target`` holds an item target ``h[k]`` whose ``h`` is wanted, or an
        attribute target ``obj.attr`` that a selector names."""
        return any(self.wants(name) for name in _item_names(target)) or any(
            self.store_name(a) is not None for a in _attribute_leaves(target)
        )

    def split_assign(self, node: ast.Assign) -> list[ast.stmt]:
        """``h[0], x = pair``, ``x = h[0] = v``: Python's steps written out, so that
        each item target is a keyed store. The value is evaluated, then each target
        is stored in turn, left to right: a tuple is unpacked into temporaries and its
        elements stored in order, each container and key evaluated just before its
        store, as Python does. Names are reported after the statement, as when no
        item target is wanted: overriding a name gives the same program whatever
        else is probed."""
        names = [n for t in node.targets for n in _target_names(t)]
        held: list[str] = []
        out: list[ast.stmt] = []
        value = self.visit(node.value)
        (target,) = node.targets if len(node.targets) == 1 else (None,)
        if isinstance(target, (ast.Tuple, ast.List)):
            out += self.unpack(target, value, held)  # no temporary for the whole
        else:
            whole = self.fresh()
            held.append(whole)
            out.append(ast.Assign(targets=[_name(whole, ast.Store())], value=value))
            for target in node.targets:
                out += self.store(target, whole, held)
        rebinds = [_rebind(n, node) for n in dict.fromkeys(names) if self.wants(n)]
        return [_clearing(out, held, node), *rebinds]

    def store(self, target: ast.expr, source: str, held: list[str]) -> list[ast.stmt]:
        """Store temporary ``source`` into ``target`` as Python would, item targets of
        wanted names as keyed stores; the temporaries it makes are added to ``held``."""
        if isinstance(target, ast.Starred):
            target = target.value  # the starred value is already a list
        if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            name = target.value.id
            if self.wants(name):
                held_dict, held_key = self.fresh(), self.fresh()
                held += [held_dict, held_key]
                return [
                    ast.Assign(
                        targets=[_name(held_dict, ast.Store())], value=self.visit(_name(name))
                    ),
                    ast.Assign(
                        targets=[_name(held_key, ast.Store())], value=self.visit(target.slice)
                    ),
                    self.keyed_store(name, held_dict, held_key, source),
                ]
        stored = self.store_name(target)
        if stored is not None:  # `self.x`: reported, and what the report returns stored
            return [ast.Assign(targets=[self.visit(target)], value=_report(stored, _name(source)))]
        if isinstance(target, (ast.Tuple, ast.List)) and self.has_point_target(target):
            return self.unpack(target, _name(source), held)
        return [ast.Assign(targets=[self.visit(target)], value=_name(source))]

    def unpack(self, target: ast.Tuple | ast.List, value: ast.expr, held: list[str]):
        """Unpack ``value`` into one temporary per element of ``target`` (a starred
        one stays starred), then store each element in order."""
        parts = [self.fresh() for _ in target.elts]
        held += parts
        elts = [
            ast.Starred(_name(t, ast.Store()), ast.Store())
            if isinstance(elt, ast.Starred)
            else _name(t, ast.Store())
            for t, elt in zip(parts, target.elts)
        ]
        out = [ast.Assign(targets=[ast.Tuple(elts=elts, ctx=ast.Store())], value=value)]
        for part, elt in zip(parts, target.elts):
            out += self.store(elt, part, held)
        return out

    def keyed_assign(self, node: ast.Assign, target: ast.Subscript):
        """``h[k] = v``: report ``h`` with key ``k``; key a call on the right."""
        name = target.value.id
        value = self.visit(node.value)
        held_value, held_dict, held_key = self.fresh(), self.fresh(), self.fresh()
        out = []

        def hold(temporary: str, expr: ast.expr) -> None:
            out.append(ast.Assign(targets=[_name(temporary, ast.Store())], value=expr))

        keyed_call = isinstance(value, ast.Call) and self.wants(CALLKEY)
        held = [held_value, held_dict, held_key]
        if keyed_call:
            # Documented exception to Python's order: the key is computed first. The
            # callee and its arguments come next, in Python's order, before the key is
            # set: calls made while evaluating them are not the keyed call.
            hold(held_key, self.visit(target.slice))
            call = ast.Call(func=_name(self.fresh()), args=[], keywords=[])
            hold(call.func.id, value.func)
            for arg in value.args:
                held.append(self.fresh())
                starred = isinstance(arg, ast.Starred)
                hold(held[-1], arg.value if starred else arg)
                call.args.append(
                    ast.Starred(_name(held[-1]), ast.Load()) if starred else _name(held[-1])
                )
            for kw in value.keywords:
                held.append(self.fresh())
                hold(held[-1], kw.value)
                call.keywords.append(ast.keyword(arg=kw.arg, value=_name(held[-1])))
            held.append(call.func.id)
            out.append(ast.Expr(_call(SETKEY, _name(held_key))))
            hold(held_value, call)
            hold(held_dict, self.visit(_name(name)))
        else:
            hold(held_value, value)
            hold(held_dict, self.visit(_name(name)))
            hold(held_key, self.visit(target.slice))
        out.append(self.keyed_store(name, held_dict, held_key, held_value))
        # The key belongs to this call only: later calls (and calls after an error)
        # must not see it.
        unset = [ast.Expr(_call(SETKEY, _helper(ABSENT_NAME)))] if keyed_call else []
        return _clearing(out, held, node, unset)

    def keyed_store(self, name: str, held_dict: str, held_key: str, held_value: str) -> ast.stmt:
        """``held_dict[held_key] = held_value``, reported as ``name`` with that key."""
        stored = _name(held_value)
        if self.wants(name):
            stored = _call(REPORT_KEY, _name(FRAME), _const(name), stored, _name(held_key))
        sub = ast.Subscript(value=_name(held_dict), slice=_name(held_key), ctx=ast.Store())
        return ast.Assign(targets=[sub], value=stored)

    def visit_AugAssign(self, node):
        target = node.target
        if (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and self.wants(target.value.id)
        ):
            return self.keyed_augassign(node, target)
        stored = self.store_name(target)
        if stored is not None:
            # `self.n += v`: Python's steps (read, in-place operation, store), the new
            # value reported before it is stored.
            obj, held = self.fresh(), self.fresh()
            out = [
                ast.Assign(targets=[_name(obj, ast.Store())], value=self.visit(target.value)),
                ast.Assign(
                    targets=[_name(held, ast.Store())],
                    value=ast.Attribute(value=_name(obj), attr=target.attr, ctx=ast.Load()),
                ),
                ast.AugAssign(
                    target=_name(held, ast.Store()), op=node.op, value=self.visit(node.value)
                ),
                ast.Assign(
                    targets=[ast.Attribute(value=_name(obj), attr=target.attr, ctx=ast.Store())],
                    value=_report(stored, _name(held)),
                ),
            ]
            return _clearing(out, [obj, held], node)
        node = self.generic_visit(node)
        if isinstance(node.target, ast.Name) and self.wants(node.target.id):
            return [node, _rebind(node.target.id, node)]
        return node

    def keyed_augassign(self, node: ast.AugAssign, target: ast.Subscript) -> ast.stmt:
        """``h[k] += v``: report ``h`` with key ``k`` and the new value, in Python's
        order (``h``, ``k``, ``h[k]``, ``v``, the in-place operation, the store)."""
        name = target.value.id
        held = held_dict, held_key, held_value = self.fresh(), self.fresh(), self.fresh()

        def assign(temporary: str, expr: ast.expr) -> ast.stmt:
            return ast.Assign(targets=[_name(temporary, ast.Store())], value=expr)

        item = ast.Subscript(value=_name(held_dict), slice=_name(held_key), ctx=ast.Load())
        out = [
            assign(held_dict, self.visit(_name(name))),
            assign(held_key, self.visit(target.slice)),
            assign(held_value, item),
            ast.AugAssign(
                target=_name(held_value, ast.Store()), op=node.op, value=self.visit(node.value)
            ),
            self.keyed_store(name, held_dict, held_key, held_value),
        ]
        return _clearing(out, held, node)

    def visit_AnnAssign(self, node):
        target = node.target
        if node.value is not None and (
            self.store_name(target) is not None
            or (
                isinstance(target, ast.Subscript)
                and isinstance(target.value, ast.Name)
                and (self.wants(target.value.id) or self.wants(CALLKEY))
            )
        ):
            # In a function Python never evaluates this annotation: `self.x: T = v` and
            # `h[0]: T = v` run as `self.x = v` and `h[0] = v`, and are reported so.
            plain = ast.copy_location(ast.Assign(targets=[target], value=node.value), node)
            return self.visit_Assign(plain)
        if not isinstance(target, ast.Name):
            return self.generic_visit(node)
        name = node.target.id
        if node.value is not None:
            node.value = self.settle(name, self.visit(node.value))
            if self.wants(name):
                node.value = ast.copy_location(_report(name, node.value), node.value)
            return node
        if name not in self.source.declared:
            return node
        get = ast.Attribute(value=_name(STATE), attr="get", ctx=ast.Load())
        value = ast.Call(func=get, args=[_const(name), _helper(ABSENT_NAME)], keywords=[])
        if self.wants(name):
            value = _report(name, value)
        return ast.copy_location(ast.Assign(targets=[_name(name, ast.Store())], value=value), node)

    def settle(self, name: str, value: ast.expr) -> ast.expr:
        """``default(v)`` / ``Override(v)`` on the right: settle it against the state."""
        if name not in self.source.defaulted or not is_priority_call(value):
            return value
        call = _call(SETTLE, _name(STATE), _const(self.source.fid), _const(name), value)
        return ast.copy_location(call, value)

    def visit_For(self, node):
        names = _target_names(node.target)
        pre = []
        if self.has_point_target(node.target):
            # `for h[i] in xs`: each item goes to a temporary, stored into the
            # target as an assignment would.
            target, node.target = node.target, _name(self.fresh(), ast.Store())
            held = [node.target.id]
            pre.append(_clearing(self.store(target, node.target.id, held), held, node))
        node = self.generic_visit(node)
        pre += [_rebind(n, node) for n in names if self.wants(n)]
        loopvars = [n for n in names if self.wants(f"#loop_{n}") or self.wants(f"#endloop_{n}")]
        body = node.body
        for n in loopvars:
            if self.wants(f"#loop_{n}"):
                pre.append(ast.copy_location(ast.Expr(_report(f"#loop_{n}", _const(True))), node))
            if self.wants(f"#endloop_{n}"):
                end = ast.Expr(_report(f"#endloop_{n}", _const(True)))
                body = [
                    ast.copy_location(
                        ast.Try(body=body, handlers=[], orelse=[], finalbody=[end]), node
                    )
                ]
        node.body = pre + body
        return node

    visit_AsyncFor = visit_For

    def visit_With(self, node):
        stores = {}  # item index -> the store of its target, for item targets
        names = []
        for i, item in enumerate(node.items):
            target = item.optional_vars
            if target is not None and self.has_point_target(target):
                item.optional_vars = _name(self.fresh(), ast.Store())
                held = [item.optional_vars.id]
                names += _target_names(target)
                stores[i] = _clearing(self.store(target, held[0], held), held, node)
        node = self.generic_visit(node)
        names += [
            n
            for i, item in enumerate(node.items)
            if item.optional_vars and i not in stores
            for n in _target_names(item.optional_vars)
        ]
        node.body = [_rebind(n, node) for n in names if self.wants(n)] + node.body
        if not stores:
            return node
        # `with a as h[0], b:` is `with a as h[0]: with b:`; written so, each target
        # is stored before the next manager is entered, as in Python.
        kind, last = type(node), max(stores)
        body = node.body
        if node.items[last + 1 :]:
            body = [ast.copy_location(kind(items=node.items[last + 1 :], body=body), node)]
        for i in sorted(stores, reverse=True):
            start = max((j for j in stores if j < i), default=-1) + 1
            outer = kind(items=node.items[start : i + 1], body=[stores[i], *body])
            body = [ast.copy_location(outer, node)]
        return body[0]

    visit_AsyncWith = visit_With

    def visit_ExceptHandler(self, node):
        node = self.generic_visit(node)
        if node.name and self.wants(node.name):
            node.body = [_rebind(node.name, node)] + node.body
        return node

    def visit_Import(self, node):
        names = [(a.asname or a.name).split(".")[0] for a in node.names]
        return [node] + [_rebind(n, node) for n in names if self.wants(n)]

    def visit_match_case(self, node):
        node = self.generic_visit(node)
        names = dict.fromkeys(_pattern_names(node.pattern))
        node.body = [_rebind(n, node.pattern) for n in names if self.wants(n)] + node.body
        return node

    def visit_Call(self, node):
        node = self.generic_visit(node)
        fn = node.func
        if (
            isinstance(fn, ast.Name)
            and fn.id in ("locals", "vars", "dir")
            and not (node.args or node.keywords)
            and fn.id not in self.source.local_names
        ):
            return ast.copy_location(_call(HIDE, node), node)
        return node

    visit_ImportFrom = visit_Import

    # -- the function itself ----------------------------------------------
    def instrument(self, tree: ast.FunctionDef) -> ast.FunctionDef:
        body = [self.visit(stmt) for stmt in tree.body]
        body = [s for b in body for s in (b if isinstance(b, list) else [b])]
        doc = []
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                doc, body = [body[0]], body[1:]
        first = tree.body[0]
        take = []
        if self.source.stateful:
            fetch = _call(TAKE, _const(self.source.fid))
            take = [
                ast.copy_location(
                    ast.Assign(targets=[_name(STATE, ast.Store())], value=fetch), first
                )
            ]
        if self.interest is not None and not self.interest:
            # The light variant: only declarations and defaults are handled, no frame.
            setup = [ast.Assign(targets=[_name(FRAME, ast.Store())], value=_const(None))]
            get = ast.Attribute(value=_name(STATE), attr="get", ctx=ast.Load())
            setup += [
                ast.Assign(
                    targets=[_name(_free_local(n), ast.Store())],
                    value=ast.Call(func=get, args=[_const(n), _helper(ABSENT_NAME)], keywords=[]),
                )
                for n in self.free
            ]
            setup = take + [ast.copy_location(s, first) for s in setup]
            body = setup + (body or [ast.Pass()])
            bindings = _bind_helpers(body, first)
            tree.body = doc + bindings + body
            return tree
        enter = ast.Assign(
            targets=[_name(FRAME, ast.Store())], value=_call(ENTER, _const(self.source.fid))
        )
        args = [n for n in _arg_names(tree.args) if self.wants(n)]
        ordered = [a.arg for a in tree.args.posonlyargs + tree.args.args]
        ordered += [a.arg for a in (tree.args.vararg,) if a] + [a.arg for a in tree.args.kwonlyargs]
        ordered += [a.arg for a in (tree.args.kwarg,) if a]
        setup = [enter] + [_rebind(n, first) for n in ordered if n in args]
        state = _name(STATE) if self.source.stateful else _helper(ABSENT_NAME)
        for n in self.free:
            # Reported at entry like an argument; the lambda reads the name lazily,
            # so that an unset global is an error only if the body reads it.
            read = ast.Lambda(
                args=ast.arguments(
                    posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]
                ),
                body=_name(n),
            )
            value = _call(FREE, _name(FRAME), state, _const(n), read)
            setup.append(ast.Assign(targets=[_name(_free_local(n), ast.Store())], value=value))
        if self.wants("#enter"):
            setup.append(ast.Expr(_report("#enter", _const(True))))
        err = "__ptera_err__"
        # On an error the handler exits (reporting #error) and clears the frame, so
        # the `finally` exit, meant for normal completion, does nothing.
        guarded = ast.Try(
            body=setup[1:] + (body or [ast.Pass()]),
            handlers=[
                ast.ExceptHandler(
                    type=_name("BaseException"),
                    name=err,
                    body=[
                        ast.Expr(_call(EXIT, _name(FRAME), _name(err))),
                        ast.Assign(targets=[_name(FRAME, ast.Store())], value=_const(None)),
                        ast.Raise(),
                    ],
                )
            ],
            orelse=[],
            finalbody=[ast.Expr(_call(EXIT, _name(FRAME), _helper(ABSENT_NAME)))],
        )
        body = take + [ast.copy_location(setup[0], first), ast.copy_location(guarded, first)]
        bindings = _bind_helpers(body, first)
        tree.body = doc + bindings + body
        for n in ast.walk(guarded):
            if not hasattr(n, "lineno") and isinstance(n, (ast.stmt, ast.expr, ast.excepthandler)):
                ast.copy_location(n, first)
        return tree


def _free_local(name: str) -> str:
    """The local holding the value given to free name ``name`` for this call."""
    return f"__ptera_v_{name}__"


class _Mangler(ast.NodeTransformer):
    """Apply class-private name mangling, since the method is compiled outside its
    class: every name a scope binds or reads (``__x``, ``self.__n``, ``except ... as
    __e``, ``def __f``, imports, patterns, ``global``/``nonlocal``), a nested class
    with its own name; keyword names in calls are not mangled (Python leaves them)."""

    def __init__(self, cls: str):
        self.prefix = "_" + cls.lstrip("_")

    def mangle(self, name: str | None) -> str | None:
        if name and name.startswith("__") and not name.endswith("__") and self.prefix != "_":
            return self.prefix + name
        return name

    def visit_Name(self, node):
        node.id = self.mangle(node.id)
        return node

    def visit_Attribute(self, node):
        self.generic_visit(node)
        node.attr = self.mangle(node.attr)
        return node

    def visit_arg(self, node):
        node.arg = self.mangle(node.arg)
        return node

    def visit_named(self, node):
        # A node that binds `node.name`: a handler's `as`, a `def`, a pattern's name.
        node.name = self.mangle(node.name)
        return self.generic_visit(node)

    visit_ExceptHandler = visit_FunctionDef = visit_AsyncFunctionDef = visit_named
    visit_MatchAs = visit_MatchStar = visit_named

    def visit_ClassDef(self, node):
        # Its name is the enclosing class's; its body mangles with its own name.
        node.name, own = self.mangle(node.name), _Mangler(node.name)
        node.bases = [self.visit(b) for b in node.bases]
        node.keywords = [self.visit(k) for k in node.keywords]
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.body = [own.visit(stmt) for stmt in node.body]
        return node

    def visit_alias(self, node):
        bound = node.asname or node.name.split(".")[0]
        if node.asname is not None or "." not in node.name:
            mangled = self.mangle(bound)
            if mangled != bound:
                node.asname = mangled  # `import __m` binds `_K__m`: spelled out
        return node

    def visit_Global(self, node):
        node.names = [self.mangle(n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global

    def visit_MatchMapping(self, node):
        node.rest = self.mangle(node.rest)
        return self.generic_visit(node)


def instrument(source: Source, interest: frozenset | None) -> ast.FunctionDef:
    """The instrumented copy of ``source.tree`` for ``interest`` (``None``: every point).

    A pure rewrite, AST in, AST out: ``source.tree`` is left as it was and nothing
    is compiled or activated, so a test can read the result (``ast.unparse``).
    """
    import copy

    tree = _Instrumenter(source, interest).instrument(copy.deepcopy(source.tree))
    # Mangled after the rewrite, so that points keep the names the source spells
    # (`__x`, `self.__n`); ptera's own names end in `__`, which Python never mangles.
    cls = _mangling_class(source.fn.__qualname__)
    return _Mangler(cls).visit(tree) if cls else tree


def compile_variant(source: Source, interest: frozenset | None) -> types.CodeType:
    """Compile the instrumented code object of ``source`` for ``interest`` (cached)."""
    key = (interest, source.free_state)
    if key in source.variants:
        return source.variants[key]
    tree = instrument(source, interest)
    # A neutral name, so that the factory does not bind the function's own name
    # (which would turn a recursive call into a closure reference).
    tree.name = "__ptera_fn__"
    fn = source.fn
    freevars = fn.__code__.co_freevars
    inner: list[ast.stmt] = [tree]
    if freevars:
        # Keep every free variable referenced so the variant has the same closure.
        keep = ast.If(
            test=_const(False),
            body=[ast.Expr(ast.Tuple(elts=[_name(v) for v in freevars], ctx=ast.Load()))],
            orelse=[],
        )
        tree.body.append(ast.copy_location(keep, tree.body[-1]))
    factory = ast.FunctionDef(
        name="__ptera_factory__",
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg=v) for v in freevars],
            kwonlyargs=[],
            kw_defaults=[],
            defaults=[],
        ),
        body=inner + [ast.Return(value=_name(tree.name))],
        decorator_list=[],
    )
    module = ast.Module(body=[factory], type_ignores=[])
    ast.fix_missing_locations(module)
    for node in ast.walk(factory):
        if isinstance(node, (ast.stmt, ast.expr)) and getattr(node, "lineno", None) is None:
            node.lineno = tree.lineno
    compiled = compile(module, source.filename, "exec", dont_inherit=True)
    code = next(c for c in compiled.co_consts if isinstance(c, types.CodeType))
    code = next(
        c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == tree.name
    )
    if code.co_freevars != freevars:
        raise TransformError(
            f"cannot instrument {fn.__qualname__}: free variables changed "
            f"from {freevars} to {code.co_freevars}"
        )
    code = code.replace(co_name=fn.__code__.co_name, co_qualname=fn.__code__.co_qualname)
    source.variants[key] = code
    return code
