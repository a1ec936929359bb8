"""The 1.4.1 top-level API, as a program written against 1.4.1 uses it."""

import importlib

import giving
import pytest

import ptera
from ptera import (
    Overlay,
    autotool,
    interpret,
    no_overlay,
    opparse,
    probing,
    refstring,
    tag,
    tooled,
    tools,
    utils,
)
from ptera.utils import CodeNotFoundError

NAMES_OF_141 = """
    ABSENT BaseOverlay Immediate Overlay OverridableProbe Probe PteraNameError
    SelectorError Tag TagSet Total autotool global_probe interpret is_tooled
    match_tag no_overlay op opparse overlay probe probing refstring select selector
    tag tags tooled tools utils version
""".split()


@pytest.mark.parametrize("name", NAMES_OF_141)
def test_every_141_name_exists(name):
    assert hasattr(ptera, name)


@pytest.mark.parametrize(
    "module, names",
    [
        ("ptera.overlay", ["BaseOverlay", "Overlay", "no_overlay", "autotool"]),
        ("ptera.interpret", ["Capture", "Immediate", "Total"]),
        ("ptera.selector", ["Element", "parse", "select", "SelectorError"]),
        ("ptera.tags", ["match_tag", "Tag", "TagSet", "tag"]),
        ("ptera.utils", ["ABSENT", "is_tooled", "refstring", "_build_refstring"]),
        ("ptera.tools", ["every", "between", "gt", "gte", "lt", "lte", "throttle"]),
        ("ptera.opparse", ["Lexer", "Parser", "OperatorPrecedenceTower", "lassoc"]),
    ],
)
def test_submodules_hold_their_141_names(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert hasattr(mod, name), f"{module}.{name}"


def test_element_is_a_variable_node():
    from ptera.selector import Element, Var

    assert Element(name=None) == Var(None, None)  # `*` (1.4's tests build it this way)
    assert ptera.select("f > x").focus == Element("x", "x", focus=1, span=(4, 5))


def test_version_and_op():
    assert ptera.version == ptera.__version__ == "1.4.2"
    assert ptera.op is giving.operators


@tooled
def f(x):
    y = x * 2
    y = y + 1
    return y


# ---------------------------------------------------------------------------
# tools


@pytest.mark.parametrize(
    "pred, passing",
    [
        (tools.every(3), [0, 3, 6, 9]),
        (tools.every(3, start=1), [1, 4, 7]),
        (tools.every(2, start=2, end=7), [2, 4, 6]),
        (tools.every(), list(range(10))),
        (tools.between(2, 5), [2, 3, 4]),
        (tools.between(2, 9, 3), [2, 5, 8]),
        (tools.lt(3), [0, 1, 2]),
        (tools.lte(3), [0, 1, 2, 3]),
        (tools.gt(7), [8, 9]),
        (tools.gte(7), [7, 8, 9]),
    ],
)
def test_step_predicates(pred, passing):
    assert [i for i in range(10) if pred(i)] == passing


@pytest.mark.parametrize(
    "period, values, kept",
    [
        (5, [0, 3, 6, 9, 12, 15], [0, 6, 12, 15]),
        (5, [0, 0, 1, 5, 5, 7], [0, 0, 5, 5]),  # repeats of a kept value pass
        (5, [0, 100, 101, 104, 105], [0, 100, 105]),  # slots catch up after a jump
        (0.5, [0.0, 0.2, 0.6, 0.9, 1.1], [0.0, 0.6, 1.1]),
    ],
)
def test_throttle(period, values, kept):
    t = tools.throttle(period)
    assert [v for v in values if t(v)] == kept


def test_tools_filter_a_probe():
    with probing("f(x) > y").kfilter(lambda x: tools.every(2)(x)).values() as got:
        for i in range(4):
            f(i)
    assert [d["x"] for d in got] == [0, 0, 2, 2]


@pytest.mark.parametrize("bad", [lambda: tools.every(0), lambda: tools.throttle(-1)])
def test_tools_reject_nonpositive_periods(bad):
    with pytest.raises(ValueError, match="positive"):
        bad()


# ---------------------------------------------------------------------------
# Overlay, no_overlay, autotool


def test_overlay_tweak_mutates_and_returns_itself():
    ol = Overlay()
    assert ol.tweak({"f > x": 10}) is ol
    with ol:
        assert f(1) == 21
    assert f(1) == 3


def test_overlay_tap_and_on():
    ol = Overlay()
    ys = ol.tap("f > y")
    seen = []

    @ol.on("f(x) > y", full=True)
    def listen(captures):
        seen.append((captures["x"].value, captures["y"].name))

    with ol:
        f(1)
    assert ys == [{"y": 2}, {"y": 3}]
    assert seen == [(1, "y"), (1, "y")]


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, [{"x": 3, "y": 6}, {"x": 3, "y": 7}]),
        ({"all": True}, [{"x": [3], "y": [6]}, {"x": [3], "y": [7]}]),
        ({"immediate": False, "all": True}, [{"x": [3], "y": [6]}, {"x": [3], "y": [7]}]),
    ],
)
def test_overlay_tapping_options(options, expected):
    with Overlay.tapping("f(x) > y", **options) as got:
        f(3)
    assert got == expected


