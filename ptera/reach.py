"""The functions a function may call, found statically, for ``f >> x``.

``outer >> doubled`` looks for ``doubled`` in every call below ``outer``. Calls
of ``@tooled`` functions are always candidates; so are the undecorated Python
functions that ``outer`` can reach through the names its code uses:

* a global or closure variable bound to a function (``helper(x)``), a class
  (its ``__init__``, ``__call__`` and ``forward``) or a bound method;
* an attribute of a module or class bound that way (``mod.helper``,
  ``Cls.method``), and, inside a method, an attribute of its own class
  (``self.step()``);
* the functions those reach in turn, up to ``MAX_CALL_DEPTH`` calls down and
  ``MAX_FUNCTIONS`` functions in all.

Decisions:

* Only what the code names can be found: a call through an attribute of an
  arbitrary object (``self.layer(x)`` where ``layer`` is set at run time, a
  callback passed as an argument), a function built at run time, and C
  functions (builtins, ``numpy``/``torch`` kernels) are not reached. Decorate
  such a function, or name it (``outer >> inner > doubled``).
* Functions of the standard library and of ptera itself are not followed: they
  do not hold the user's variables, and reading their source costs time.
* Only a variable named in full is looked for this way (``f >> doubled``, not
  ``f >> $v`` or ``f >> *``, which would instrument every callee): those still
  cover the ``@tooled`` functions only.
* The search runs when a selector is compiled (once per selector and set of
  functions), never while the program runs.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable
from typing import Any

from .transform import closure_values

__all__ = ["MAX_CALL_DEPTH", "MAX_FUNCTIONS", "reachable"]

# Each step down multiplies what is read (a source per function), and the variables a
# user names seldom sit deeper than a few helper calls below the function named.
MAX_CALL_DEPTH = 4
# Every function found may be parsed and instrumented: this bounds the work of
# compiling one selector when a root reaches into a large library.
MAX_FUNCTIONS = 256

_SKIP_MODULES = frozenset(sys.stdlib_module_names) | {"ptera", "builtins"}


def _followed(fn: types.FunctionType) -> bool:
    module = (getattr(fn, "__module__", None) or "").split(".")[0]
    return module not in _SKIP_MODULES and not fn.__code__.co_filename.startswith("<")


def _functions_in(obj: Any) -> Iterable[types.FunctionType]:
    """The Python functions a value stands for when the code calls it."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    while getattr(obj, "__wrapped__", None) is not None and not isinstance(obj, type):
        obj = obj.__wrapped__
    if isinstance(obj, types.FunctionType):
        yield obj
    elif isinstance(obj, type):
        for name in ("__init__", "__call__", "forward"):
            for klass in obj.__mro__:
                if name in vars(klass):
                    yield from _functions_in(vars(klass)[name])
                    break


def _names(code: types.CodeType) -> set[str]:
    """Names used by a code object and the code nested in it (lambdas, comprehensions)."""
    names = set(code.co_names) | set(code.co_freevars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _owner_class(fn: types.FunctionType) -> type | None:
    """The class a method was defined in, from its qualified name."""
    parts = fn.__qualname__.split(".")
    if len(parts) < 2 or "<locals>" in parts:
        return None
    obj: Any = sys.modules.get(fn.__module__)
    for part in parts[:-1]:
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def _callees(fn: types.FunctionType) -> Iterable[types.FunctionType]:
    names = _names(fn.__code__)
    scope = {**fn.__globals__, **closure_values(fn)}
    holders = [scope[n] for n in names if isinstance(scope.get(n), (types.ModuleType, type))]
    owner = _owner_class(fn)
    if owner is not None:
        holders.append(owner)
    for name in names:
        if name in scope:
            yield from _functions_in(scope[name])
        for holder in holders:
            if isinstance(holder, type):
                found = next((vars(k)[name] for k in holder.__mro__ if name in vars(k)), None)
            else:
                found = getattr(holder, name, None)
            if found is not None:
                yield from _functions_in(found)


def reachable(
    roots: Iterable[types.FunctionType], depth: int = MAX_CALL_DEPTH, limit: int = MAX_FUNCTIONS
) -> list[types.FunctionType]:
    """Undecorated Python functions that ``roots`` may call, nearest first (roots excluded)."""
    roots = list(roots)
    seen = {fn.__code__ for fn in roots}
    out: list[types.FunctionType] = []
    frontier = roots
    for _ in range(depth):
        nxt = []
        for fn in frontier:
            for callee in _callees(fn):
                if callee.__code__ in seen or not _followed(callee):
                    continue
                seen.add(callee.__code__)
                out.append(callee)
                nxt.append(callee)
                if len(out) >= limit:
                    return out
        frontier = nxt
    return out
