"""Small public helpers: ``refstring``, ``is_tooled``, ``ABSENT``, named sentinels.

Decisions:

* ``refstring(fn)`` gives the import-path selector of ``fn``
  (``/pkg.mod/Cls/meth``, 1.4's form; selectors also read ``Cls.meth``), checked
  by resolving it back to the same code the way a selector would; a function
  that this path cannot reach (one defined inside another function) raises
  ``CodeNotFoundError`` instead of giving a path that finds nothing. A function
  of the main script gives ``/__main__/f``, which selectors resolve.
* A class stands for its ``__init__`` and a callable object for its
  ``__call__``, as when probing them.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable
from typing import Any

from .lookup import unwrap
from .tooling import is_tooled
from .transform import ABSENT

__all__ = ["ABSENT", "CodeNotFoundError", "Named", "is_tooled", "keyword_decorator", "refstring"]


class Named:
    """An object that prints as its name (for sentinels such as ``ABSENT``)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


class CodeNotFoundError(LookupError):
    """``refstring`` found no import path that leads back to the function."""


def keyword_decorator(deco: Callable) -> Callable:
    """Let ``deco(fn, **options)`` also be used as ``@deco(**options)``."""

    @functools.wraps(deco)
    def decorate(fn: Any = None, **options: Any) -> Any:
        if fn is None:
            return lambda fn: deco(fn, **options)
        return deco(fn, **options)

    return decorate


def _target(fn: Any) -> Any:
    if isinstance(fn, type):
        return fn.__init__
    call = vars(type(fn)).get("__call__") if callable(fn) else None
    if not isinstance(fn, (types.FunctionType, types.MethodType)) and isinstance(
        call, types.FunctionType
    ):
        return fn.__call__
    return fn


def refstring(fn: Any) -> str:
    """The selector that names ``fn`` by import path, e.g. ``/squid.game/bloop``."""
    target = _target(fn)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"cannot make a refstring for {fn!r}: a {type(fn).__name__} has no module and name"
        )
    ref = _build_refstring(module, qualname)
    if "<locals>" in qualname or not _leads_back(module, qualname, target):
        raise CodeNotFoundError(
            f"cannot make a refstring for {fn!r}: '{ref}' does not lead back to it"
            " (a function defined inside another one, or with a wrong __module__ or"
            " __qualname__, cannot be named by import path; give the object in env= instead)"
        )
    return ref


def _build_refstring(module: str, qualname: str) -> str:
    """``/module/Cls/meth`` (1.4's helper, by the name its tests import; a script's
    function is ``/__main__/f``, which selectors resolve, where 1.4 gave ``//f``)."""
    return f"/{module}/{qualname.replace('.', '/')}"


def _leads_back(module: str, qualname: str, target: Any) -> bool:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return False
    code = getattr(unwrap(target), "__code__", None)
    return obj is target or (code is not None and getattr(unwrap(obj), "__code__", None) is code)
