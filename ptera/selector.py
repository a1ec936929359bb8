"""The selector language: parse text into a frozen tree, print it back.

A selector names values inside running functions::

    f > x                    # x, set directly in a call of f
    f(a, b as c) > g >> y    # y anywhere under g called from f, with a and c
    step{!!loss} >> $p:Parameter

Every selector is a tree of two node types. ``Scope`` is a function call (``fn``
is ``None`` for ``*``) whose children are what it captures; ``Var`` is a variable
(``name`` is ``None`` for ``*`` and ``$v``). The root is always a ``Scope``:
``x`` parses as ``*{!x}``.

Decisions where the spec is silent:

* ``deep`` marks a child reached through ``>>``. A deep ``Scope`` is any call below
  its parent; a deep ``Var`` is set in the parent's own call or any call below it.
* ``#key`` (``f[0]``) is a filter, not captured unless renamed (``f[$i]``), so
  ``f[0] > x`` gives only x; other meta-variables named in a selector
  (``f(#loop_i) > x``) are captured under their own name, as in 1.4.
* ``f(!n) as !!v``: the name after ``as`` may carry a focus mark.
* ``a > b`` makes ``b`` the focus when ``b`` is a single variable (or a keyed
  variable ``h[1] as h``) and the selector has no ``!`` elsewhere. Two implicit
  candidates without a ``!`` are ambiguous and rejected.
* A variable's ``focus`` is a ``Focus`` (an ``IntEnum``: ``NONE``, ``PRIMARY`` for
  ``!``, ``SECONDARY`` for ``!!``), equal to the codes 0, 1 and 2 that older code
  compares against; ``CANDIDATE`` (-1) exists only while parsing.
* ``as`` on a function (``f{} as out``) adds ``#value as out`` without making it
  the focus, so that ``a{} as b`` equals ``a{#value as b}``.
* Inside ``f<...>`` a ``>`` closes the bracket; use ``{}`` or ``()`` to nest.
* The canonical form uses ``{}`` brackets everywhere and ``>>`` inside them for
  deep children: ``f >> g > x`` prints as ``f{>> g{!x}}``.
* Errors quote the selector as typed, not its canonical form: the root keeps the
  typed text (``source``) and each parsed node the columns it came from (``span``),
  both left out of equality, so a later error puts its caret on the very
  occurrence that failed (the second ``x`` of ``f(x) > g(x) > q``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from functools import cached_property, lru_cache
from typing import Any

from .sentinel import Sentinel

__all__ = [
    "Element",
    "Focus",
    "Predicate",
    "Scope",
    "SelectorError",
    "SelectorSyntaxError",
    "UnmatchedSelectorWarning",
    "UnresolvedSelectorError",
    "Var",
    "parse",
    "select",
    "split_selectors",
]


class SelectorError(ValueError):
    """A selector is wrong: ``reason``, shown under its ``text`` with a caret at ``column``.

    The base of the selector errors; raised as such for misuse (a probe that needs a
    focus and has none). ``text`` is the selector as the user typed it; given a parsed
    ``Scope``, its typed text is used (its canonical form for a tree built by hand).
    """

    def __init__(self, text: str | Scope, column: int, reason: str):
        if isinstance(text, Scope):
            text = text.source if text.source is not None else str(text)
        super().__init__(text, column, reason)  # the args rebuild it when unpickled
        self.text, self.column, self.reason = text, column, reason

    @property
    def col(self) -> int:
        """The column (the name before ``column``)."""
        return self.column

    @property
    def expected(self) -> str:
        """The reason (the name before ``reason``)."""
        return self.reason

    def __str__(self) -> str:
        return f"{self.reason}\n{_point_at(self.text, self.column)}"


class SelectorSyntaxError(SelectorError):
    """A selector's text does not parse; ``column`` is where the parser stopped."""


class UnresolvedSelectorError(SelectorError):
    """A selector parses but names what does not exist: an unknown function, a variable
    the function lacks, a name not bound in ``env``; ``column`` is that occurrence."""


