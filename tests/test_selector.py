"""The selector language: parsing, canonical printing, equivalences and errors."""

import contextlib
import gc
import string
import sys
import time
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptera import Scope, SelectorError, Var, select, tooled
from ptera.match import compile_selector
from ptera.selector import (
    NOVALUE,
    Focus,
    UnmatchedSelectorWarning,
    UnresolvedSelectorError,
    split_selectors,
)

# Every example of the seeds and of the spec, plus forms users write every day.
CORPUS = [
    # seeds/002
    "step{!!loss} >> $param:Parameter",
    "step<!!loss> >> $param:Parameter",
    "step{!!loss} >> h[1] as h",
    "$param:Parameter",
    "layer > T",
    "layer[1] > T",
    "f{!x, !!y}",
    # spec section 2 table
    "x",
    "f > x",
    "f > g > x",
    "f >> x",
    "f >> g > x",
    "f(a, b as c) > x",
    "f(!x, y)",
    "f{!x, y}",
    "*",
    "*{x}",
    "$v",
    "f > $v",
    "x:Tag",
    "$v:Parameter",
    "#value",
    "f{} as out",
    "f[k] > x".replace("k", "0"),
    "h[1] as h",
    "f[$i]",
    "f(x=1) > y",
    "/pkg.mod/f > x",
    "pkg.mod:f > x",
    "/pkg.mod/Cls.meth",
    "/pkg.mod/Cls/meth",
    # spec section 2 text and section 3
    "f(!#enter, !!#exit)",
    "f(!#loop_i, !!#endloop_i)",
    "$x:@enter",
    "obj.method > x",
    "Cls.method > x",
    "Cls.prop > x",
    "a > b",
    "a{!b}",
    "a > b > c",
    "a{b{!c}}",
    "f{$x}",
    "f{* as x}",
    "a[0]",
    "a{#key=0}",
    "a{x} as b",
    "a{x, #value as b}",
    "a{} as b",
    "a{#value as b}",
    "square{rval} > x",
    "sumsquares{!x} > square{rval}",
    "sumsquares(x) > square > rval",
    "square > rval",
    # spec section 4, 8, 10
    "f(x) > y",
    "f > y",
    "f > mid",
    "Linear > input",
    "MyBlock.forward > h",
    "/pkg.mod/Block.forward > out",
    "n:##X",
    "__argparser__",
    # issues 7, 8, 9
    "one_batch > loss",
    "fit > epoch",
    "one_epoch(train=False) > loss",
    'f(mode="eval") > y',
    "f(flag=True, other=None) > y",
    "f(x=-2.5) > y",
    "torch.nn.Linear > input",
    "f{!x:torch.nn.Parameter}",
    "f[$i] > g >> y as z",
    "f(a, g(b) > h(!c))",
    # 1.4's match functions and tag spelling
    "f(x~pred) > y",
    "superbrie(i=1, j~every(3)) > brie > x",
    "f(j~ptera.tools.between(1, 5, modulo=2))",
    "f > $x:@Cool",
]


@pytest.mark.parametrize("text", CORPUS)
def test_corpus_round_trips(text):
    tree = select(text)
    assert isinstance(tree, Scope)
    assert select(str(tree)) == tree


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 60


@pytest.mark.parametrize(
    "left, right",
    [
        ("a > b", "a{!b}"),
        ("a > b > c", "a{b{!c}}"),
        ("f{$x}", "f{* as x}"),
        ("a[0]", "a{#key=0}"),
        ("a{x} as b", "a{x, #value as b}"),
        ("a{} as b", "a{#value as b}"),
        ("x", "*{!x}"),
        ("f(x)", "f{x}"),
        ("f<x>", "f{x}"),
        ("f >> x", "f{>> !x}"),
        ("f >> g > x", "f{>> g{!x}}"),
        ("pkg.mod:f > x", "/pkg.mod/f > x"),
        ("/pkg.mod/Cls/meth", "/pkg.mod/Cls.meth"),
        ("f(!x) > y", "f{!x, y}"),
        ("step<!!loss> >> $param:Parameter", "step{!!loss, >> !$param:Parameter}"),
        ("step{!!loss} >> h[1] as h", "step{!!loss, >> h{#key=1, !#value as h}}"),
        ("f(x, )", "f(x)"),
        ("f(j ~ every( 3, ))", "f{j~every(3)}"),
        ("f > $v as w", "f > $w"),  # 1.4 let `as` rename a `$` capture
        ("f > $v as #w", "f > * as #w"),  # (which `str` prints: `$#w` would not parse)
        ("f(x as xx=1) > y", "f(x=1 as xx) > y"),  # and read a filter after `as`
        ("(f > y)", "f > y"),  # and parentheses around a chain
        ("f(x) > (g > y)", "f(x) > g > y"),
    ],
)
def test_equivalences(left, right):
    assert select(left) == select(right)


