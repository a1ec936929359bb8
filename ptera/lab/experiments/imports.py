"""Naming code by import path: ``import_object("package.module:attr")``.

Decisions:

* Only an explicit ``"module:attr"`` path is imported (``attr`` may be dotted:
  ``"package.module:Class.method"``), or a key of the ``names`` given: configs
  name code, and a bare word is never guessed at.
* Every failure is a ``ValueError`` that quotes the path and says what was
  wrong: the module does not import (with its own error), or lacks the attribute.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["import_object"]


def import_object(path: str, names: Mapping[str, Any] | None = None) -> Any:
    """The object at ``"package.module:attr"`` (or ``names[path]`` when ``path`` is a key).

    >>> import_object("collections:OrderedDict.fromkeys").__name__
    'fromkeys'
    """
    if not isinstance(path, str):
        raise ValueError(f"expected an import path such as 'package.module:Name', got {path!r}")
    if names is not None and path in names:
        return names[path]
    module, colon, attr = path.partition(":")
    if not colon or not module or not attr:
        known = f" or a known name ({', '.join(sorted(names)[:6])}, ...)" if names else ""
        raise ValueError(
            f"cannot resolve {path!r}: write an import path 'package.module:attr'{known}"
        )
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = ".".join([module, *attr.split(".")[:i]])
            raise ValueError(f"cannot import {path!r}: {where} has no attribute {part!r}") from None
    return obj