def test_tweaking_and_rewriting_on_the_class_or_an_instance():
    with Overlay.tweaking({"f > y": 0}):
        assert f(1) == 0
    with Overlay.rewriting({"f(x) > y": lambda c: c["x"] * 100}):
        assert f(1) == 100
    base = Overlay().tweak({"f > x": 2})
    with base.rewriting({"f(x) > y": lambda c: c["x"] + 1}):
        assert f(0) == 3  # the fork keeps base's tweak of x
    assert len(base.handlers) == 1


def test_rewrite_full_gives_capture_objects():
    ol = Overlay().rewrite({"f(x) > y": lambda c: c["x"].value * 10}, full=True)
    with ol:
        assert f(2) == 20


def test_no_overlay_switches_off_this_contexts_overlays():
    with Overlay.tweaking({"f > y": 0}):
        with no_overlay():
            assert f(1) == 3
        assert f(1) == 0


def _plain(a):
    b = a + 1
    return b


def test_autotool_makes_functions_findable_by_wildcard():
    with probing("*{!b}").values() as before:
        pass
    autotool("_plain > b")
    try:
        with probing("*{!b}").values() as got:
            _plain(4)
        assert got == [{"b": 5}]
    finally:
        autotool("_plain > b", undo=True)
    assert before == []
    with pytest.raises(ptera.SelectorError, match="cannot find function 'nowhere'"):
        autotool("nowhere > b")


def test_immediate_and_total_receive_captures():
    seen = []
    with ptera.BaseOverlay(
        interpret.Immediate("f(x) > y", intercept=lambda caps: caps["x"].value + caps["y"].value),
        interpret.Total("f(x) > y", close=lambda caps: seen.append(caps["y"].values)),
    ):
        # y = 2 becomes x + y = 3; then y = 3 + 1 becomes 1 + 4 = 5
        assert f(1) == 5
    assert seen == [[3], [5]]


def test_base_overlay_fork_and_add():
    ol = ptera.BaseOverlay()
    ol.add(interpret.Immediate("f > x", intercept=lambda caps: 5))
    with ol.fork():
        assert f(0) == 11


# ---------------------------------------------------------------------------
# refstring, selector.parse, tags


class Cow:
    def __init__(self):
        pass

    def moo(self):
        return 1


class Corn:
    def __init__(self, x):
        self.x = x

    def __call__(self):
        return self.x


@pytest.mark.parametrize(
    "obj, ref, call",
    [
        (_plain, "/tests.test_compat_api/_plain", lambda: _plain(1)),
        (Cow.moo, "/tests.test_compat_api/Cow/moo", lambda: Cow().moo()),
        (Cow().moo, "/tests.test_compat_api/Cow/moo", lambda: Cow().moo()),
        (Corn(2), "/tests.test_compat_api/Corn/__call__", lambda: Corn(2)()),
        (tools.every, "/ptera.tools/every", lambda: tools.every(2)),
    ],
)
def test_refstring_names_a_function_by_import_path(obj, ref, call):
    assert refstring(obj) == ref
    with probing(f"{ref} > #value").values() as got:
        value = call()
    assert got == [{"#value": value}]


def test_build_refstring_spells_a_path_as_refstring_does():
    from ptera.utils import _build_refstring

    assert _build_refstring("a", "b") == "/a/b"
    assert _build_refstring("a.b", "C.meth") == "/a.b/C/meth"
    assert _build_refstring("__main__", "f") == "/__main__/f"  # (1.4: "//f")


def test_refstring_of_a_class_names_its_init():
    assert refstring(Cow) == "/tests.test_compat_api/Cow/__init__"
    with probing(f"{refstring(Cow)} > #enter").values() as got:
        Cow()
    assert got == [{"#enter": True}]