@pytest.mark.parametrize(
    "text, focus, secondary",
    [
        ("f > x", "x", None),
        ("f(x) > y", "y", None),
        ("f(!x) > y", "x", None),
        ("f{!x, !!y}", "x", "y"),
        ("step{!!loss} >> $param:Parameter", "param", "loss"),
        ("step{!!loss} >> h[1] as h", "h", "loss"),
        ("f(x)", None, None),
        ("f{} as out", None, None),
    ],
)
def test_implicit_focus(text, focus, secondary):
    tree = select(text)
    assert (tree.focus.out_name if tree.focus else None) == focus
    assert (tree.secondary.out_name if tree.secondary else None) == secondary


@pytest.mark.parametrize(
    "text, marks",
    [
        ("f > x", {"x": Focus.PRIMARY}),
        ("f(x) > y", {"x": Focus.NONE, "y": Focus.PRIMARY}),
        ("f(!x) > y", {"x": Focus.PRIMARY, "y": Focus.NONE}),
        ("f{!!x, y}", {"x": Focus.SECONDARY, "y": Focus.NONE}),
        ("f(x, y)", {"x": Focus.NONE, "y": Focus.NONE}),
    ],
)
def test_focus_marks_are_named_and_equal_to_their_codes(text, marks):
    got = {n.name: n.focus for n in select(text).walk() if isinstance(n, Var)}
    assert got == marks
    # The codes other modules compared against before the enum stay valid.
    assert all(isinstance(f, Focus) and f in (0, 1, 2) for f in got.values())
    assert (Focus.NONE, Focus.PRIMARY, Focus.SECONDARY, Focus.CANDIDATE) == (0, 1, 2, -1)


def test_parsed_trees_are_cached_and_immutable():
    assert select("f > x") is select("f > x")
    with pytest.raises(AttributeError):
        select("f > x").fn = "g"


