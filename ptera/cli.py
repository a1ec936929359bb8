"""``auto_cli``: a command line made of the hyperparameters declared where they are used.

Any variable annotated with the CLI tag (``lr: tag.HyperParameter = default(0.1)``)
in an instrumented function reachable from the entry point becomes an option.
Reachable means: named in the body (a global, a free variable, a module's
``@ptera`` functions), or held in the state of a selfless object
(``step.new(model=sequential.new(...))``), transitively.

Decisions:

* Priority: ``default(v)`` in the code < config file < environment variable
  (``PTERA_<NAME>``) < command line. A variable the code sets without
  ``default`` is fixed: giving it a value raises ``ConflictError`` naming the
  option and the line. Declared without a value (``n: tag.HyperParameter``),
  the option is required when the program reads it.
* An option is one name: every site that declares it receives the same value
  (help lists all sites). Sites whose defaults differ keep their own until the
  option is given; help shows each default beside its site, and ``--dump-config``
  writes one per-context entry per site (``"enc > lr" = 0.1``), so a dumped
  config reproduces the run. Values reach the program as a tweak on
  ``name:Tag``, so they win over the code's defaults and over state.
* Types: the annotation's non-tag part (``tag.HyperParameter & int``), else the
  type of the default, else ``str``; ``bool`` options are flags with
  ``--no-<name>``. ``[alias: -n]`` and ``[metavar: N]`` lines in the comment work as
  in coleo. A default written as a name, an attribute of a module or class, or
  arithmetic (``BASE_EPOCHS``, ``math.pi``, ``1e-3 * 2``) is evaluated for its
  type, never a call: a default that is a call leaves the type unknown, and such
  an option is refused a value rather than handed a string.
* Objects (a default that is a function or a class, or any value where the
  option is not ``str``) are named ``:module.attr`` (older ptera's syntax),
  looked up in ``eval_env`` then where the option is declared, never evaluated
  (older ptera ran ``eval``); a dump writes the name back.
* A variable the body assigns again after its declaration (``x = x * 2``) is
  refused a value: the tweak would replace that assignment too.
* Older ptera's calls: ``category=`` is ``tag=``, and with it a tuple of
  non-tags as second argument is ``args``; otherwise such a tuple is a
  ``TypeError`` that says to write ``args=``.
* Config files (``--config FILE``): JSON, TOML or YAML, read through coleo's
  ``ConfigFile`` (TOML with the standard ``tomllib``; YAML needs PyYAML), never
  evaluated: ``.yaml`` and ``.yml`` both go through ``yaml.safe_load``, so a
  ``!!python/...`` tag anywhere is a config error, never an object. Top-level
  keys are options; a key holding a table is a selector prefix for per-context
  values (``["layer[1]"] T = 10.0`` is the tweak ``layer[1] > T``, and so are
  ``["net > layer"]`` and nested ``[net.layer]`` tables); any other key
  containing ``>`` is a whole selector. A per-context value is converted like
  an option only where its selector's focus lands on that option's declaration
  (elsewhere, a local of the same name is no option), and a bad selector is a
  config error.
* Bad input (unknown option, wrong type, unreadable file, conflicting value)
  prints ``error: ...`` and exits with status 2, like argparse; with
  ``exit_on_error=False`` the exception is raised instead.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import operator
import os
import re
import sys
import types
from collections import ChainMap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .effects import Overlay
from .lookup import state_for, unwrap
from .match import compile_selector
from .overlay import PteraNameError
from .selector import SelectorError, select
from .selfless import PteraFunction
from .state import ConflictError
from .tags import Tag, TagSet, annotation_parts, match_tag, tag
from .transform import ABSENT, closure_values, priority_wrapper

__all__ = ["CliError", "auto_cli", "find_options", "read_config"]


class CliError(ValueError):
    """Bad command-line input: an unknown option, a wrong type, an unreadable config."""


@dataclass
class Site:
    """One declaration of an option in the code."""

    function: str
    filename: str
    line: int
    doc: str | None
    kind: str  # "declared" (no value), "default" (default(...)) or "fixed"
    default: Any
    annotation: Any
    tag: Tag
    fn: types.FunctionType | None = None
    text: str | None = None  # the default's source, as written (``BASE_EPOCHS``)
    # Lines where the body assigns the variable again, after its declaration.
    reassigned: tuple[int, ...] = ()

    @property
    def namespace(self) -> Mapping:
        """The names the declaring function sees: its closure, its module, builtins."""
        return {} if self.fn is None else _namespace(self.fn)

    @property
    def where(self) -> str:
        path = self.filename
        try:
            rel = os.path.relpath(path)
            path = rel if not rel.startswith("..") else path
        except ValueError:  # another drive
            pass
        return f"{path}:{self.line} ({self.function})"


@dataclass
class Option:
    """A command-line option and every place that declares it."""

    name: str
    sites: list[Site] = field(default_factory=list)
    # Where ``:name`` values are looked up before the sites' own namespaces.
    eval_env: Mapping | None = None
    # The ``:name`` text of each object a value named, to write it back in a dump.
    references: dict[int, str] = field(default_factory=dict)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def annotated(self) -> type | None:
        """The type the annotation gives (``tag.HyperParameter & int``), if any."""
        for site in self.sites:
            parts = [p for p in annotation_parts(site.annotation) if not isinstance(p, Tag)]
            if len(parts) == 1 and isinstance(parts[0], type):
                return parts[0]
        return None

    @property
    def type(self) -> type | None:
        """The annotation's type, else the default's; ``str`` without either.

        ``None`` when a default could not be evaluated ahead of the run (a call):
        then the type is unknown, and a value given to the option is refused.
        """
        if self.annotated is not None:
            return self.annotated
        for site in self.sites:
            if isinstance(site.default, _Expr):
                return None
            if site.default is not ABSENT:
                return type(site.default)
        return str

    @property
    def by_reference(self) -> bool:
        """Whether values are objects named as ``:module.attr`` (a function, a class)."""
        typ = self.type
        return (
            self.annotated is None
            and typ is not None
            and typ not in _SCALARS
            and typ not in _CONTAINERS
            and typ is not type(None)
        )

    @property
    def type_name(self) -> str:
        typ = self.type
        if typ is None:
            return "unknown"
        if self.by_reference:
            return "object (:name)"
        return typ.__name__

    @property
    def unknown(self) -> Site | None:
        """The site whose default cannot be evaluated before the run, if any."""
        return next((s for s in self.sites if isinstance(s.default, _Expr)), None)

    @property
    def default_site(self) -> Site | None:
        """The first site that declares a default, if any."""
        return next((s for s in self.sites if s.kind == "default"), None)

    @property
    def default(self) -> Any:
        site = self.default_site
        return ABSENT if site is None else site.default

    @property
    def per_site(self) -> bool:
        """Whether the sites declare different defaults (each keeps its own unless set)."""
        values = [s.default for s in self.sites if s.kind == "default"]
        return any(_differ(v, values[0]) for v in values[1:])

    @property
    def fixed(self) -> Site | None:
        return next((s for s in self.sites if s.kind == "fixed"), None)

    @property
    def doc(self) -> str:
        docs = dict.fromkeys(_strip_commands(s.doc) for s in self.sites if s.doc)
        return " / ".join(d for d in docs if d)

    def command(self, name: str) -> list[str]:
        """Values of a coleo-style ``[name: ...]`` line in the docs."""
        found = []
        for site in self.sites:
            for m in re.finditer(rf"^\[{name}:\s*(.*?)\]\s*$", site.doc or "", flags=re.M):
                found.extend(re.split(r"[ ,;]+", m.group(1).strip()))
        return found


def _differ(a: Any, b: Any) -> bool:
    return type(a) is not type(b) or a != b


def _shown(value: Any, site: Site | None = None) -> str:
    if isinstance(value, _Expr):
        return str(value)
    if site is not None and site.text and not isinstance(value, _SCALARS + _CONTAINERS):
        return site.text  # `torch.relu`, not `<built-in method relu ...>`
    return repr(value)


def _strip_commands(doc: str) -> str:
    return " ".join(line for line in doc.splitlines() if not re.match(r"^\[[\w-]+(:.*)?\]$", line))


# ---------------------------------------------------------------------------
# Discovery


def reachable(entry: Any) -> list[types.FunctionType]:
    """The ``@ptera`` functions reachable from ``entry``, in discovery order."""
    seen: set[int] = set()
    out: list[types.FunctionType] = []

    def visit(obj: Any, depth: int = 0) -> None:
        if id(obj) in seen or depth > 50:
            return
        if isinstance(obj, PteraFunction):
            seen.add(id(obj))
            visit(obj.__wrapped__, depth + 1)
            for value in obj.state.values():
                visit(value, depth + 1)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            seen.add(id(obj))
            for item in obj:
                visit(item, depth + 1)
            return
        if isinstance(obj, dict):
            seen.add(id(obj))
            for item in obj.values():
                visit(item, depth + 1)
            return
        if isinstance(obj, types.ModuleType):
            seen.add(id(obj))
            for item in list(vars(obj).values()):
                if getattr(item, "__module__", None) == obj.__name__ and hasattr(
                    item, "__ptera_info__"
                ):
                    visit(item, depth + 1)
            return
        if isinstance(obj, (staticmethod, classmethod, types.MethodType)):
            obj = obj.__func__
        fn = unwrap(obj)
        if not isinstance(fn, types.FunctionType) or not hasattr(fn, "__ptera_info__"):
            return
        if id(fn) in seen:
            return
        seen.add(id(fn))
        out.append(fn)
        for value in getattr(fn, "state", {}).values():
            visit(value, depth + 1)
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        for name, info in fn.__ptera_info__.items():
            if info["provenance"] != "external":
                continue
            if name in cells:
                try:
                    visit(cells[name].cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass
            elif name in fn.__globals__:
                visit(fn.__globals__[name], depth + 1)

    visit(entry)
    return out


def _reassignments(fn: types.FunctionType, name: str) -> tuple[int, ...]:
    """Lines where the body gives ``name`` a value other than by its declaration.

    A tweak replaces every value a variable gets, so an option's value would also
    replace ``x = x * 2`` after ``x = default(3)``. Other ``default(...)``
    assignments (one per branch) are declarations too; nested scopes are others'.
    """
    tree = state_for(fn).source.tree
    stores = []  # (line, whether it is a default(...) assignment)

    def visit(node: ast.AST, declaring: bool = False) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _SCOPES):
                continue
            if isinstance(child, ast.AnnAssign) and child.value is None:
                continue  # a bare declaration (`x: int`) gives no value
            if (
                isinstance(child, ast.Name)
                and child.id == name
                and not isinstance(child.ctx, ast.Load)
            ):
                stores.append((child.lineno, declaring))
            wraps = isinstance(child, (ast.Assign, ast.AnnAssign)) and priority_wrapper(child.value)
            visit(child, bool(wraps))

    visit(tree)
    return tuple(line for line, declaring in sorted(stores)[1:] if not declaring)


_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.ClassDef,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def _code_value(fn: types.FunctionType, name: str) -> tuple[str, Any, str | None]:
    """How the body gives ``name`` its value: ``(kind, default, source text)``."""
    source = state_for(fn).source
    if name in source.declared:
        return "declared", ABSENT, None
    for node in ast.walk(source.tree):
        value = None
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            value = node.value
        elif isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == name for t in node.targets
        ):
            value = node.value
        if value is None:
            continue
        kind = "fixed"
        wrapper = priority_wrapper(value)
        if wrapper and value.args:
            kind = "fixed" if wrapper == "Override" else "default"
            value = value.args[0]
        return kind, _static_value(value, fn), ast.unparse(value)
    return "declared", ABSENT, None


class _Expr(str):
    """A default that cannot be evaluated before the run (a call): its text, as written."""


_SCALARS = (int, float, str, bool)
_CONTAINERS = (list, tuple, dict)
_NUMBERS = (int, float, complex)
_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _namespace(fn: types.FunctionType) -> Mapping:
    """The names ``fn`` sees: its closure, its module, builtins."""
    return ChainMap(closure_values(fn), fn.__globals__, vars(builtins))


def _static_value(expr: ast.expr, fn: types.FunctionType) -> Any:
    """The value of a default, when it can be known without running code; else ``_Expr``.

    Literals, names (closure, module, builtins), attributes of modules and classes
    (``torch.relu``, ``math.pi``), and arithmetic on numbers: what a default
    usually is. A call, or anything else that could run code, is left unevaluated.
    """
    try:
        return ast.literal_eval(expr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    namespace = _namespace(fn)

    def value(node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in namespace:
            return namespace[node.id]
        if isinstance(node, ast.Attribute):
            return _attribute(value(node.value), node.attr)
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [value(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            operand = value(node.operand)
            if isinstance(operand, _NUMBERS):
                return _OPERATORS[type(node.op)](operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            numbers = isinstance(left, _NUMBERS) and isinstance(right, _NUMBERS)
            if numbers and not (isinstance(node.op, ast.Pow) and abs(right) > 64):
                return _OPERATORS[type(node.op)](left, right)
            if isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
                return left + right
        raise LookupError(ast.unparse(node))

    try:
        return value(expr)
    except (LookupError, ArithmeticError):
        return _Expr(ast.unparse(expr))


def _attribute(obj: Any, attr: str) -> Any:
    """``obj.attr`` when reading it runs no code: a module's, a class's, an instance's own."""
    if attr.startswith("__"):
        raise LookupError(attr)
    if isinstance(obj, (types.ModuleType, type)):
        try:
            return getattr(obj, attr)
        except AttributeError:
            raise LookupError(attr) from None
    own = getattr(obj, "__dict__", None)
    if isinstance(own, dict) and attr in own:
        return own[attr]
    raise LookupError(attr)


