"""Find functions by name or path, and swap their code objects in place.

Each instrumentable function has one ``FnState``: its parsed source, the function
objects that share its code, and the code they run while idle. ``install`` puts an
instrumented variant into every one of those function objects (so references held
elsewhere see it) and ``restore`` puts the idle code back.

Names in selectors resolve, in order: in the ``env`` mapping, in the caller's
scope, among functions decorated with ``@tooled`` (by name or qualified name), then
as import paths (``torch.nn.Linear``). ``/pkg.mod/Cls.meth`` and ``pkg.mod:f``
always import.
"""

from __future__ import annotations

import builtins
import gc
import importlib
import itertools
import sys
import threading
import types
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from .transform import HELPER, Source, TransformError, compile_variant, parse_function

_fids = itertools.count(1)
_lock = threading.RLock()


class _CodeIndex:
    """Code object -> ``FnState``, by identity.

    Two modules with the same function at the same line compile *equal* code objects
    (equality ignores the file name), so a plain dict would give both functions one
    state and a probe on one would see the other's calls. Entries keep their code
    objects alive, so an id in the index always means that very object.
    """

    __slots__ = ("_entries",)

    def __init__(self):
        self._entries: dict[int, tuple[types.CodeType, FnState]] = {}

    def get(self, code: Any, default: Any = None) -> Any:
        entry = self._entries.get(id(code))
        return default if entry is None else entry[1]

    def setdefault(self, code: types.CodeType, state: FnState) -> FnState:
        return self._entries.setdefault(id(code), (code, state))[1]

    def __setitem__(self, code: types.CodeType, state: FnState) -> None:
        self._entries[id(code)] = (code, state)


_by_code = _CodeIndex()
_by_fid: dict[int, FnState] = {}
# Functions decorated with @tooled: candidates for `*` and for names not in scope.
_tooled: dict[int, FnState] = {}


class FnState:
    """The instrumentation state of one function (shared by all its function objects)."""

    def __init__(self, fn: types.FunctionType):
        self.fid = next(_fids)
        self.original = fn.__code__
        self.name = fn.__name__
        self.qualname = fn.__qualname__
        self.module = fn.__module__
        self._functions: list[weakref.ref] = [weakref.ref(fn)]
        self._source: Source | None = None
        self._source_error: str | None = None
        self.idle = self.original
        self.current = self.original
        self.tooled = False
        self._variants: dict = {}

    # -- source ---------------------------------------------------------
    @property
    def source(self) -> Source:
        if self._source is None:
            fn = self.function
            if fn is None:
                raise TransformError(f"{self.qualname} no longer exists")
            self._source = parse_function(fn)
            self._source.fid = self.fid
        return self._source

    @property
    def function(self) -> types.FunctionType | None:
        for ref in self._functions:
            fn = ref()
            if fn is not None:
                return fn
        return None

    def functions(self) -> list[types.FunctionType]:
        out = [r() for r in self._functions]
        if None in out:
            out = [f for f in out if f is not None]
            self._functions = [weakref.ref(f) for f in out]
        return out

    def adopt(self, fn: types.FunctionType) -> None:
        """Also swap code in ``fn`` (another function object running this code)."""
        if all(r() is not fn for r in self._functions):
            self._functions.append(weakref.ref(fn))
            if fn.__code__ is not self.current:
                main = self.function
                if self.current is not self.original and main is not None:
                    # Running a variant needs the helper the engine put in the
                    # original's globals (a copy may have other globals).
                    helper = main.__globals__.get(HELPER)
                    if helper is not None and HELPER not in fn.__globals__:
                        fn.__globals__[HELPER] = helper
                fn.__code__ = self.current

    def variables(self) -> dict:
        return self.source.variables

    # -- swapping -------------------------------------------------------
    def code_for(self, interest: frozenset | None) -> types.CodeType:
        if interest is not None and not interest:
            return self.idle
        code = self._variants.get(interest)
        if code is None:
            code = self._variants[interest] = compile_variant(self.source, interest)
            _by_code.setdefault(code, self)
        return code

    def enable_free(self, name: str) -> None:
        """Let states give free name ``name`` a value: recompile the running variants."""
        source = self.source
        if name in source.free_state:
            return
        with _lock:
            current = next((i for i, c in self._variants.items() if c is self.current), None)
            was_idle = self.current is self.idle
            source.free_state = source.free_state | {name}
            self._variants.clear()
            self.idle = compile_variant(source, frozenset())
            _by_code.setdefault(self.idle, self)
            if was_idle:
                self.set_code(self.idle)
            else:
                self.set_code(self.code_for(current))

    def set_code(self, code: types.CodeType) -> None:
        if code is self.current:
            return
        for fn in self.functions():
            fn.__code__ = code
        self.current = code

    def __repr__(self) -> str:
        return f"<FnState {self.module}.{self.qualname}>"