def _point_at(text: str, column: int) -> str:
    """``text`` indented, with a caret under ``column`` (under its own line if several)."""
    column = min(max(column, 0), len(text))
    lines = text.split("\n")
    row = text.count("\n", 0, column)
    before = text[text.rfind("\n", 0, column) + 1 : column]
    # Tabs stay tabs so that the caret lines up however the terminal expands them.
    caret = "  " + "".join(c if c == "\t" else " " for c in before) + "^"
    shown = ["  " + line for line in lines]
    shown.insert(row + 1, caret)
    return "\n".join(shown)


class UnmatchedSelectorWarning(UserWarning):
    """A selector resolved, but nothing it can reach has the variable it names."""


NOVALUE = Sentinel("NOVALUE")

META_DEFAULT_CAPTURE = None


class Focus(IntEnum):
    """What a variable is to its selector: the value it gives (``!``), the one paired
    with that (``!!``), or a capture that comes along with them."""

    NONE = 0  # captured with the focus, not the focus itself
    PRIMARY = 1  # `!x`: what a probe gives, what a tweak replaces
    SECONDARY = 2  # `!!x`: the second focus (Grad's denominator, a rewrite's input)
    CANDIDATE = -1  # while parsing only: `a > b` makes `b` the focus if no `!` is written


@dataclass(frozen=True, slots=True)
class Predicate:
    """A ``~`` filter, ``x~pred`` or ``j~every(3)``: a name the env binds to a
    function of the value, or a call with literal arguments that returns one (1.4)."""

    name: str
    args: tuple = ()
    kwargs: tuple = ()  # (name, value) pairs
    call: bool = False  # written with parentheses

    def __str__(self) -> str:
        if not self.call:
            return self.name
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Var:
    """A variable to capture: ``x``, ``!x as y``, ``$v:Tag``, ``#key=0``."""

    name: str | None  # None for ``*`` and ``$v``
    capture: str | None = None  # the key in results; None: not captured
    focus: Focus = Focus.NONE
    tag: str | None = None  # ``Name``, ``dotted.Name``, ``@enter`` or ``##X``
    value: Any = NOVALUE  # equality filter, or a Predicate (``~``)
    deep: bool = False
    # Columns of the typed text this node came from (see ``Scope.source``).
    span: tuple[int, int] | None = field(default=None, compare=False, repr=False)

    @property
    def is_meta(self) -> bool:
        return self.name is not None and self.name.startswith("#")

    @property
    def out_name(self) -> str | None:
        """The name this variable has in results (its own name if it is the focus).

        A meta-variable other than ``#key`` also has its own name: ``f(#loop_i) > x``
        gives ``#loop_i`` with each ``x``, as in 1.4.
        """
        if self.capture is None and (
            self.focus or (self.is_meta and self.name != "#key" and not self.name.startswith("##"))
        ):
            return self.name
        return self.capture

    def __str__(self) -> str:
        out = ">> " if self.deep else ""
        out += "!" * self.focus
        # `$w` cannot spell a key with a hash: `* as #w` (what `$v as #w` reads as)
        hashed = self.name is None and self.capture is not None and self.capture[0] == "#"
        if self.name is None:
            out += f"${self.capture}" if self.capture is not None and not hashed else "*"
        else:
            out += self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if isinstance(self.value, Predicate):
            out += f"~{self.value}"
        elif self.value is not NOVALUE:
            out += f"={self.value!r}"
        if hashed or (self.name is not None and self.capture != _default_capture(self.name)):
            out += f" as {self.capture}"
        return out