def find_options(entry: Any, tags: tuple = ()) -> dict[str, Option]:
    """Every variable tagged with one of ``tags`` in functions reachable from ``entry``."""
    tags = tags or (tag.HyperParameter, tag.CliArgument)
    options: dict[str, Option] = {}
    for fn in reachable(entry):
        for name, info in fn.__ptera_info__.items():
            if info["provenance"] == "external":
                continue
            found = next((t for t in tags if match_tag(t, info["annotation"])), None)
            if found is None:
                continue
            kind, value, text = _code_value(fn, name)
            filename, qualname, line = info["location"]
            site = Site(
                qualname,
                filename,
                line,
                info["doc"],
                kind,
                value,
                info["annotation"],
                found,
                fn=fn,
                text=text,
                reassigned=_reassignments(fn, name),
            )
            options.setdefault(name, Option(name)).sites.append(site)
    return options


# ---------------------------------------------------------------------------
# Values from each source


def convert(option: Option, value: Any, source: str) -> Any:
    """``value`` as the option's type; a ``CliError`` that says which and why if it is not.

    Text for a non-``str`` option may name an object, ``:torch.tanh``: it is looked
    up (never evaluated), and it is how an option whose default is an object (a
    function, a class) gets its value.
    """
    typ = option.type
    if isinstance(value, str) and value.startswith(":") and typ is not str:
        found = resolve(option, value, source)
        if typ is None or option.by_reference:
            option.references[id(found)] = value
            return found
        if _is_instance(found, typ):
            return float(found) if typ is float else found
        raise CliError(
            f"{source}: {option.flag} expects {typ.__name__}, but {value} is"
            f" {found!r} ({type(found).__name__})"
        )
    if typ is None:
        site = option.unknown
        raise CliError(
            f"{source}: {option.flag} cannot be set: its default `{site.default}` (at"
            f" {site.where}) is only known when the program runs, so its type is not;"
            f" annotate it (`{option.name}: {site.tag!r} & int = ...`) or name an object"
            " (`:module.name`)"
        )
    if option.by_reference:
        raise CliError(
            f"{source}: {option.flag} takes an object named as `:name` or"
            f" `:module.attr` (like `:torch.tanh`), looked up where the option is"
            f" declared; got {value!r}"
        )
    if typ is type(None):
        site = next(s for s in option.sites if s.default is None)
        raise CliError(
            f"{source}: {option.flag} cannot be set from {value!r}: its default is None (at"
            f" {site.where}), which says nothing of its type; annotate it"
            f" (`{option.name}: {site.tag!r} & int = default(None)`)"
        )
    if isinstance(value, str) and typ in _CONTAINERS:
        try:
            value = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise CliError(
                f"{source}: {option.flag} expects a {typ.__name__} written as in Python"
                f" (like {_shown(typ())}), got {value!r}"
            ) from None
    elif isinstance(value, str) and typ is not str:
        if typ is bool:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        else:
            try:
                return typ(value)
            except (TypeError, ValueError):
                pass
        raise CliError(f"{source}: {option.flag} expects {typ.__name__}, got {value!r}")
    if typ is tuple and isinstance(value, list):  # JSON and TOML have lists only
        value = tuple(value)
    if not _is_instance(value, typ):
        raise CliError(
            f"{source}: {option.flag} expects {typ.__name__}, got {value!r}"
            f" ({type(value).__name__})"
        )
    return float(value) if typ is float else value