def state_of(code: types.CodeType) -> FnState | None:
    """The state of a function given any of its code objects (original or variant)."""
    return _by_code.get(code)


def state_by_fid(fid: int) -> FnState:
    return _by_fid[fid]


def unwrap(fn: Any) -> Any:
    """The innermost function below decorators, bound methods and selfless objects."""
    seen = set()
    while id(fn) not in seen:
        seen.add(id(fn))
        if isinstance(fn, (types.MethodType, staticmethod, classmethod)):
            fn = fn.__func__
        elif isinstance(fn, property) and fn.fget is not None:
            fn = fn.fget
        elif hasattr(fn, "__ptera_function__"):
            fn = fn.__ptera_function__
        elif getattr(fn, "__wrapped__", None) is not None:
            fn = fn.__wrapped__
        else:
            break
    return fn


def state_for(fn: types.FunctionType, *, discover: bool = False) -> FnState:
    """The ``FnState`` of a function, created on first use.

    With ``discover``, other function objects sharing the code (a closure made
    twice, a reference kept in a registry) are found through the garbage collector so the swap
    reaches them too.
    """
    with _lock:
        state = _by_code.get(fn.__code__)
        if state is None:
            state = FnState(fn)
            _by_code[fn.__code__] = state
            _by_fid[state.fid] = state
            if discover:
                # Other function objects running the same code (copies made with
                # FunctionType, functools wrappers' targets) must see the swap too.
                # gc answers exactly that in ~20 ms; importing codefind scans the
                # whole heap (1.7 s once torch is loaded) and trips deprecation
                # warnings in other libraries.
                others = gc.get_referrers(fn.__code__)
                for other in others:
                    if isinstance(other, types.FunctionType) and other is not fn:
                        state.adopt(other)
        else:
            state.adopt(fn)
        return state


def registry_version() -> int:
    """Changes whenever a function is decorated (wildcard matches may change)."""
    return _version[0]


_version = [0]


def register_tooled(fn: types.FunctionType) -> FnState:
    """Mark ``fn`` as decorated: it answers ``*`` and names not found in scope."""
    state = state_for(fn)
    state.tooled = True
    _tooled[state.fid] = state
    _version[0] += 1
    if state.source.stateful:
        # Declared and defaulted variables take values from the call's state even when idle.
        state.idle = compile_variant(state.source, frozenset())
        _by_code.setdefault(state.idle, state)
        state.set_code(state.idle)
    return state


def unregister_tooled(state: FnState) -> None:
    """Undo ``register_tooled``: ``state`` no longer answers ``*`` or bare names."""
    if _tooled.pop(state.fid, None) is not None:
        state.tooled = False
        _version[0] += 1


def tooled_states() -> list[FnState]:
    """Every function decorated with ``@tooled`` that still exists."""
    dead = [fid for fid, st in _tooled.items() if st.function is None]
    for fid in dead:
        del _tooled[fid]
    return list(_tooled.values())


class NotFound(LookupError):
    """A name in a selector resolves to nothing (``part``: the piece that failed)."""

    def __init__(self, message: str, part: str | None = None):
        super().__init__(message)
        self.part = part


