"""A small operator-precedence parser (1.4's ``ptera.opparse``), kept for programs
that build their own little languages with it.

A ``Lexer`` cuts text into ``Token``s with a table of regular expressions; a
``Parser`` groups them with an ``OperatorPrecedenceTower`` that gives every
operator a pair of priorities ``(right, left)``: the priority it has when it is
to the right of an argument, and when it is to the left. Between two
operators around one argument, the one with the higher priority takes the
argument; equal priorities mean both belong to one construct (the two halves
of a bracket, a ternary). Helpers build the pairs: ``lassoc``, ``rassoc``,
``obrack``, ``cbrack``.

The result is a tree of ``ASTNode`` (``args``, ``ops``, ``key`` such as
``"X + X"`` or ``"_ ( X )"``) whose leaves are tokens; a lone operator with no
arguments is its token. Our own selector parser (``selector.py``) is a
hand-written recursive parser and does not use this module.

Decisions:

* Tokens that no definition matches become one-character tokens of type
  ``None``; an operator the tower does not know is a ``SyntaxError`` that
  points at it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "ASTNode",
    "Lexer",
    "Location",
    "OperatorPrecedenceTower",
    "Parser",
    "Token",
    "cbrack",
    "lassoc",
    "obrack",
    "rassoc",
]


class Location:
    """A span ``[start, end)`` of ``source``, for error messages."""

    def __init__(self, source: str, filename: str, start: int, end: int):
        self.source, self.filename, self.start, self.end = source, filename, start, end

    def syntax_error(self, msg: str = "Invalid syntax") -> SyntaxError:
        """A ``SyntaxError`` pointing at this span (returned, to be raised by the caller)."""
        err = SyntaxError(msg)
        err.filename, err.lineno, err.offset, err.text = (
            self.filename,
            1,
            self.start + 1,
            self.source,
        )
        return err

    def __repr__(self) -> str:
        return f"Location({self.start}, {self.end})"


class Token:
    """A piece of text with a type (``None`` when no definition matched)."""

    def __init__(self, value: str, type: str | None, source: str, start: int, end: int):  # noqa: A002
        self.value = value.strip()
        self.type = type
        self.location = Location(source, "<string>", start, end)

    def __repr__(self) -> str:
        return f"Token({self.value!r}, {self.type!r})"


class ASTNode:
    """A group of arguments (``None`` where absent) separated by operator tokens."""

    def __init__(self, parts: list):
        self.args = parts[0::2]
        self.ops = parts[1::2]
        self.key = " ".join(
            p.value if i % 2 else ("_" if p is None else "X") for i, p in enumerate(parts)
        )
        present = [p for p in parts if p is not None]
        if not present:
            raise ValueError("an ASTNode needs at least one part")
        first, last = present[0].location, present[-1].location
        self.location = Location(first.source, first.filename, first.start, last.end)

    def __repr__(self) -> str:
        return f"ASTNode({self.key!r})"


class Lexer:
    """Cut text into tokens, trying ``definitions`` (regex -> type) in order."""

    def __init__(self, definitions: Mapping[str, str]):
        self.definitions = dict(definitions)
        self.token_types = [None, *self.definitions.values()]
        self._compiled = [(re.compile(rx), typ) for rx, typ in self.definitions.items()]

    def __call__(self, code: str) -> list[Token]:
        code = code.strip()
        tokens, pos = [], 0
        while pos < len(code):
            for rx, typ in self._compiled:
                m = rx.match(code, pos)
                if m and m.end() > pos:
                    tokens.append(Token(m.group(), typ, code, pos, m.end()))
                    pos = m.end()
                    break
            else:
                tokens.append(Token(code[pos], None, code, pos, pos + 1))
                pos += 1
        return tokens


class OperatorPrecedenceTower:
    """Priorities of operators: ``{op or (ops...): (right_prio, left_prio)}``.

    A key ``": TYPE"`` gives the priority of every token of that type.
    """

    def __init__(self, operators: Mapping[Any, tuple]):
        self.operators: dict[str, tuple] = {}
        for keys, prio in operators.items():
            for key in keys if isinstance(keys, tuple) else (keys,):
                self.operators[key] = prio

    def resolve(self, op: Token | None) -> tuple:
        """The ``(right, left)`` priorities of a token (lowest for the text's ends)."""
        if op is None:
            return (-math.inf, -math.inf)
        prio = self.operators.get(op.value) or self.operators.get(f": {op.type}")
        if prio is None:
            raise op.location.syntax_error(f"Invalid token: {op.value} :: {op.type}")
        return prio

    def __call__(self, left: Token | None, right: Token | None) -> Any:
        """Positive: ``right`` takes the argument between; negative: ``left`` does;
        zero: both are parts of one construct; ``"done"`` at the end."""
        if left is None and right is None:
            return "done"
        return self.resolve(right)[0] - self.resolve(left)[1]


class Parser:
    """Group a token list into ``ASTNode``s by operator precedence."""

    def __init__(self, lexer: Callable[[str], list], order: Callable):
        self.lexer, self.order = lexer, order

    def __call__(self, code: str) -> Any:
        return self.process(self.lexer(code))

    def process(self, tokens: list) -> Any:
        """Parse a list of tokens (every token is an operator; arguments are groups)."""
        rest = iter(tokens)
        groups: list[list] = []  # enclosing open groups
        group: list = [None, None]  # [arg, op, arg, op, ...]: args and ops alternate
        arg = None  # the argument between the group's last op and `nxt`
        nxt = next(rest, None)
        while True:
            cmp = self.order(group[-1], nxt)
            if cmp == "done":
                return arg
            if cmp > 0:
                groups.append(group)
                group = [arg, nxt]
                arg, nxt = None, next(rest, None)
            elif cmp < 0:
                arg = self.finalize([*group, arg])
                group = groups.pop()
            else:
                group += [arg, nxt]
                arg, nxt = None, next(rest, None)

    def finalize(self, parts: list) -> Any:
        """A closed group: its lone operator, or an ``ASTNode``."""
        if len(parts) == 3 and parts[0] is None and parts[2] is None:
            return parts[1]
        return ASTNode(parts)


def lassoc(prio: float) -> tuple:
    """Priorities of a left-associative operator (``a - b - c`` is ``(a - b) - c``)."""
    return (prio, prio + 1)


def rassoc(prio: float) -> tuple:
    """Priorities of a right-associative operator (``a ** b ** c`` is ``a ** (b ** c)``)."""
    return (prio, prio - 1)


def obrack(prio: float) -> tuple:
    """Priorities of an opening bracket."""
    return (prio, 0)


def cbrack(prio: float) -> tuple:
    """Priorities of a closing bracket."""
    return (0, prio + 1)
