"""ptera: look inside and steer Python programs with selectors, without editing them."""

import sys as _sys
import types as _types

from giving import operators as op

from . import interpret, opparse, tools, utils
from .capture import Capture
from .cli import CliError, auto_cli
from .compat import Overlay, autotool, no_overlay
from .effects import Overlay as Effects
from .effects import rewriting, tweaking, using
from .overlay import BaseOverlay, Immediate, PteraNameError, Total
from .probe import OverridableProbe, Probe, global_probe, probing
from .recurrence import Recurrence
from .results import Collection, Result
from .selector import (
    Scope,
    SelectorError,
    SelectorSyntaxError,
    UnmatchedSelectorWarning,
    UnresolvedSelectorError,
    Var,
    select,
)
from .selfless import PteraFunction, defaults
from .state import ConflictError, Override, State, default
from .tags import AnnotationWarning, Tag, TagSet, cat, match_tag, tag
from .tooling import instrumented_source, is_tooled, tooled
from .transform import ABSENT, TransformError
from .utils import refstring
from .version import version

__version__ = version

ptera = tooled
tooled.defaults = defaults  # `from ptera import ptera` then `@ptera.defaults(...)`
tooled.inplace = tooled  # 1.4's `@tooled.inplace`: our decorator always works in place


class _CallableModule(_types.ModuleType):
    """``import ptera`` then ``@ptera``: the module decorates like ``ptera.ptera``."""

    def __call__(self, fn):
        return tooled(fn)


_sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "ABSENT",
    "AnnotationWarning",
    "BaseOverlay",
    "Capture",
    "CliError",
    "Collection",
    "ConflictError",
    "Effects",
    "Immediate",
    "Overlay",
    "OverridableProbe",
    "Override",
    "Probe",
    "PteraFunction",
    "PteraNameError",
    "Recurrence",
    "Result",
    "Scope",
    "SelectorError",
    "SelectorSyntaxError",
    "State",
    "Tag",
    "TagSet",
    "Total",
    "TransformError",
    "UnmatchedSelectorWarning",
    "UnresolvedSelectorError",
    "Var",
    "auto_cli",
    "autotool",
    "cat",
    "default",
    "defaults",
    "global_probe",
    "instrumented_source",
    "interpret",
    "is_tooled",
    "match_tag",
    "no_overlay",
    "op",
    "opparse",
    "probing",
    "ptera",
    "refstring",
    "rewriting",
    "select",
    "tag",
    "tooled",
    "tools",
    "tweaking",
    "using",
    "utils",
    "version",
]