def _no_attribute(name: str, head: str, rest: list[str], i: int, obj: Any) -> str:
    where = ".".join([head, *rest[:i]])
    children = getattr(obj, "_modules", None)  # a torch Module: say what it has
    if isinstance(children, dict):
        known = ", ".join(children) or "none"
        return (
            f"'{name}' cannot be resolved: '{where}' has no submodule '{rest[i]}' (it has: {known})"
        )
    return f"'{name}' cannot be resolved: '{where}' has no attribute '{rest[i]}'"


def functions_of(obj: Any, name: str) -> list[types.FunctionType]:
    """The Python functions a resolved selector name stands for."""
    if isinstance(obj, type):
        for attr in ("forward", "__call__"):
            for klass in obj.__mro__:
                if attr in vars(klass) and klass is not object:
                    return functions_of(vars(klass)[attr], name)
        raise NotFound(f"'{name}' is a class without a forward or __call__ method: name a method")
    fn = unwrap(obj)
    if isinstance(fn, types.FunctionType):
        return [_through_closure(fn, name)]
    if not callable(fn):
        raise NotFound(f"'{name}' is {type(obj).__name__}, not a Python function")
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, property) and getattr(fn, "__name__", None) in ("__get__", "__set__"):
        # `Cls.prop.__get__` stands for the property's getter (core.md), `__set__` its setter.
        accessor = owner.fget if fn.__name__ == "__get__" else owner.fset
        if accessor is not None:
            return functions_of(accessor, name)
    cls = type(fn)
    if not isinstance(fn, types.BuiltinFunctionType) and any(
        isinstance(vars(k).get(a), types.FunctionType)
        for k in cls.__mro__
        for a in ("forward", "__call__")
    ):
        return functions_of(cls, name)
    raise TypeError(
        f"'{name}' is a {cls.__name__}, not a Python function: ptera can only probe"
        " functions written in Python (it rewrites their source); name the Python"
        " function it calls instead (for a property, `Cls.prop.fget` or `Cls.prop`)"
    )


def _through_closure(fn: types.FunctionType, name: str) -> types.FunctionType:
    """The function a decorator's closure wraps, when the name asks for it.

    A wrapper made without ``functools.wraps`` (``def inner(*a): return fn(*a)``)
    has another name than the one the selector gives (``hidden``); if its closure
    holds a function of that name, that function is the one meant.
    """
    wanted = name.replace(":", ".").replace("/", ".").split(".")[-1]
    current, seen = fn, set()
    while current.__name__ != wanted and current.__closure__ and id(current) not in seen:
        seen.add(id(current))
        inner = [unwrap(f) for f in map(_cell_value, current.__closure__)]
        inner = [f for f in inner if isinstance(f, types.FunctionType)]
        found = next((f for f in inner if f.__name__ == wanted), None)
        if found is not None:
            return found
        if len(inner) != 1:
            break
        current = inner[0]  # a wrapper of a wrapper: follow the one function it holds
    return fn


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _getattr_path(obj: Any, parts: Iterable[str]) -> Any:
    for part in parts:
        if isinstance(obj, type):
            # Look into the class dict to see staticmethods and properties as such.
            for klass in obj.__mro__:
                if part in vars(klass):
                    obj = vars(klass)[part]
                    break
            else:
                obj = getattr(obj, part)
        else:
            obj = getattr(obj, part)
    return obj


def _import_path(path: str) -> Any:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            return _getattr_path(module, parts[i:])
        except AttributeError:
            break
    raise NotFound(f"cannot import '{path}'")


