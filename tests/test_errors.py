"""Selector errors: which class, which column, and the user's own text under a caret."""

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ptera
from ptera import (
    Scope,
    SelectorError,
    SelectorSyntaxError,
    UnresolvedSelectorError,
    Var,
    probing,
    select,
    tooled,
)


@tooled
def f(x):
    y = g(x + 1)
    return y


@tooled
def g(y):
    q = y * 2
    return q


ENV = {"f": f, "g": g}


def raised(text: str) -> SelectorError:
    with pytest.raises(SelectorError) as info:
        probing(text, env=ENV)
    return info.value


def caret_under(text: str, column: int) -> str:
    return "".join(c if c == "\t" else " " for c in text[:column]) + "^"


# The caret sits on the failing occurrence of the text as typed, which spaces, `>>`,
# `as`, keys and nested brackets make differ from the canonical `{}` form.
@pytest.mark.parametrize(
    "text, cls, column, reason",
    [
        ("f  > ,", SelectorSyntaxError, 5, "expected a variable or function name"),
        ("f(x  y)", SelectorSyntaxError, 5, "expected ',' or ')'"),
        ("f( !x,  !y )", SelectorSyntaxError, 8, "a selector has one focus"),
        ("f(x) as", SelectorSyntaxError, 7, "expected a name after 'as'"),
        ("f >> g >>", SelectorSyntaxError, 9, "expected a variable or function name"),
        ("f(x) > g(x) > q", UnresolvedSelectorError, 9, "'g' has no variable 'x'"),
        ("g > f(x) > g(x) > q", UnresolvedSelectorError, 13, "'g' has no variable 'x'"),
        ("f(x as  w) > g(x as w) > q", UnresolvedSelectorError, 15, "'g' has no variable 'x'"),
        ("f( x )  >>  g( y )  >  nosuch", UnresolvedSelectorError, 23, "no variable 'nosuch'"),
        ("f(g(nosuch), !x)", UnresolvedSelectorError, 4, "'g' has no variable 'nosuch'"),
        ("f > h[1] as  h", UnresolvedSelectorError, 4, "'f' has no variable 'h'"),
        ("nosuch(x) > y", UnresolvedSelectorError, 0, "cannot find function 'nosuch'"),
        ("f  >>  nosuch > q", UnresolvedSelectorError, 7, "cannot find function 'nosuch'"),
        ("f(x) > $v:##Unbound", UnresolvedSelectorError, 10, "'##Unbound' is not bound in env"),
    ],
)
def test_an_error_points_at_what_failed_in_the_typed_text(text, cls, column, reason):
    err = raised(text)
    assert type(err) is cls
    assert (err.text, err.column) == (text, column)
    assert reason in err.reason
    check_rendering(err, text)


def test_a_selector_on_several_lines_gets_its_caret_under_the_failing_line():
    err = raised("f >\n  g(\tx) > q")
    assert str(err).split("\n")[1:] == ["  f >", "    g(\tx) > q", "      \t^"]


def test_the_hierarchy():
    assert issubclass(SelectorSyntaxError, SelectorError)
    assert issubclass(UnresolvedSelectorError, SelectorError)
    assert issubclass(SelectorError, ValueError)
    assert {"SelectorSyntaxError", "UnresolvedSelectorError"} <= set(ptera.__all__)


def test_the_base_keeps_its_constructor_and_old_field_names():
    err = SelectorError("f > x", 4, "f needs a focus")
    assert (err.col, err.expected) == (err.column, err.reason) == (4, "f needs a focus")
    assert str(err) == "f needs a focus\n  f > x\n      ^"


@pytest.mark.parametrize("text", ["f(x) > g(x) > q", "f >"])
def test_errors_survive_pickling(text):
    err = raised(text)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)


def test_a_tree_built_by_hand_shows_its_canonical_form():
    tree = Scope("f", (Var("nosuch", "nosuch", focus=1),))
    with pytest.raises(UnresolvedSelectorError) as info:
        probing(tree, env=ENV)
    assert (info.value.text, info.value.column) == ("f{!nosuch}", 3)


def test_typed_text_does_not_change_equality():
    assert select("f(x)  >>  g > y") == select("f{x, >> g{!y}}")
    assert hash(select("f(x)  >>  g > y")) == hash(select("f{x, >> g{!y}}"))
    assert select("f  >  y").source == "f  >  y"


def check_rendering(err: SelectorError, text: str) -> None:
    """The message holds the exact typed text, then a caret within it."""
    rendered = str(err)
    assert err.text == text and 0 <= err.column <= len(text)
    head, _, caret = rendered.partition(f"\n  {text}\n  ")
    assert head == err.reason
    assert caret == caret_under(text, err.column)


ALPHABET = " \t!#$*{}()<>[]:=,;@'\"./0123456789-_abfgxyqas"


@given(st.text(alphabet=ALPHABET, max_size=30))
@settings(max_examples=500, deadline=None)
def test_every_syntax_error_renders_the_typed_text(text):
    try:
        select(text)
    except SelectorSyntaxError as err:
        check_rendering(err, text)


@st.composite
def typed_selectors(draw):
    """Selectors over `f` and `g`, spaced at random, some naming what does not exist."""
    blank = st.text(" \t", max_size=2)
    variables = st.sampled_from(["x", "y", "q", "nosuch", "x as  w", "!x", "$v:##Nope"])
    items = []
    for _ in range(draw(st.integers(1, 3))):
        fn = draw(st.sampled_from(["f", "g", "nosuch"]))
        args = draw(st.lists(variables, max_size=2))
        if args:
            fn += draw(blank) + "(" + ",".join(draw(blank) + a + draw(blank) for a in args) + ")"
        items.append(fn)
    items.append(draw(variables))
    text = items[0]  # `probing` strips the ends of each `;`-separated selector
    for item in items[1:]:
        text += draw(blank) + draw(st.sampled_from([">", ">>"])) + draw(blank) + item
    return text


@given(typed_selectors())
@settings(max_examples=300, deadline=None)
@pytest.mark.filterwarnings("ignore::ptera.UnmatchedSelectorWarning")  # `f >> nosuch`
def test_every_selector_error_renders_the_typed_text(text):
    try:
        probing(text, env=ENV)
    except SelectorError as err:
        check_rendering(err, text)


@pytest.mark.parametrize(
    "make",
    [
        lambda text: probing(text, probe_type="immediate", env=ENV),
        lambda text: ptera.OverridableProbe(text, env=ENV),
    ],
    ids=["immediate probe", "overridable probe"],
)
def test_a_misused_selector_is_the_base_error_in_the_typed_text(make):
    with pytest.raises(SelectorError) as info:
        with make("f( x,  y )"):
            pass
    assert type(info.value) is SelectorError
    assert info.value.text == "f( x,  y )" and "needs a focus" in info.value.reason
