"""The ``@tooled`` decorator: make a function's variables addressable.

The decorator returns the very same function object (so calling it costs nothing
extra), registered with the engine and carrying ``__ptera_info__`` and the object
methods of ``selfless.py`` (``new``, ``using``, ``tweak``, ...). Its code stays
the original until an overlay needs it; a function that declares variables
without values (``z: int``) runs a light variant that only guards their reads.

Decisions:

* ``__ptera_info__`` also lists the meta-variables ``#enter``, ``#exit``,
  ``#receive`` and ``#yield`` (provenance ``"meta"``, annotated ``tag.enter`` or
  ``tag.exit``), which coleo's catalogue expects, as 1.4 did.
* ``instrumented_source`` shows, as text, the code ptera would swap in.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Iterable
from typing import Any

from .lookup import register_tooled, state_for, unwrap
from .overlay import HELPERS
from .selfless import attach
from .tags import tag
from .transform import HELPER, instrument

__all__ = ["instrumented_source", "is_tooled", "tooled"]


def tooled(fn: Any = None) -> Any:
    """Instrument ``fn`` so that selectors can address its variables; returns ``fn``.

    ``@tooled()`` (with parentheses, as 1.4 allowed) is the same decorator.
    """
    if fn is None:
        return tooled
    if isinstance(fn, (staticmethod, classmethod)):
        tooled(fn.__func__)
        return fn
    target = unwrap(fn)
    if not isinstance(target, types.FunctionType):
        raise TypeError(f"@tooled needs a Python function, not {type(fn).__name__}")
    if HELPER not in target.__globals__:
        # Else an engine's helpers are there already, maybe a fresh engine's that runs
        # code in this module; idle code only calls the helpers engines share.
        target.__globals__.update(HELPERS)
    state = register_tooled(target)
    if not hasattr(target, "__ptera_info__"):
        info = {n: v.as_dict() for n, v in state.source.variables.items()}
        target.__ptera_info__ = {**info, **_meta_info()}
    attach(target, state)
    if fn is not target and not hasattr(fn, "__ptera_info__"):
        try:
            fn.__ptera_info__ = target.__ptera_info__
        except AttributeError:
            pass
    return fn


def _meta_info() -> dict:
    """The meta-variables every function has, annotated with their meta-tags (as in 1.4)."""
    annotations = {
        "#enter": tag.enter,
        "#exit": tag.exit,
        "#receive": tag.enter,
        "#yield": tag.exit,
    }
    return {
        name: {"annotation": ann, "provenance": "meta", "doc": None, "location": None}
        for name, ann in annotations.items()
    }


def is_tooled(fn: Any) -> bool:
    """Whether ``fn`` (or the function of a bound method) was decorated with ``@tooled``."""
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    return hasattr(fn, "__ptera_info__")


def instrumented_source(fn: Any, variables: Iterable[str] | None = None) -> str:
    """The source of the code ptera runs for ``fn`` when ``variables`` are wanted.

    ``variables`` names the points to report (``{"x", "#value"}``); ``None`` means
    every point, and an empty set gives the code ``fn`` runs while nothing watches
    it. Nothing is activated: this reads what a probe would swap in.
    """
    target = unwrap(fn)
    if not isinstance(target, types.FunctionType):
        raise TypeError(f"instrumented_source needs a Python function, not {type(fn).__name__}")
    if isinstance(variables, str):
        raise TypeError(f"variables is a set of names, like {{{variables!r}}}, not a string")
    source = state_for(target).source
    interest = None if variables is None else frozenset(variables)
    if interest is not None:
        known = source.local_names | source.attributes.keys() | source.stores.keys()
        unknown = sorted(n for n in interest if not n.startswith("#") and n not in known)
        if unknown:
            raise ValueError(
                f"{target.__qualname__} has no variable {', '.join(map(repr, unknown))}"
                f" (it has: {', '.join(sorted(known)) or 'none'})"
            )
        if not interest and not source.stateful:
            return ast.unparse(source.tree)  # idle, it runs its own code
    return ast.unparse(instrument(source, interest))