def resolve(name: str, env: Mapping[str, Any] | None) -> list[FnState]:
    """Resolve a selector's function name to the states of the functions it names.

    Order: ``/module/path``; the head in ``env``; ``@tooled`` functions by name;
    ``torch.nn.Module`` subclasses by class name; an import path.
    """
    if name.startswith("/"):
        _, module, path = name.split("/", 2)
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise NotFound(f"cannot import module '{module}' ({exc})") from None
        try:
            obj = _getattr_path(mod, path.split("."))
        except AttributeError:
            raise NotFound(f"module '{module}' has no '{path}'") from None
        return [state_for(f, discover=True) for f in functions_of(obj, name)]
    head, *rest = name.split(".")
    if env is not None and head in env:
        obj = env[head]
        for i, part in enumerate(rest):
            try:
                obj = _getattr_path(obj, [part])
            except AttributeError:
                raise NotFound(_no_attribute(name, head, rest, i, obj), part) from None
        return [state_for(f, discover=not _is_tooled(f)) for f in functions_of(obj, name)]
    found = [
        st
        for st in tooled_states()
        if st.name == name or st.qualname == name or st.qualname.endswith("." + name)
    ]
    if found:
        return found  # (a decorated function named like a builtin, `sum`, included)
    if not rest and head in vars(builtins) and callable(vars(builtins)[head]):
        functions_of(vars(builtins)[head], name)  # a builtin: says it cannot be probed
    classes = _module_classes(head)
    if classes:
        fns = {f: None for c in classes for f in functions_of(_getattr_path(c, rest), name)}
        return [state_for(f, discover=True) for f in fns]
    obj = _import_path(name)
    return [state_for(f, discover=True) for f in functions_of(obj, name)]


def bound_instance(name: str, env: Mapping[str, Any] | None) -> Any:
    """The ``torch.nn.Module`` a selector name binds (``net.2``, ``model.layers.3.mlp``,
    a module in ``env``), or None: its calls alone match, not those of its class."""
    head, *rest = name.split(".")
    torch = sys.modules.get("torch")
    base = getattr(getattr(torch, "nn", None), "Module", None)
    if base is None or env is None or head not in env:
        return None
    try:
        obj = _getattr_path(env[head], rest)
    except AttributeError:
        return None
    if isinstance(obj, types.MethodType):
        obj = obj.__self__
    return obj if isinstance(obj, base) else None


def _module_classes(name: str) -> list[type]:
    """``torch.nn.Module`` subclasses named ``name`` (when torch is loaded): ``Linear > x``."""
    torch = sys.modules.get("torch")
    base = getattr(getattr(torch, "nn", None), "Module", None)
    if base is None:
        return []
    canonical = getattr(torch.nn, name, None)
    if isinstance(canonical, type) and issubclass(canonical, base):
        return [canonical]  # `Linear` is torch.nn.Linear, not a quantized namesake
    found, todo, seen = [], [base], set()
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                if sub.__name__ == name:
                    found.append(sub)
    return found


def module_forwards(env: Mapping[str, Any] | None) -> list[FnState]:
    """The ``forward`` of each class of the ``torch.nn.Module`` objects in ``env`` and
    their submodules (also inside lists, tuples and dicts there).

    What ``f >> $p:Parameter`` searches for the parameters a stock module reads:
    the modules in scope, not every module class torch defines (instrumenting
    those costs milliseconds on each activation).
    """
    torch = sys.modules.get("torch")
    base = getattr(getattr(torch, "nn", None), "Module", None)
    if base is None or not env:
        return []
    classes: dict[type, None] = {}
    for value in list(env.values()):
        if isinstance(value, (list, tuple)):
            items = value
        elif isinstance(value, dict) and "__builtins__" not in value:
            items = list(value.values())
        else:
            items = (value,)
        for item in items:
            if isinstance(item, base):
                classes.update((type(m), None) for m in item.modules())
    found = []
    for cls in classes:
        st = _forwards.get(cls, False)
        if st is False:
            fn = unwrap(getattr(cls, "forward", None))
            st = None
            if isinstance(fn, types.FunctionType):
                try:
                    st = state_for(fn)
                    if not st.source.attributes:
                        st = None
                except TransformError:  # no source: no attributes to report
                    st = None
            _forwards[cls] = st
        if st is not None and st not in found:
            found.append(st)
    return found


_forwards: dict[type, FnState | None] = {}


def _is_tooled(fn: Any) -> bool:
    st = _by_code.get(getattr(unwrap(fn), "__code__", None))
    return bool(st and st.tooled)