@dataclass(frozen=True)
class Scope:
    """A call of a function (``fn=None`` for any function) and what to capture in it."""

    fn: str | None
    children: tuple[Node, ...] = ()
    deep: bool = False
    env: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    span: tuple[int, int] | None = field(default=None, compare=False, repr=False)
    source: str | None = field(default=None, compare=False, repr=False)  # the root's typed text
    tag: str | None = None  # ``*:Tag(...)``: only functions whose return annotation has it

    def __str__(self) -> str:
        out = ">> " if self.deep else ""
        out += self.fn or "*"
        if self.tag is not None:
            out += f":{self.tag}"
        return out + "{" + ", ".join(map(str, self.children)) + "}"

    def walk(self):
        """Yield every node of the tree, parents first."""
        yield self
        for child in self.children:
            if isinstance(child, Scope):
                yield from child.walk()
            else:
                yield child

    @cached_property
    def focus(self) -> Var | None:
        """The primary focus variable, if any."""
        return next(
            (n for n in self.walk() if isinstance(n, Var) and n.focus == Focus.PRIMARY), None
        )

    @property
    def main(self) -> Var | None:
        """1.4's name for ``focus``."""
        return self.focus

    @cached_property
    def secondary(self) -> Var | None:
        """The secondary focus (``!!``), if any."""
        return next(
            (n for n in self.walk() if isinstance(n, Var) and n.focus == Focus.SECONDARY), None
        )


Node = Var | Scope

# 1.4's name for a selector's variable node (its tests import it: `Element(name=None)`).
Element = Var


def _default_capture(name: str) -> str | None:
    return META_DEFAULT_CAPTURE if name.startswith("#") else name