@pytest.mark.parametrize(
    "text, col, message",
    [
        ("f >", 3, "expected a variable or function name"),
        ("$", 1, "expected a variable name after '$'"),
        ("f(x", 1, "expected ',' or ')' to close '('"),
        ("f(x y)", 4, "expected ',' or ')'"),
        ("f(!x, !y)", 6, "a selector has one focus"),
        ("f{!!x, !!y}", 7, "'!!' appears twice"),
        ("a; b", 1, "';' separates selectors"),
        ("f > x:", 6, "expected a tag or class name after ':'"),
        ("x.y.z", 5, "a dotted name or module path names a function"),  # (`x.y`: an attribute)
        ("f(g > x, h > y)", 0, "ambiguous focus"),
        ("f(x=abc) > y", 4, "expected a literal"),
        ("f(x='abc) > y", 4, "unterminated string"),
        ("!f(x)", 0, "a function call cannot be the focus"),
        ("$v > x", 0, "'$name' captures a variable"),
        ("f[1 > x", 4, "expected ']' to close the key"),
        ("/mod", 4, "expected '/' after the module name"),
        ("x as", 4, "expected a name after 'as'"),
        ("f(x=" + "1" * 5000 + ") > y", 4, "integer literal is too long"),
        ("f[" + "9" * 5000 + "] > y", 2, "integer literal is too long"),
        ("f(x~) > y", 4, "expected a function name after '~'"),
        ("(f > y", 0, "expected ')' to close '('"),
        ("f(x~g(a=1, 2))", 11, "a positional argument after a keyword argument"),
        ("f(x~g(1 2))", 8, "expected ',' or ')' in the arguments"),
        ("f(x~g(zz))", 6, "expected a literal"),
        ("f > $x:@", 8, "expected a tag name after '@'"),
    ],
)
def test_errors_point_at_the_character(text, col, message):
    with pytest.raises(SelectorError) as info:
        select(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert message in str(err)
    assert err.col == col
    lines = str(err).splitlines()
    assert lines[1].strip() == text
    assert lines[2].index("^") - lines[1].index(text[0]) == col


def test_split_selectors():
    assert split_selectors("f > x; g > y") == ["f > x", "g > y"]
    assert split_selectors("f(x=';') > y") == ["f(x=';') > y"]


# -- properties ---------------------------------------------------------------

names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in ("as", "None", "True", "False")
)
literals = st.one_of(
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(string.ascii_letters + " '\"\\", max_size=5),
    st.sampled_from([None, True, False]),
)
tags = st.one_of(names, st.sampled_from(["@enter", "@exit", "##X", "torch.nn.Parameter"]))
fn_names = st.one_of(
    st.none(),
    names,
    st.builds(lambda a, b: f"{a}.{b}", names, names),
    st.builds(lambda m, f: f"/{m}.mod/{f}", names, names),
)


@st.composite
def variables(draw):
    kind = draw(st.sampled_from(["name", "wild", "dollar", "meta"]))
    if kind == "name":
        name = draw(names)
        capture = draw(st.one_of(st.just(name), names))
    elif kind == "wild":
        name, capture = None, None
    elif kind == "dollar":
        name, capture = None, draw(names)
    else:
        name = "#" + draw(st.sampled_from(["value", "enter", "exit", "key", "loop_i"]))
        capture = draw(st.one_of(st.none(), names))
    return Var(
        name,
        capture,
        tag=draw(st.one_of(st.none(), tags)),
        value=draw(st.one_of(st.just(NOVALUE), literals)),
        deep=draw(st.booleans()),
    )


scopes = st.recursive(
    st.builds(lambda fn, deep: Scope(fn, (), deep), fn_names, st.booleans()),
    lambda inner: st.builds(
        lambda fn, kids, deep: Scope(fn, tuple(kids), deep),
        fn_names,
        st.lists(st.one_of(variables(), inner), max_size=4),
        st.booleans(),
    ),
    max_leaves=10,
)


@st.composite
def trees(draw):
    root = draw(scopes)
    root = Scope(root.fn, root.children, False)
    # Place at most one focus and one secondary focus on variables.
    var_paths = [p for p in _var_paths(root)]
    if var_paths:
        picks = draw(st.lists(st.sampled_from(range(len(var_paths))), max_size=2, unique=True))
        for level, pick in zip((1, 2), picks):
            root = _set_focus(root, var_paths[pick], level)
    return root


def _var_paths(scope, prefix=()):
    for i, child in enumerate(scope.children):
        if isinstance(child, Var):
            yield (*prefix, i)
        else:
            yield from _var_paths(child, (*prefix, i))


def _set_focus(scope, path, level):
    i, *rest = path
    kids = list(scope.children)
    if rest:
        kids[i] = _set_focus(kids[i], rest, level)
    else:
        old = kids[i]
        kids[i] = Var(old.name, old.capture, level, old.tag, old.value, old.deep)
    return Scope(scope.fn, tuple(kids), scope.deep)


@given(trees())
@settings(max_examples=500)
def test_round_trip_of_generated_trees(tree):
    assert select(str(tree)) == tree


@given(trees())
@settings(max_examples=200)
def test_printing_is_idempotent(tree):
    assert str(select(str(tree))) == str(tree)


