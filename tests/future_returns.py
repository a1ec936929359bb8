"""Functions whose return annotations are strings twice over (``from __future__
import annotations`` quotes an annotation that is already a string)."""

from __future__ import annotations

from ptera import tag, tooled


@tooled
def aged(x) -> "@Fromage":  # noqa: F722 (1.4's spelling of a tag)
    a = x + 1
    return a


@tooled
def blue(x) -> "tag.Fromage & tag.Bleu":  # noqa: UP037 (quoted on purpose)
    a = x + 2
    return a


@tooled
def platter(x) -> tag.Plateau:
    return aged(x) + blue(x)
