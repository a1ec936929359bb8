"""ptera: look inside and steer Python programs with selectors, without editing them."""

from .capture import Capture
from .overlay import BaseOverlay, Immediate, PteraNameError, Total
from .probe import OverridableProbe, Probe, global_probe, probing
from .selector import Scope, SelectorError, Var, select
from .tags import Tag, TagSet, match_tag, tag
from .tooling import is_tooled, tooled
from .transform import ABSENT, TransformError

__version__ = "1.4.2"

ptera = tooled

__all__ = [
    "ABSENT",
    "BaseOverlay",
    "Capture",
    "Immediate",
    "OverridableProbe",
    "Probe",
    "PteraNameError",
    "Scope",
    "SelectorError",
    "Tag",
    "TagSet",
    "Total",
    "TransformError",
    "Var",
    "global_probe",
    "is_tooled",
    "match_tag",
    "probing",
    "ptera",
    "select",
    "tag",
    "tooled",
]
