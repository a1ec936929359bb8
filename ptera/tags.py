"""Tags: names that annotations carry so that selectors can filter variables.

``lr: tag.HyperParameter = default(0.1)`` tags ``lr``; ``n: tag.CliArgument & int``
tags ``n`` and also says it is an ``int``. A selector filters on tags with
``:HyperParameter``.

Decisions:

* Tags print as ``ptera.tag.Name``, and a ``TagSet`` prints its members sorted
  (``ptera.tag.Bar & ptera.tag.Foo``), as in 1.4.
* Older ptera's spellings are kept: ``cat`` is ``tag`` and ``+`` combines
  like ``&`` (``cat.Learnable + cat.WeightMatrix``).
* A local's annotation that fails to evaluate is no error (Python never
  evaluates it) but an ``AnnotationWarning``, raised when the function is
  instrumented: tag and type filters cannot match that variable.
* 1.4's string spelling ``x: "@Important"`` (or ``"@A & @B"``) is read as those tags.
"""

from __future__ import annotations

from dataclasses import dataclass


class AnnotationWarning(UserWarning):
    """A local's annotation failed to evaluate, so no tag or type filter matches it."""


@dataclass(frozen=True, slots=True)
class Tag:
    """A named marker used in annotations (``x: tag.Important``)."""

    name: str

    def __and__(self, other: object) -> TagSet:
        return TagSet.of(self, other)

    def __rand__(self, other: object) -> TagSet:
        return TagSet.of(other, self)

    # Older ptera combined tags with `+` (`cat.Learnable + cat.WeightMatrix`).
    __add__ = __and__
    __radd__ = __rand__

    def __repr__(self) -> str:
        return f"ptera.tag.{self.name}"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class TagSet:
    """An annotation made of several parts: ``tag.A & tag.B & int``."""

    members: frozenset

    @classmethod
    def of(cls, *parts: object) -> TagSet:
        """Combine tags, types and tag sets into one flat set."""
        members = set()
        for part in parts:
            members.update(part.members if isinstance(part, TagSet) else (part,))
        return cls(frozenset(members))

    def __and__(self, other: object) -> TagSet:
        return TagSet.of(self, other)

    def __rand__(self, other: object) -> TagSet:
        return TagSet.of(other, self)

    __add__ = __and__
    __radd__ = __rand__

    def __repr__(self) -> str:
        return " & ".join(sorted(map(_annotation_repr, self.members)))

    __str__ = __repr__


def _annotation_repr(x: object) -> str:
    return repr(x) if isinstance(x, Tag) else getattr(x, "__qualname__", repr(x))


class _TagFactory:
    """``tag.Name`` gives the ``Tag`` named ``Name`` (the same object each time)."""

    def __init__(self):
        self._tags: dict[str, Tag] = {}

    def __getattr__(self, name: str) -> Tag:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._tags.setdefault(name, Tag(name))


tag = _TagFactory()
cat = tag  # older ptera's name for it ("category"): `cat.CliArgument` is `tag.CliArgument`


def get_tags(*names: str | Tag) -> Tag | TagSet:
    """One tag from a name (``get_tags("A")``), or a ``TagSet`` from several."""
    tags = [getattr(tag, n) if isinstance(n, str) else n for n in names]
    return tags[0] if len(tags) == 1 else TagSet.of(*tags)


def spelled_tags(text: str) -> Tag | TagSet:
    """The tags of 1.4's string spelling, ``"@Important & @Other"`` (parts without
    ``@`` are not tags and are left out)."""
    parts = [p.strip() for p in text.split("&")]
    return get_tags(*(p[1:] for p in parts if p.startswith("@")))


def match_tag(wanted: object, annotation: object) -> bool:
    """Whether ``annotation`` is the tag ``wanted`` or a ``TagSet`` containing it.

    ``wanted=None`` matches anything, as in 1.4.
    """
    if wanted is None:
        return True
    if annotation == wanted:
        return True
    return isinstance(annotation, TagSet) and wanted in annotation.members


def annotation_parts(annotation: object) -> frozenset | tuple:
    """The members of an annotation: itself (unhashed: a class may be unhashable), or
    the parts of a ``TagSet``."""
    if isinstance(annotation, TagSet):
        return annotation.members
    return (annotation,)


def annotation_matches(annotation: object, wanted: object) -> bool:
    """Whether an annotation satisfies a selector's ``:Tag`` filter.

    ``wanted`` is a ``Tag``, a class (the annotation is it or a subclass), or a
    name, which matches a tag of that name or a class whose MRO has that name
    (so ``:Parameter`` matches ``torch.nn.Parameter`` without importing torch).
    """
    for part in annotation_parts(annotation):
        if isinstance(wanted, str):
            if isinstance(part, Tag):
                if part.name == wanted:
                    return True
            elif isinstance(part, type):
                names = {c.__name__ for c in part.__mro__}
                names |= {f"{c.__module__}.{c.__qualname__}" for c in part.__mro__}
                if wanted in names:
                    return True
        elif isinstance(wanted, Tag):
            if part == wanted:
                return True
        elif isinstance(wanted, type) and isinstance(part, type):
            if issubclass(part, wanted):
                return True
        elif part is wanted:
            return True
    return False