@given(st.text(alphabet=string.printable + "!#$*{}()<>[]:=;@", max_size=40))
@settings(max_examples=2500)
def test_fuzz_only_selector_errors(text):
    try:
        tree = select(text)
    except SelectorError:
        return
    assert select(str(tree)) == tree


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(SelectorError, match="nested too deeply"):
        select("f(" * 500 + "x" + ")" * 500)


@tooled
def _keyed(x):
    h = {}
    h[0] = x
    y = x
    return y


# Selectors with many captures, each form compiled against `_keyed`.
MANY_CAPTURES = {
    "renamed": "x as w{i}",
    "any variable": "$w{i}",
    "deep": ">> x as w{i}",
    "keyed": "h[{i}] as h{i}",
    "missing (an error)": "q{i}",
}


def _compile_many(form: str, n: int) -> int:
    """Parse and compile a selector of ``n`` captures; how many Python calls it took."""
    text = "_keyed(" + ", ".join(form.format(i=i) for i in range(n)) + ", !y)"
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        compile_selector(select(text), {"_keyed": _keyed})
    except SelectorError as err:
        assert "'_keyed' has no variable 'q0'" in str(err)
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize("form", MANY_CAPTURES.values(), ids=MANY_CAPTURES.keys())
def test_compiling_many_captures_is_linear(form):
    _compile_many(form, 1)  # instrument `_keyed` first
    n = 50 if form.startswith(">>") else 250  # `>>` looks into every instrumented function
    small, large = _compile_many(form, n), _compile_many(form, 4 * n)
    assert large <= 4.5 * small  # linear: about 4x; quadratic: about 16x


@pytest.mark.parametrize("form", ["x as w{i}", "q{i}"])
def test_compiling_4000_captures_takes_well_under_a_second(form):
    text = "_keyed(" + ", ".join(form.format(i=i) for i in range(4000)) + ", !y)"
    gc.disable()  # time the compiler, not a collection of the whole test session
    try:
        start = time.process_time()
        with contextlib.suppress(SelectorError):
            compile_selector(select(text), {"_keyed": _keyed})
        elapsed = time.process_time() - start
    finally:
        gc.enable()
    assert elapsed < 3.0  # about 0.1 s; 6 s or more when it was quadratic


@pytest.mark.parametrize("wrong", [123, None, ["f > x"], b"f > x"])
def test_a_selector_of_the_wrong_type_is_a_type_error(wrong):
    with pytest.raises(TypeError, match=rf"a selector is a string .*, not {type(wrong).__name__}"):
        select(wrong)
    with pytest.raises(TypeError, match="env must be a mapping"):
        select("f > x", env=3)


def test_resolution_errors_say_what_is_there_and_point_at_it():
    import torch

    from ptera import probing

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    with pytest.raises(SelectorError) as err:
        probing("model.layers.7 > h", env={"model": model})
    assert "'model' has no submodule 'layers' (it has: 0, 1)" in str(err.value)
    assert err.value.column == len("model.")
    with pytest.raises(SelectorError) as err:
        probing("model.7 > input", env={"model": model})
    assert "(it has: 0, 1)" in str(err.value) and err.value.column == len("model.")
    with pytest.raises(TypeError, match="'len' is a builtin_function_or_method, not a Python"):
        probing("len > x")
    with pytest.raises(SelectorError, match=r"/__main__/f"):
        probing("//f > y")


def test_a_decorated_function_named_like_a_builtin_is_found_by_its_name():
    from ptera import probing
    from tests.builtin_named import sum as summed

    with probing("sum > total")["total"].values() as got:  # (`sum` is not bound here)
        assert summed([1, 2]) == 3
    assert got == [0, 1, 3]


@pytest.mark.parametrize("selector", ["f > *:@nothing", "f >> nothing_here"])
def test_strict_select_raises_what_would_only_warn(selector):
    """``strict=True`` (1.4: "statically resolvable"): a warning of the selector's use
    is its error, each time (compilations are cached)."""

    @tooled
    def f(x):
        y = x
        return y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnmatchedSelectorWarning)  # (said once, when compiled)
        for _ in range(2):
            with pytest.raises(UnresolvedSelectorError, match="matches nothing"):
                select(selector, env={"f": f}, strict=True)