def _is_instance(value: Any, typ: type) -> bool:
    if typ is bool:
        return isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, typ) and not (typ is int and isinstance(value, bool))


_REFERENCE = re.compile(r":([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def resolve(option: Option, text: str, source: str) -> Any:
    """The object ``:name.attr`` names: looked up in ``eval_env``, then where the option
    is declared (closure, module, builtins); attributes of modules and classes only."""
    match = _REFERENCE.fullmatch(text.strip())
    if match is None or any(p.startswith("__") for p in match.group(1).split(".")):
        raise CliError(
            f"{source}: {option.flag}: {text!r} is not a name; a value that starts with"
            " ':' names an object, `:name` or `:module.attr` (like `:torch.tanh`), which"
            " is looked up, never evaluated"
        )
    first, *attrs = match.group(1).split(".")
    spaces = [option.eval_env] if option.eval_env is not None else []
    spaces += [s.namespace for s in option.sites]
    space = next((sp for sp in spaces if first in sp), None)
    if space is None:
        where = ", ".join(dict.fromkeys(s.where for s in option.sites))
        also = "eval_env or " if option.eval_env is not None else ""
        raise CliError(
            f"{source}: {option.flag}: no name {first!r} in {also}the module where the"
            f" option is declared ({where}); import it there or pass it in auto_cli's"
            " eval_env"
        )
    found = space[first]
    for i, attr in enumerate(attrs):
        try:
            found = _attribute(found, attr)
        except LookupError:
            so_far = ".".join([first, *attrs[:i]])
            raise CliError(
                f"{source}: {option.flag}: {so_far} has no attribute {attr!r}"
                " (only a module's, a class's or an object's own attributes are read)"
            ) from None
    return found


def read_config(path: str) -> dict:
    """Read a JSON, TOML or YAML config (never evaluated as code)."""
    from coleo import ConfigFile

    ext = path.rsplit(".", 1)[-1].lower()
    if ext not in ("json", "toml", "yaml", "yml"):
        raise CliError(f"config {path}: unknown format '.{ext}' (use .json, .toml or .yaml)")
    if ext in ("yaml", "yml"):
        try:
            import yaml  # noqa: F401
        except ModuleNotFoundError:
            raise CliError(
                f"config {path}: reading YAML needs PyYAML, which is not installed"
                " (pip install pyyaml), or use .json / .toml"
            ) from None
    try:
        # Our own registry, not coleo's global one: its YAML reader is yaml.full_load.
        data = ConfigFile(path, registry={path.rsplit(".", 1)[-1]: _FORMATS[ext]}).read()
    except FileNotFoundError:
        raise CliError(f"config {path}: no such file") from None
    except OSError as exc:
        raise CliError(f"config {path}: cannot read it ({exc})") from None
    except Exception as exc:  # the parser's own error: say where
        problem = str(getattr(exc, "problem", None) or "")
        if ext in ("yaml", "yml") and _is_yaml_tag_error(exc):  # e.g. !!python/name
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise CliError(
                f"config {path}: {problem}{where}; a config holds plain data only"
                " (YAML tags that build Python objects are never evaluated)"
            ) from None
        raise CliError(f"config {path}: not valid {ext.upper()} ({exc})") from None
    if not isinstance(data, dict):
        raise CliError(f"config {path}: expected a table of options, got {type(data).__name__}")
    return data


def _toml_format():
    import tomllib

    return {"load": lambda f: tomllib.loads(f.read())}


def _is_yaml_tag_error(exc: Exception) -> bool:
    import yaml

    return isinstance(exc, yaml.constructor.ConstructorError)


def _yaml_format():
    import yaml

    return {"load": yaml.safe_load}


_FORMATS = {
    "json": lambda: {"load": json.load},
    "toml": _toml_format,
    "yaml": _yaml_format,
    "yml": _yaml_format,
}


def split_config(
    data: dict, options: dict[str, Option], path: str, env: dict | None = None
) -> tuple[dict, dict]:
    """Option values and per-context tweaks (selector -> value) of a config.

    A per-context value is converted like the option declared where its selector's
    focus lands (and left as written elsewhere);
    with ``env``, each selector's functions must be found there (or by import path).
    """
    values, tweaks = {}, {}

    def table(prefix: str, items: dict) -> None:
        # A table is a selector prefix, whether its key holds `>` or it is nested
        # (`[chain.scale]` is `chain > scale`).
        for name, v in items.items():
            if not isinstance(name, str):
                raise CliError(f"config {path}: keys are variable names, got {name!r}")
            selector = f"{prefix} > {name}"
            if isinstance(v, dict):
                table(selector, v)
            else:
                tweaks[selector] = _context_value(selector, v, options, path, env)

    for key, value in data.items():
        if not isinstance(key, str):
            raise CliError(f"config {path}: keys are option names or selectors, got {key!r}")
        if isinstance(value, dict):
            table(key, value)
        elif ">" in key:
            tweaks[key] = _context_value(key, value, options, path, env)
        elif key in options:
            values[key] = convert(options[key], value, f"config {path}")
        else:
            known = ", ".join(sorted(options)) or "none"
            raise CliError(f"config {path}: unknown option '{key}' (options: {known})")
    return values, tweaks


def _context_value(selector: str, value: Any, options: dict, path: str, env: dict | None):
    try:
        tree = select(selector)
        if tree.focus is None:
            raise SelectorError(selector, 0, "a per-context value needs a focus: mark it with '!'")
        compiled = compile_selector(tree, env)
    except SelectorError as exc:
        if env is None:  # not validated without the caller's names: left as written
            return value
        raise CliError(f"config {path}: {exc}") from None
    # Converted only where the focus lands on a site of the option: `label > n` is left
    # alone when `n` is an option of another function but a plain local of `label`.
    states = {st.fid: st for st in compiled.interest}
    for fid, templates in compiled.templates.items():
        st = states.get(fid)
        for name, specs in (kv for t in templates for kv in t.vars.items()):
            option = options.get(name)
            if st is None or option is None or not any(s.focus == 1 for s in specs):
                continue
            if any(
                (site.function, site.filename) == (st.qualname, st.original.co_filename)
                for site in option.sites
            ):
                return convert(option, value, f"config {path}: {selector!r}")
    return value


def from_environment(options: dict[str, Option], prefix: str, environ=None) -> dict:
    """Option values from ``<prefix><NAME>`` environment variables."""
    environ = os.environ if environ is None else environ
    if not prefix:
        return {}
    names = {prefix + name.upper(): name for name in options}
    values = {}
    for var, text in environ.items():
        if not var.startswith(prefix):
            continue
        if var not in names:
            known = ", ".join(sorted(names)) or "none"
            raise CliError(f"environment variable {var}: no such option (known: {known})")
        values[names[var]] = convert(options[names[var]], text, f"environment variable {var}")
    return values


# ---------------------------------------------------------------------------
# The parser and its help


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, options: dict[str, Option], env_prefix: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.options = options
        self.env_prefix = env_prefix

    def print_help(self, file=None):
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console(file=file or sys.stdout, width=max(100, Console().width))
        console.print(f"[bold]usage:[/bold] {escape(self.prog)} \\[options]")
        if self.description:
            console.print(f"\n{self.description}")
        table = Table(show_lines=False, header_style="bold", expand=False)
        for column in ("option", "type", "default", "description", "declared at"):
            table.add_column(column, overflow="fold")
        for name in sorted(self.options):
            opt = self.options[name]
            flags = [opt.flag, *opt.command("alias")]
            if opt.type is bool:
                flags.append("--no-" + opt.flag[2:])
            default = opt.default
            if opt.fixed:
                shown = f"{_shown(opt.fixed.default, opt.fixed)} (fixed)"
            elif opt.per_site:
                # Each declaration's own default, named by its function.
                kinds = {"declared": "required", "fixed": "{} (fixed)"}
                shown = "\n".join(
                    kinds.get(s.kind, "{}").format(_shown(s.default, s)) + f" ({s.function})"
                    for s in opt.sites
                )
            elif default is ABSENT:
                shown = "required"
            else:
                shown = _shown(default, opt.default_site)
            table.add_row(
                ", ".join(flags),
                opt.type_name,
                shown,
                escape(opt.doc),
                escape("\n".join(s.where for s in opt.sites)),
            )
        console.print(table)
        console.print(
            "  --config FILE          read options from a .json, .toml or .yaml file\n"
            "  --dump-config [FMT]    print the resolved configuration (toml or json) and exit\n"
            "  -h, --help             show this help and exit\n"
            f"Environment: {self.env_prefix}<NAME> sets an option (below the command line,"
            " above a config file)."
        )

    def error(self, message):
        raise CliError(f"{message} (see --help)")


def build_parser(
    options: dict[str, Option], prog: str | None, description: str | None, env_prefix: str
):
    parser = _Parser(
        prog=prog,
        description=description,
        argument_default=argparse.SUPPRESS,
        options=options,
        env_prefix=env_prefix,
        allow_abbrev=False,
    )
    parser.add_argument("--config", metavar="FILE", action="append", default=[])
    parser.add_argument("--dump-config", nargs="?", const="toml", choices=("toml", "json"))
    for name, opt in options.items():
        flags = [opt.flag, *opt.command("alias")]
        if "_" in name:
            flags.append("--" + name)
        if opt.type is bool:
            group = parser.add_mutually_exclusive_group()
            group.add_argument(*flags, dest=name, action="store_true")
            group.add_argument("--no-" + opt.flag[2:], dest=name, action="store_false")
        else:
            typ = (
                ":NAME"
                if opt.by_reference
                else "VALUE"
                if opt.type is None
                else opt.type_name.upper()
            )
            metavar = (opt.command("metavar") or [typ])[0]
            parser.add_argument(*flags, dest=name, metavar=metavar, type=_typed(opt))
    return parser


def _typed(opt: Option):
    def parse(text: str) -> Any:
        try:
            return convert(opt, text, "command line")
        except CliError as exc:
            prefix = f"command line: {opt.flag} expects {opt.type_name}, got "
            message = str(exc)
            if message.startswith(prefix):  # argparse names the option already
                message = f"expected {opt.type_name}, got " + message[len(prefix) :]
            else:
                message = message.removeprefix(f"command line: {opt.flag}").lstrip(": ")
            raise argparse.ArgumentTypeError(message) from None

    parse.__name__ = opt.type_name
    return parse


# ---------------------------------------------------------------------------
# Dumping


def to_toml(values: dict, tweaks: dict) -> str:
    """A small TOML writer for scalars and lists (what a config holds)."""
    entries = {**values, **tweaks}  # selector keys are quoted by _toml_key
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in entries.items())


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise CliError(f"cannot write {value!r} ({type(value).__name__}) to a config")