def test_refstring_refuses_what_it_cannot_reach():
    def local():
        pass

    with pytest.raises(CodeNotFoundError, match="does not lead back"):
        refstring(local)
    with pytest.raises(TypeError, match="cannot make a refstring"):
        refstring(3)


def test_selector_parse_does_not_resolve_names():
    tree = ptera.selector.parse("nowhere(a) > b")
    assert str(tree) == "nowhere{a, !b}" and tree == ptera.select("nowhere(a) > b")


@pytest.mark.parametrize(
    "annotation, text",
    [
        (tag.Fruit, "ptera.tag.Fruit"),
        (tag.Foo & tag.Bar, "ptera.tag.Bar & ptera.tag.Foo"),
        (tag.Bar & tag.Foo, "ptera.tag.Bar & ptera.tag.Foo"),
    ],
)
def test_tag_reprs(annotation, text):
    assert repr(annotation) == str(annotation) == text


def test_match_tag_from_tags_module():
    assert ptera.tags.match_tag(tag.A, tag.A & int)
    assert not ptera.tags.match_tag(tag.B, tag.A & int)


def test_is_tooled_in_utils():
    assert utils.is_tooled(f) and not utils.is_tooled(_plain)
    assert repr(utils.ABSENT) == "ABSENT"


# ---------------------------------------------------------------------------
# opparse

_lexer = opparse.Lexer({r"\s*[-+*^(),]\s*": "OPERATOR", r"\s*\w+\s*": "WORD"})
_tower = opparse.OperatorPrecedenceTower(
    {
        ",": opparse.rassoc(5),
        ("+", "-"): opparse.lassoc(10),
        "*": opparse.lassoc(20),
        "^": opparse.rassoc(30),
        "(": opparse.obrack(200),
        ")": opparse.cbrack(500),
        ": WORD": opparse.lassoc(1000),
    }
)
_parser = opparse.Parser(_lexer, _tower)


def _show(node):
    if node is None:
        return "_"
    if isinstance(node, opparse.Token):
        return node.value
    return "(" + " ".join(_show(a) for a in node.args) + " : " + node.key + ")"


@pytest.mark.parametrize(
    "code, tree",
    [
        ("a", "a"),
        ("a + b * c", "(a (b c : X * X) : X + X)"),
        ("a - b - c", "((a b : X - X) c : X - X)"),
        ("a ^ b ^ c", "(a (b c : X ^ X) : X ^ X)"),
        ("-a", "(_ a : _ - X)"),
        ("(a + b) * c", "((_ (a b : X + X) _ : _ ( X ) _) c : X * X)"),
        ("g(a, b)", "(g (a b : X , X) _ : X ( X ) _)"),
    ],
)
def test_opparse_groups_by_precedence(code, tree):
    assert _show(_parser(code)) == tree


def test_opparse_unknown_operator_is_a_syntax_error():
    with pytest.raises(SyntaxError, match="Invalid token: %") as info:
        _parser("a % b")
    assert info.value.offset == 3


def test_handlers_resolve_names_where_they_are_made():
    def local_fn(q):
        r = q * 3
        return r

    seen = []
    parsed = ptera.select("local_fn > r")  # no env: resolved when the handler is made
    with ptera.BaseOverlay(
        interpret.Immediate(parsed, trigger=lambda caps: seen.append(caps["r"].value)),
        interpret.Total("local_fn(q) > r", close=lambda caps: seen.append(caps["q"].value)),
    ):
        local_fn(2)
    assert seen == [6, 2]


def test_select_accepts_141_keywords():
    assert ptera.select("f > x", skip_modules=["x"], skip_frames=1) == ptera.select("f > x")
    assert ptera.select("f > y", strict=True).env is not None
    with pytest.raises(ptera.SelectorError, match="cannot find function 'nowhere'"):
        ptera.select("nowhere > y", strict=True)


@tooled()
def _string_tags(a):
    x: "@Important" = 1  # noqa: F722 (1.4's string spelling of tags)
    y: "@Important & @Other" = 2  # noqa: F722
    return a + x + y


def test_string_tag_annotations_and_tooled_with_parentheses():
    info = _string_tags.__ptera_info__
    assert info["x"]["annotation"] is tag.Important
    assert info["y"]["annotation"] == tag.Important & tag.Other
    with probing("_string_tags > $v:Important").values() as got:
        _string_tags(0)
    assert got == [{"v": 1}, {"v": 2}]
    assert ptera.tags.match_tag(None, tag.Anything)
    assert ptera.tags.get_tags("A", "B") == tag.A & tag.B