_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_NUMBER = re.compile(r"-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_KEYWORDS = {"None": None, "True": True, "False": False}
_OPENERS = {"(": ")", "{": "}", "<": ">"}
# Past this nesting the parser's recursion could hit Python's own limit: a clear error first.
_MAX_DEPTH = 64


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.depth = 0
        self.bang_at: list[int] = []  # columns of explicit `!`
        self.bangbang_at: list[int] = []
        self.as_var: Var | None = None

    # -- characters -------------------------------------------------------
    def error(self, expected: str, col: int | None = None):
        raise SelectorSyntaxError(self.text, self.pos if col is None else col, expected)

    def span_from(self, start: int) -> tuple[int, int]:
        """The columns from ``start`` to the end of what was read, trailing blanks excluded."""
        return start, start + len(self.text[start : self.pos].rstrip())

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\n\r":
            self.pos += 1

    def peek(self, n: int = 1) -> str:
        self.skip_ws()
        return self.text[self.pos : self.pos + n]

    def deeper(self) -> None:
        """One level of nesting more (the caller steps back out), within ``_MAX_DEPTH``."""
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            self.error("selector is nested too deeply")

    def take(self, s: str) -> bool:
        if self.peek(len(s)) == s:
            self.pos += len(s)
            return True
        return False

    def ident(self, what: str) -> str:
        self.skip_ws()
        m = _IDENT.match(self.text, self.pos)
        if not m:
            self.error(f"expected {what}")
        self.pos = m.end()
        return m.group()

    def dotted(self, what: str) -> str:
        parts = [self.ident(what)]
        while self.text.startswith(".", self.pos):
            self.pos += 1
            # `net.layers.3.mlp`: a submodule path as `get_submodule` spells it.
            m = re.compile(r"\d+").match(self.text, self.pos)
            if m:
                self.pos = m.end()
                parts.append(m.group())
            else:
                parts.append(self.ident("a name after '.'"))
        return ".".join(parts)

    def literal(self) -> Any:
        self.skip_ws()
        text, pos = self.text, self.pos
        if pos < len(text) and text[pos] in "'\"":
            quote, end = text[pos], pos + 1
            while end < len(text) and text[end] != quote:
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                self.error(f"unterminated string: expected a closing {quote}")
            self.pos = end + 1
            try:
                return _unescape(text[pos : end + 1])
            except (ValueError, SyntaxError):
                self.error("invalid escape in string", pos)
        m = _NUMBER.match(text, pos)
        if m and not _IDENT.match(text, m.end()):
            self.pos = m.end()
            s = m.group()
            try:
                return float(s) if any(c in s for c in ".eE") else int(s)
            except ValueError:  # Python's limit on the digits of an int
                self.error(f"integer literal is too long ({len(s)} digits)", pos)
        m = _IDENT.match(text, pos)
        if m and m.group() in _KEYWORDS:
            self.pos = m.end()
            return _KEYWORDS[m.group()]
        self.error("expected a literal (a number, a quoted string, None, True or False)")

    def predicate(self) -> Predicate:
        """``name``, ``dotted.name`` or ``name(literal, ..., key=literal)`` after ``~``."""
        self.skip_ws()
        name = self.dotted("a function name after '~'")
        if not self.take("("):
            return Predicate(name)
        args, kwargs = [], []
        while not self.take(")"):
            if args or kwargs:
                if not self.take(","):
                    self.error("expected ',' or ')' in the arguments of the '~' function")
                if self.take(")"):
                    break
            self.skip_ws()
            m = _IDENT.match(self.text, self.pos)
            if m and m.group() not in _KEYWORDS and self.text.startswith("=", m.end()):
                self.pos = m.end() + 1
                kwargs.append((m.group(), self.literal()))
            elif kwargs:
                self.error("a positional argument after a keyword argument")
            else:
                args.append(self.literal())
        return Predicate(name, tuple(args), tuple(kwargs), call=True)

    # -- grammar ----------------------------------------------------------
    def parse(self) -> Scope:
        node = self.chain(closer=None)
        self.skip_ws()
        if self.pos < len(self.text):
            if self.text[self.pos] == ";":
                self.error("';' separates selectors: pass each selector on its own")
            self.error("expected '>', '>>' or the end of the selector")
        if isinstance(node, Var):
            node = Scope(None, (_as_candidate(node),))
        return replace(self.settle_focus(node), source=self.text)

    def chain(self, closer: str | None) -> Node:
        start = self.pos
        item = self.item()
        self.skip_ws()
        if closer == ">" or not self.text.startswith(">", self.pos):
            return item
        deep = self.text.startswith(">>", self.pos)
        op_at = self.pos
        self.pos += 2 if deep else 1
        scope = self.as_scope(item, start, op_at)
        self.deeper()
        rhs = self.chain(closer)
        self.depth -= 1
        if isinstance(rhs, Var):
            rhs = _as_candidate(rhs)
        elif self.as_var is not None and any(c is self.as_var for c in rhs.children):
            kids = tuple(_as_candidate(c) if c is self.as_var else c for c in rhs.children)
            rhs = replace(rhs, children=kids)
        if deep:
            rhs = replace(rhs, deep=True)
        return replace(scope, children=scope.children + (rhs,))

    def as_scope(self, item: Node, start: int, op_at: int) -> Scope:
        if isinstance(item, Scope):
            return item
        if item == Var(None, None, tag=item.tag) and item.tag is not None:
            return Scope(None, span=item.span, tag=item.tag)  # `*:Tag > x`
        if item.focus or item.tag is not None or item.value is not NOVALUE:
            self.error("a function before '>' cannot have '!', ':' or '='", start)
        if item.name is None and item.capture is not None:
            self.error("'$name' captures a variable and cannot be a function", start)
        if item.name is not None and (item.is_meta or item.capture != item.name):
            self.error("expected a function name before '>'", start)
        return Scope(item.name, span=item.span)

    def item(self) -> Node:
        """One item of a chain: a variable (``!x:T=1 as y``), a call (``f[k](...) as v``),
        or a chain in parentheses (``(f > y)``, ``f > (y)``, which 1.4 read)."""
        self.skip_ws()
        start = self.pos
        if self.take("("):
            self.deeper()
            node = self.chain(")")
            self.depth -= 1
            if not self.take(")"):
                self.error("expected ')' to close '('", start)
            return node
        focus = self.focus_mark()
        self.skip_ws()
        name_at = self.pos
        var, fn, is_fn_path = self.head()
        if var == Var(None, None) and self.text.startswith(":", self.pos):
            # `*:Tag(a)`: any function whose return annotation has the tag (1.4), unless
            # no brackets follow: then `*:Tag` is a variable's filter.
            back = self.pos
            self.pos += 1
            fn_tag = self.tag()
            key = self.key()
            if self.peek() in _OPENERS or key is not None:
                return self.call(var, fn, key, focus, start, name_at, fn_tag)
            self.pos = back
        key = self.key()
        if self.peek() in _OPENERS or key is not None:
            return self.call(var, fn, key, focus, start, name_at)
        if var is None:
            if is_fn_path or self.peek() == ">":
                return Scope(fn, span=self.span_from(start))
            if fn.count(".") != 1:
                self.error(
                    "a dotted name or module path names a function: expected '>' or brackets"
                    " (a variable is 'x', or 'obj.attr' for an attribute the function sets)"
                )
            var = Var(fn, fn)  # `self.x`: an attribute the function assigns (1.4)
        return self.var_suffix(var, focus, start)

    def focus_mark(self) -> Focus:
        """Read ``!`` or ``!!`` if present, remembering where (one of each is allowed)."""
        self.skip_ws()
        at = self.pos
        if self.take("!!"):
            self.bangbang_at.append(at)
            return Focus.SECONDARY
        if self.take("!"):
            self.bang_at.append(at)
            return Focus.PRIMARY
        return Focus.NONE

    def head(self) -> tuple[Var | None, str | None, bool]:
        """What an item starts with: a variable, or a function name; and whether that
        name is a module path (``/mod/f``, ``mod:f``), which needs no brackets."""
        char = self.text[self.pos : self.pos + 1]
        if char == "$":
            self.pos += 1
            if not _IDENT.match(self.text, self.pos):
                self.error("expected a variable name after '$'")
            return Var(None, self.ident("a variable name after '$'")), None, False
        if char == "*":
            self.pos += 1
            return Var(None, None), None, False
        if char == "#":
            self.pos += 1
            prefix = "#"
            if self.text.startswith("#", self.pos):
                self.pos += 1
                prefix = "##"
            name = prefix + self.ident(f"a name after '{prefix}'")
            return Var(name, _default_capture(name)), None, False
        if char == "/":
            return None, self.module_path(), True
        if char and _IDENT.match(self.text, self.pos):
            name = self.dotted("a variable or function name")
            if self.text.startswith(":", self.pos) and self.followed_by_scope():
                self.pos += 1
                return None, f"/{name}/" + self.dotted("a function name after ':'"), True
            if "." in name:
                return None, name, False
            return Var(name, name), None, False
        self.error("expected a variable or function name, '$name', '*', '#meta' or '/module/path'")

    def call(
        self,
        var: Var | None,
        fn: str | None,
        key: Var | None,
        focus: Focus,
        start: int,
        name_at: int,
        tag: str | None = None,
    ) -> Scope:
        """A call: the brackets and key after a function name, then ``as v``."""
        if var is not None:
            if var.name is None and var.capture is not None:
                self.error("'$name' cannot be followed by brackets or a key", name_at)
            if var.is_meta and not var.name.startswith("##"):
                self.error("a meta-variable cannot be called", name_at)
            fn = var.name
        if focus:
            self.error("a function call cannot be the focus: put '!' on a variable", start)
        children = self.bracket() if self.peek() in _OPENERS else ()
        if key is None:
            key = self.key()
        if key is not None:
            children = (key, *children)
        scope = Scope(fn, children, span=self.span_from(start), tag=tag)
        self.as_var = None
        self.skip_ws()
        as_at = self.pos
        if self.take_word("as"):
            # `f(!n) as !!v`: the return value, with a focus mark of its own.
            mark = self.focus_mark()
            name = self.ident("a name after 'as'")
            self.as_var = Var("#value", name, focus=mark, span=self.span_from(as_at))
            scope = replace(scope, children=scope.children + (self.as_var,))
        return scope

    def var_suffix(self, var: Var, focus: Focus, start: int) -> Var:
        """A variable's ``:tag``, ``=value`` (or ``~predicate``) and ``as name``."""
        if self.take(":"):
            var = replace(var, tag=self.tag())
        var = self.var_filter(var)
        if self.take_word("as"):  # `$v as w` renames the capture too, as 1.4 did
            self.skip_ws()
            hashed = "#" if self.take("#") else ""  # `y as #value`: a key 1.4 read too
            var = replace(var, capture=hashed + self.ident("a name after 'as'"))
            if var.value is NOVALUE:  # 1.4 also read `x as y=1`
                var = self.var_filter(var)
        return replace(var, focus=focus, span=self.span_from(start))

    def var_filter(self, var: Var) -> Var:
        if self.take("="):
            return replace(var, value=self.literal())
        if self.take("~"):
            return replace(var, value=self.predicate())
        return var

    def take_word(self, word: str) -> bool:
        self.skip_ws()
        m = _IDENT.match(self.text, self.pos)
        if m and m.group() == word:
            self.pos = m.end()
            return True
        return False

    def followed_by_scope(self) -> bool:
        """After ``a:b``: whether it is ``module:function`` (a scope follows)."""
        save = self.pos
        try:
            self.pos += 1
            if not _IDENT.match(self.text, self.pos):
                return False
            self.dotted("")
            return self.peek() in ("(", "{", "<", "[", ">")
        except SelectorError:
            return False
        finally:
            self.pos = save

    def module_path(self) -> str:
        self.pos += 1  # '/'
        if self.text.startswith("/", self.pos):  # 1.4's refstring of a script's function
            self.error(
                "expected a module name after '/' (a function of the main script is /__main__/f)"
            )
        module = self.dotted("a module name after '/'")
        if not self.text.startswith("/", self.pos):
            self.error("expected '/' after the module name")
        self.pos += 1
        parts = [self.ident("a function name after the module path")]
        while self.text[self.pos : self.pos + 1] in (".", "/") and self.pos < len(self.text):
            self.pos += 1
            parts.append(self.ident("a name after '.' or '/'"))
        return f"/{module}/" + ".".join(parts)

    def tag(self) -> str:
        self.skip_ws()
        if self.text.startswith("@", self.pos):
            self.pos += 1
            return "@" + self.ident("a tag name after '@'")
        if self.text.startswith("##", self.pos):
            self.pos += 2
            return "##" + self.ident("a name after '##'")
        return self.dotted("a tag or class name after ':'")

    def key(self) -> Var | None:
        if not self.take("["):
            return None
        start = self.pos - 1
        if self.take("$"):
            if not _IDENT.match(self.text, self.pos):
                self.error("expected a variable name after '$'")
            key = Var("#key", self.ident("a name after '$'"))
        else:
            key = Var("#key", None, value=self.literal())
        if not self.take("]"):
            self.error("expected ']' to close the key")
        return replace(key, span=self.span_from(start))

    def bracket(self) -> tuple[Node, ...]:
        opener_at = self.pos
        opener = self.text[self.pos]
        closer = _OPENERS[opener]
        self.pos += 1
        self.deeper()
        children: list[Node] = []
        while not self.take(closer):
            if children and not self.take(","):
                if self.pos >= len(self.text):
                    self.error(f"expected ',' or {closer!r} to close {opener!r}", opener_at)
                self.error(f"expected ',' or {closer!r}")
            if self.take(closer):  # trailing comma
                break
            deep = False
            if closer != ">" and self.take(">>"):
                deep = True
            children.append(self.chain(closer))
            if deep:
                children[-1] = replace(children[-1], deep=True)
        self.depth -= 1
        return tuple(children)

    def settle_focus(self, root: Scope) -> Scope:
        if len(self.bang_at) > 1:
            self.error("a selector has one focus: a second '!' is not allowed", self.bang_at[1])
        if len(self.bangbang_at) > 1:
            self.error(
                "a selector has one secondary focus: '!!' appears twice", self.bangbang_at[1]
            )
        candidates = [n for n in root.walk() if isinstance(n, Var) and n.focus == Focus.CANDIDATE]
        if len(candidates) > 1 and not self.bang_at:
            self.error("ambiguous focus: mark the variable you want with '!'", 0)
        resolved = Focus.NONE if self.bang_at else Focus.PRIMARY
        return _map_vars(
            root, lambda v: replace(v, focus=resolved) if v.focus == Focus.CANDIDATE else v
        )


def _as_candidate(var: Node) -> Node:
    if isinstance(var, Var) and var.focus == Focus.NONE:
        return replace(var, focus=Focus.CANDIDATE)
    return var


def _map_vars(scope: Scope, fn) -> Scope:
    kids = tuple(_map_vars(c, fn) if isinstance(c, Scope) else fn(c) for c in scope.children)
    return replace(scope, children=kids)


def _unescape(quoted: str) -> str:
    import ast

    value = ast.literal_eval(quoted)
    if not isinstance(value, str):
        raise ValueError(quoted)
    return value


@lru_cache(maxsize=4096)  # a program's selectors, many times over; a tree is small
def _parse(text: str) -> Scope:
    return _Parser(text).parse()


def select(
    text: str | Scope,
    env: Mapping[str, Any] | None = None,
    *,
    skip_modules: Any = (),
    skip_frames: int = 0,
    strict: bool = False,
) -> Scope:
    """Parse a selector (cached by text). ``env`` resolves names and ``##X`` references.

    Without ``env``, names resolve in the scope where the selector is used. 1.4's
    ``skip_frames`` and ``skip_modules`` instead bind them here, as 1.4 did: in the
    frame ``skip_frames`` above the caller, past frames of ptera, ``contextlib`` and
    modules named in ``skip_modules`` (a helper that builds selectors for its
    callers, like a test's ``tapping(pattern)``). ``strict=True`` resolves the
    names at once, so that a function that cannot be found is an error here, and
    so is what would only warn (``UnmatchedSelectorWarning``) when the selector is used.
    """
    if not isinstance(text, (str, Scope)):
        raise TypeError(
            f"a selector is a string or a Scope tree (like 'f > x'),"
            f" not {type(text).__name__} ({text!r:.60})"
        )
    check_env(env)
    tree = text if isinstance(text, Scope) else _parse(text)
    if env is None and tree.env is None and (skip_frames or skip_modules):
        if skip_frames < 0:
            raise ValueError(f"skip_frames counts frames up the stack: not {skip_frames}")
        if isinstance(skip_modules, str):  # one module, not its letters
            skip_modules = (skip_modules,)
        env = _frame_env(skip_frames + 1, ("ptera", "contextlib", *skip_modules))
    if env is not None:
        tree = replace(tree, env=env)
    if strict:
        import sys

        from .match import compile_selector

        if tree.env is None:
            f = sys._getframe(1)
            tree = replace(tree, env={**f.f_globals, **f.f_locals})
        unmatched = compile_selector(tree).unmatched
        if unmatched:
            raise unmatched[0]  # strict: what only warns elsewhere is an error here
    return tree


def _frame_env(skip: int, modules: tuple) -> dict:
    """Locals over globals of the frame ``skip`` above our caller's caller, past the
    frames of ``modules`` (names or prefixes, as 1.4 matched them)."""
    import sys

    f = sys._getframe(skip + 1)
    while f.f_back is not None and any(
        f.f_globals.get("__name__", "").startswith(m) for m in modules
    ):
        f = f.f_back
    return {**f.f_globals, **f.f_locals}


def check_env(env: Any) -> None:
    """A ``TypeError`` unless ``env`` is ``None`` or a mapping of names to objects."""
    if env is not None and not isinstance(env, Mapping):
        raise TypeError(
            f"env must be a mapping of names to objects (a dict), not {type(env).__name__}"
        )


def parse(text: str) -> Scope:
    """Parse a selector without binding names to anything (1.4's ``selector.parse``)."""
    return _parse(text)


def split_selectors(text: str) -> list[str]:
    """Split ``"a > x; b > y"`` on the semicolons that are outside strings."""
    parts, start, quote = [], 0, None
    for i, c in enumerate(text):
        if quote:
            if c == quote and text[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c == ";":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]