def written(option: Option, value: Any, given: bool) -> Any:
    """``value`` as a config writes it: the ``:name`` an object was given by, or the value.

    A default that a config cannot hold (an object no ``:name`` reaches, a table) is
    ``ABSENT``: left out of a dump, the code gives it again. A given one is an error.
    """
    if id(value) in option.references:
        return option.references[id(value)]
    if isinstance(value, _SCALARS) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value)
    ):
        return value
    for site in option.sites:
        if site.default is value and site.text and _REFERENCE.fullmatch(":" + site.text):
            return ":" + site.text
    if given:
        raise CliError(f"cannot write {option.flag} = {value!r} to a config")
    return ABSENT


def per_site_defaults(options: dict[str, Option], values: dict) -> dict:
    """``{"enc > lr": 0.1, "dec > lr": 0.2}`` for options whose sites' defaults differ
    and that were given no value."""
    out = {}
    for name, opt in sorted(options.items()):
        if name in values or not opt.per_site:
            continue
        for site in opt.sites:
            if site.kind == "default" and not isinstance(site.default, _Expr):
                value = written(opt, site.default, given=False)
                if value is not ABSENT:
                    out[f"{site.function} > {name}"] = value
    return out


# ---------------------------------------------------------------------------
# The entry point


def auto_cli(
    entry: Any,
    tag: Tag | tuple | None = None,
    argv: list[str] | None = None,
    description: str | None = None,
    *,
    args: tuple = (),
    env_prefix: str = "PTERA_",
    environ: dict | None = None,
    prog: str | None = None,
    exit_on_error: bool = True,
    **kwargs: Any,
) -> Any:
    """Build a command line from the tagged variables reachable from ``entry``, run it.

    ``tag`` (default: ``tag.HyperParameter`` and ``tag.CliArgument``) selects the
    variables; ``argv`` defaults to ``sys.argv[1:]``. Returns what ``entry(*args)``
    returns. ``eval_env`` is where ``:name`` values are looked up first (before the
    module that declares the option).

    Older ptera's spellings work: ``category=`` is ``tag=``, and with it a tuple as
    second argument is ``args`` (``auto_cli(f, (1, 2), category=cat.Argument)``).
    """
    eval_env = kwargs.pop("eval_env", None)
    if "category" in kwargs:  # the name older ptera releases used
        category = kwargs.pop("category")
        if isinstance(tag, tuple) and not any(isinstance(t, (Tag, TagSet)) for t in tag):
            # Older ptera's `auto_cli(entry, args, category=...)`.
            if args and tag:
                raise TypeError(
                    f"auto_cli: the second argument {tag!r} and args={args!r} both give the"
                    " entry's arguments; give them once, as args=(...)"
                )
            args = tag or args
        elif tag is not None:
            raise TypeError(
                f"auto_cli: got both tag ({tag!r}) and category ({category!r}), which mean"
                " the same; give tag= only"
            )
        tag = category
    if kwargs:
        raise TypeError(f"auto_cli() got unexpected arguments: {', '.join(kwargs)}")
    if not callable(entry):
        raise TypeError(f"auto_cli needs the program's function, not {type(entry).__name__}")
    tags = tag if isinstance(tag, tuple) else (tag,) if tag is not None else ()
    if not all(isinstance(t, Tag) for t in tags):
        hint = ""
        if isinstance(tag, tuple) and not any(isinstance(t, (Tag, TagSet)) for t in tag):
            hint = f"; to call the entry with arguments, write args={tag!r}"
        raise TypeError(
            f"auto_cli: tag is a Tag (tag.HyperParameter) or a tuple of Tags, not {tag!r}" + hint
        )
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"auto_cli: args is a tuple of the entry's arguments, not {args!r}")
    if eval_env is not None and not isinstance(eval_env, Mapping):
        raise TypeError(
            f"auto_cli: eval_env is a mapping of names (like globals()), not {eval_env!r}"
        )
    if isinstance(argv, (str, bytes)) or not (argv is None or isinstance(argv, Iterable)):
        raise TypeError(f"auto_cli: argv is a list of strings (like sys.argv[1:]), not {argv!r}")
    argv = None if argv is None else list(argv)
    for arg in argv or ():
        if not isinstance(arg, str):
            raise TypeError(f"auto_cli: argv holds strings (like sys.argv[1:]), not {arg!r}")
    if not isinstance(env_prefix, str):
        raise TypeError(f"auto_cli: env_prefix is a string (like 'PTERA_'), not {env_prefix!r}")
    if environ is not None and not isinstance(environ, Mapping):
        raise TypeError(f"auto_cli: environ is a mapping (like os.environ), not {environ!r}")
    options = find_options(entry, tags)
    for option in options.values():
        option.eval_env = eval_env
    try:
        return _run(entry, options, argv, description, args, env_prefix, environ, prog)
    except (CliError, ConflictError) as exc:
        if not exit_on_error:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(entry, options, argv, description, args, env_prefix, environ, prog):
    doc = description or getattr(unwrap(getattr(entry, "__wrapped__", entry)), "__doc__", None)
    parser = build_parser(options, prog, doc, env_prefix)
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        raise SystemExit(0)
    ns = vars(parser.parse_args(argv))
    configs, dump = ns.pop("config", []), ns.pop("dump_config", None)
    values, tweaks = {}, {}
    caller = getattr(entry, "__globals__", None) or getattr(
        getattr(entry, "__wrapped__", None), "__globals__", {}
    )
    for path in configs:
        v, t = split_config(read_config(path), options, path, dict(caller))
        values.update(v)
        tweaks.update(t)
    values.update(from_environment(options, env_prefix, environ))
    values.update(ns)
    for name, value in values.items():
        for site in options[name].sites:
            if site.reassigned:
                lines = ", ".join(map(str, site.reassigned))
                raise CliError(
                    f"option {options[name].flag} cannot be set: {site.function} assigns"
                    f" {name} again at line {lines}, after declaring it at {site.where};"
                    " the value given would replace those assignments too, so give the"
                    " later value another name"
                )
        fixed = options[name].fixed
        if fixed is not None and value != fixed.default:
            raise ConflictError(
                f"option {options[name].flag} is fixed in the code at {fixed.where}"
                f" ({name} = {fixed.default!r}); write `{name} = default({fixed.default!r})`"
                " to make it settable"
            )
    if dump:
        resolved = {}
        for n, o in sorted(options.items()):
            value = values.get(n, o.default)
            if value is ABSENT or isinstance(value, _Expr) or (n not in values and o.per_site):
                continue
            value = written(o, value, given=n in values)
            if value is not ABSENT:
                resolved[n] = value
        # Declarations with different defaults: one entry per function, so the dump
        # runs each with its own value (user tweaks from a config still win).
        tweaks = {**per_site_defaults(options, values), **tweaks}
        if dump == "json":
            print(json.dumps({**resolved, **tweaks}, indent=2))
        else:
            print(to_toml(resolved, tweaks), end="")
        raise SystemExit(0)
    overlay = Overlay()
    for name, value in values.items():
        for t in {id(s.tag): s.tag for s in options[name].sites}.values():
            overlay = overlay.tweak({f"{name}:##T": value}, env={"##T": t})
    if tweaks:
        overlay = overlay.tweak(tweaks, env=dict(caller))
    try:
        with overlay:
            return entry(*args)
    except PteraNameError as err:
        if err.varname in options:
            opt = options[err.varname]
            raise CliError(
                f"missing value for required option {opt.flag} (declared at"
                f" {', '.join(s.where for s in opt.sites)})"
            ) from None
        raise