def test_name_error_names_the_function():
    @tooled
    def needs(q):
        w: int
        return q + w

    with pytest.raises(ptera.PteraNameError) as info:
        needs(1)
    assert info.value.varname == "w" and info.value.function is needs  # (1.4's own test)


# ---------------------------------------------------------------------------
# interpret: 1.4.1's argument order and options of Immediate and Total


def test_immediate_second_argument_is_the_trigger_as_in_1_4():
    seen = []
    with ptera.BaseOverlay(interpret.Immediate("f > y", lambda caps: seen.append(caps["y"].value))):
        assert f(3) == 7  # a trigger listens: the value is not replaced
    assert seen == [6, 7]


def test_total_takes_trigger_and_intercept_beside_close():
    # The same run gives the same three lists under ptera 1.4.1.
    closed, triggered = [], []
    handler = interpret.Total(
        "f(x) > y",
        lambda caps: closed.append((caps["x"].value, caps["y"].values)),
        trigger=lambda caps: triggered.append(caps["y"].value),
        intercept=lambda caps: caps["y"].value * 10,
    )
    with ptera.BaseOverlay(handler):
        assert f(1) == 210  # y = 2 -> 20, then y = 21 -> 210
    assert triggered == [20, 210]  # listeners see the values really used
    assert closed == [(1, [20]), (1, [210])]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: interpret.Immediate("f > y", print, check=False), "always checked"),
        (lambda: interpret.Immediate("f > y", print, pass_info=True), "captures only"),
        (lambda: interpret.Total("f > y", print, pass_info=True), "captures only"),
    ],
)
def test_1_4_options_without_an_equivalent_are_refused_plainly(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@ptera.tooled
def _every_j(n):
    for j in range(n):
        y = j * 10
    return y


def test_select_with_skip_frames_binds_names_where_the_helper_is_called():
    """1.4's test helpers build selectors for their callers (``skip_frames=1``): the
    names (``every`` here) resolve in the test that calls the helper, not in it."""
    from ptera.tools import every  # noqa: F401 (used by the selector below)
    from tests.taps import tapping

    with tapping("_every_j(j~every(3)) > y") as got:
        _every_j(7)
    assert [d["y"] for d in got] == [0, 30, 60]
    # Without skip_frames, names resolve where the selector is used: in the helper.
    with pytest.raises(ptera.SelectorError, match="'every' is not bound"):
        with tapping("_every_j(j~every(3)) > y", skip_frames=0):
            pass


@ptera.tooled
def _steps(seq):
    for i in seq:  # noqa: B007 (the probe reads i)
        pass
    return seq


@pytest.mark.parametrize(
    "seq, kept", [(range(0, 20, 2), [0, 6, 10, 16]), (range(-3, 20, 3), [-3, 3, 9, 12, 18])]
)
def test_a_stateful_match_function_starts_afresh_in_each_probe(seq, kept):
    """``i~throttle(5)`` is made when a probe is: a second probe on the same text does
    not inherit the first one's state (1.4's own tests run it twice in a row)."""
    throttle = tools.throttle  # noqa: F841 (the selector names it)
    for _ in range(2):
        with probing("_steps > i~throttle(5)")["i"].values() as got:
            _steps(seq)
        assert got == kept


def test_main_is_the_focus():
    assert ptera.select("f(x) > y").main == ptera.select("f(x) > y").focus
    assert ptera.select("i~every(3)").main.capture == "i"


def test_skip_modules_takes_one_name_and_skip_frames_is_not_negative():
    # a string is one module (its letters would skip every module starting with one)
    tree = ptera.select("_every_j > y", skip_modules="tests.taps")
    assert "_every_j" in tree.env and tree.env["__name__"] == __name__
    with pytest.raises(ValueError, match="skip_frames"):
        ptera.select("f > y", skip_frames=-1)


def test_a_rewrite_of_a_dotted_capture_says_to_rename_it():
    class Cell:
        @ptera.tooled
        def fill(self, v):
            self.x = v
            return self.x

    with pytest.raises(TypeError, match=r"'self\.x' is no Python name: rename it with 'as'"):
        with ptera.rewriting({"Cell.fill > self.x": lambda x: x + 1}):
            Cell().fill(1)
    with ptera.rewriting({"Cell.fill > self.x as x": lambda x: x + 1}):
        assert Cell().fill(1) == 2
