"""Probe semantics that programs written for 1.4.1 rely on."""

import pytest

from ptera import SelectorError, probing, tooled
from tests import wrapped_program


@tooled
def f(x):
    y = x + 1
    return y


@tooled
def recurso(n):
    if n == 0:
        return 0
    v = recurso(n - 1) + n
    return v


def test_override_without_argument_uses_the_streams_values():
    with probing("f > y", overridable=True) as p:
        p["y"].map(lambda y: y * 10).override()
        assert f(1) == 20
    with probing("f(x) > y", overridable=True) as p:
        p.koverride(lambda x, y: x + y + 100)
        assert f(1) == 103
    assert f(1) == 2


@tooled
def coincoin(x):
    return x


@tooled
def nager(a):
    return a


@tooled
def canard(n):
    coincoin(n)
    nager(n * 2)
    coincoin(n + 1)
    nager(n * 3)
    return 0


def test_total_probe_pools_captures_beside_the_focus():
    with probing("canard(coincoin(!x), nager(a))", probe_type="total", raw=True) as p:
        got = p.map(lambda d: {k: c.values for k, c in d.items()}).accum()
        canard(1)
        canard(10)
    assert got == [
        {"x": [1], "a": [2, 3]},
        {"x": [2], "a": [2, 3]},
        {"x": [10], "a": [20, 30]},
        {"x": [11], "a": [20, 30]},
    ]


class Cow:
    def __init__(self, name):
        self.name = name

    def cry(self, n):
        intensity = n * 2
        return intensity


def test_selector_rooted_at_an_instance_method_sees_only_that_instance():
    cow, other = Cow("a"), Cow("b")
    with probing("cow.cry > intensity").values() as got:
        cow.cry(1)
        other.cry(2)
        Cow.cry(cow, 3)
    assert got == [{"self": cow, "intensity": 2}, {"self": cow, "intensity": 6}]
    with probing("Cow.cry > intensity").values() as every:
        cow.cry(1)
        other.cry(2)
    assert every == [{"intensity": 2}, {"intensity": 4}]


@tooled
def looper(k):
    t = 0
    for i in range(2):
        for j in range(2):
            t += i * j
    return t


def test_loop_meta_variables_are_true_and_captured():
    with probing("looper(#loop_i, k) > #endloop_j").values() as got:
        looper(7)
    assert got == [{"k": 7, "#loop_i": True, "#endloop_j": True}] * 4


@pytest.mark.parametrize(
    "selector, names",
    [
        ("looper > $x:@enter", ["#enter"]),
        ("looper > $x:@exit", ["#exit"]),
    ],
)
def test_meta_tag_filters_in_loops(selector, names):
    with probing(selector, raw=True) as p:
        got = p.map(lambda d: d["x"].name).accum()
        looper(1)
    assert got == names


@pytest.mark.parametrize(
    "selector, key",
    [("f > y as #value", "#value"), ("f(!y as #mine)", "#mine"), ("f > y as plain", "plain")],
)
def test_as_can_give_a_hash_name(selector, key):
    """1.4 read ``y as #value``: the capture's key, with its hash."""
    with probing(selector).values() as got:
        f(1)
    assert [list(d) for d in got] == [[key]] and got[0][key] == 2


def test_capture_name_is_the_real_variable_name():
    with probing("f > $v", raw=True) as p:
        got = p.map(lambda d: (d["v"].name, d["v"].capture)).accum()
        f(1)
    assert got == [("x", "v"), ("y", "v")]


def test_as_name_can_be_the_secondary_focus_and_wrap_brackets_the_region():
    events = []

    with probing("recurso(!n) as !!v") as p:

        @p.kwrap("n")
        def region(n):
            events.append(("in", n))
            yield
            events.append(("out", n))

        recurso(2)
    # `as v` is the return value: every call's region closes, innermost first.
    assert events == [("in", 2), ("in", 1), ("in", 0), ("out", 0), ("out", 1), ("out", 2)]


def test_wrap_between_enter_and_exit():
    depth = []

    with probing("recurso(!#enter, !!#exit)") as p:
        p.wrap("#enter", lambda: (depth.append("<"), (yield), depth.append(">")))
        recurso(1)
    assert "".join(depth) == "<<>>"


@pytest.mark.parametrize("selector", ["recurso(n, !!#value)", "recurso(!!n)"])
def test_secondary_focus_alone_is_unsupported(selector):
    with pytest.raises(ValueError, match="unsupported focus pattern"):
        with probing(selector):
            pass


@pytest.mark.parametrize(
    "selector, call, expected",
    [
        ("/tests.wrapped_program/wrapped > a", lambda: wrapped_program.wrapped(1), {"a": 2}),
        ("tests.wrapped_program:wrapped > a", lambda: wrapped_program.wrapped(1), {"a": 2}),
        ("/tests.wrapped_program/hidden > b", lambda: wrapped_program.hidden(3), {"b": 6}),
        ("/tests.wrapped_program/both > c", lambda: wrapped_program.both(3), {"c": 2}),
    ],
)
def test_decorated_functions_are_found_through_their_wrappers(selector, call, expected):
    with probing(selector).values() as got:
        call()
    assert got == [expected]


class Prop:
    @property
    def size(self):
        inner = 3
        return inner


@pytest.mark.parametrize(
    "target, kind",
    [
        ((1).__add__, "method-wrapper"),
        ("".join, "builtin_function_or_method"),
        (len, "builtin_function_or_method"),
    ],
)
def test_non_python_callables_raise_a_clear_type_error(target, kind):
    with pytest.raises(TypeError, match=f"is a {kind}, not a Python function"):
        with probing("target > x", env={"target": target}):
            pass


def test_a_property_through_its_get_method():
    with probing("Prop.size.__get__ > inner").values() as got:
        Prop().size
    assert got == [{"inner": 3}]


def test_a_missing_function_is_still_a_selector_error():
    with pytest.raises(SelectorError, match="cannot find function"):
        with probing("nowhere_at_all > x"):
            pass


@tooled
def gen(n):
    for i in range(n):
        yield i * 10
    return n


@pytest.mark.parametrize(
    "selector, names",
    [
        ("gen > $x:@exit", ["#yield", "#yield", "#exit"]),
        ("gen > $x:@enter", ["#enter", "#receive", "#receive"]),
    ],
)
def test_meta_tag_filters_in_generators(selector, names):
    with probing(selector, raw=True) as p:
        got = p.map(lambda d: d["x"].name).accum()
        list(gen(2))
    assert got == names


@tooled
def running_sum(n):
    acc = 0
    for k in range(n):
        acc = acc + k
    return acc


@pytest.mark.parametrize(
    "selector, keys",
    [
        # Innermost scope first, each in the order its captures were first set.
        ("running_sum(k, !acc)", [["acc"], ["acc", "k"], ["acc", "k"]]),
        ("running_sum(!k, acc)", [["acc", "k"], ["acc", "k"]]),
        ("running_sum(n) > acc", [["n", "acc"]] * 3),
    ],
)
def test_results_list_captures_in_the_order_141_printed_them(selector, keys):
    with probing(selector).values() as got:
        running_sum(2)
    assert [list(d) for d in got] == keys


def test_global_probes_complete_when_the_interpreter_exits(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "prog.py"
    script.write_text(
        "from ptera import global_probe, tooled\n"
        "@tooled\n"
        "def f(x):\n"
        "    y = x * 2\n"
        "    return y\n"
        "global_probe('f > y')['y'].max().print('max={}')\n"
        "f(1); f(4); f(2)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "max=8"


class Animal:
    def crie(salf, n):  # 1.4 captures the first argument under its own name
        intensity = n * 3
        return intensity

    @classmethod
    def make(cls, n):
        size = n + 1
        return size


class Calf(Animal):
    pass


def test_the_bound_object_is_captured_under_its_parameters_name():
    crow, other = Animal(), Animal()
    with probing("crow.crie > intensity").values() as got:
        crow.crie(1)
        other.crie(2)
    assert got == [{"salf": crow, "intensity": 3}]
    with probing("Animal.make > size").values() as made:
        Animal.make(1)
        Calf.make(2)  # cls is Calf: not the class the selector names
    assert made == [{"cls": Animal, "size": 2}]


def test_a_bound_method_given_in_env_sees_only_its_object():
    crow, other = Animal(), Animal()
    with probing("m > intensity", env={"m": crow.crie}).values() as got:
        other.crie(1)
        crow.crie(2)
    assert got == [{"salf": crow, "intensity": 6}]


@tooled
def steps(x):
    y = x
    y = x + 1
    y = x + 2
    return y


@pytest.mark.parametrize("probe_type", ["immediate", "total"])
@pytest.mark.parametrize(
    "selector, expected",
    [
        ("steps > y=2", [{"y": 2}, {"y": 2}]),  # the focus's own filter
        ("steps(!y=3)", [{"y": 3}, {"y": 3}]),
        ("steps > #value=3", [{"#value": 3}]),
        ("steps(x=1) > y", [{"x": 1, "y": 1}, {"x": 1, "y": 2}, {"x": 1, "y": 3}]),
    ],
)
def test_value_filters_on_the_focus_and_around_it(selector, expected, probe_type):
    with probing(selector, probe_type=probe_type).values() as got:
        steps(1)
        steps(2)
    assert got == expected


@tooled
def brie(x, y):
    a: "@Bouffe" = x * x  # noqa: F722 (1.4's tag spelling)
    b: "@Bouffe & @Agrement" = y * y  # noqa: F722
    c: int = a + b
    return c


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("brie > $v:@Bouffe", [{"v": 4}, {"v": 9}]),  # 1.4's spelling of a tag filter
        ("brie > $v:Bouffe", [{"v": 4}, {"v": 9}]),
        ("brie > b:@Agrement", [{"b": 9}]),
        ("brie > $v:int", [{"v": 13}]),
        ("brie > $v:@enter", [{"v": True}]),  # a meta-tag: #enter
    ],
)
def test_tag_filters(selector, expected):
    with probing(selector).values() as got:
        brie(2, 3)
    assert got == expected


@pytest.mark.parametrize(
    "selector, caret, message",
    [
        ("brie > c:float", " " * 9 + "^", "no variable 'c' annotated with the tag or type 'float'"),
        ("brie > a:int", " " * 9 + "^", "(annotated: a: ptera.tag.Bouffe)"),
    ],
)
def test_a_tag_filter_no_variable_passes_is_an_error(selector, caret, message):
    with pytest.raises(SelectorError) as err:
        probing(selector)
    assert message in str(err.value)
    assert f"  {selector}\n  {caret}" in str(err.value)


@pytest.mark.parametrize("selector", ["brie > $v:@Nothing", "brie > $x:tag.Xylophone"])
def test_a_wildcard_tag_filter_no_variable_passes_matches_nothing_with_a_warning(selector):
    """As in 1.4 (its own tests: ``brie > $x:tag.Xylophone`` gives ``[]``); the warning
    says what the function's variables are annotated with."""
    from ptera import UnmatchedSelectorWarning

    with pytest.warns(UnmatchedSelectorWarning) as caught:
        with probing(selector).values() as got:
            brie(2, 3)
    assert got == []
    text = str(caught[0].message)
    assert "no variable annotated with the tag or type" in text and "(annotated: a:" in text


def test_a_deep_tag_filter_that_reaches_nothing_warns():
    from ptera import UnmatchedSelectorWarning

    @tooled
    def outer(x):
        return brie(x, x)

    # (a `$v:Tag` also looks at the `self.x` attributes any decorated method reads,
    # whose values are checked as they come, so only a named variable is sure)
    with pytest.warns(UnmatchedSelectorWarning, match="'a' annotated with the tag or type 'Bofe'"):
        with probing("outer >> a:Bofe").values() as got:
            outer(1)
    assert got == []


@tooled
def grid(n):
    total = 0
    for i in range(n):  # noqa: B007 (probed)
        for j in range(n):
            total += steps(j)
    return total


def test_match_functions_after_tilde():
    from ptera.tools import every

    big = lambda v: v > 2  # noqa: E731, F841 (named by the selector)
    with probing("grid(i=1, j~every(2)) > steps > x").values() as got:
        grid(4)
    assert got == [{"i": 1, "j": 0, "x": 0}, {"i": 1, "j": 2, "x": 2}]
    with probing("steps(x~big) > y").values() as got:
        steps(1)
        steps(3)
    assert [r["y"] for r in got] == [3, 4, 5]
    assert every  # bound where the selector is used, as 1.4 requires


@pytest.mark.parametrize(
    "selector, message",
    [
        ("steps(x~nowhere) > y", "'nowhere' is not bound"),
        ("steps(x~limit) > y", "'limit' is int, not a function of the value"),
        ("steps(x~every(0)) > y", "every(0) raised ValueError"),
    ],
)
def test_a_bad_match_function_is_an_error_at_its_name(selector, message):
    from ptera.tools import every  # noqa: F401

    limit = 3  # noqa: F841
    with pytest.raises(SelectorError) as err:
        probing(selector)
    assert message in str(err.value)
    assert str(err.value).endswith("\n  " + " " * selector.index("~") + " ^")


def test_a_rebound_match_function_is_used():
    seen = []
    for bound in (lambda v: v == 1, lambda v: v == 2):
        pred = bound  # noqa: F841
        with probing("steps(x~pred) > y").values() as got:
            steps(1)
            steps(2)
        seen.append([r["x"] for r in got])
    assert seen == [[1, 1, 1], [2, 2, 2]]


@tooled
def tally(x):
    scores = {}
    scores["x"] = x
    scores["double"] = x * 2
    return scores


@pytest.mark.parametrize("raw", [False, True])
def test_an_item_assignment_is_not_a_value_of_the_container(raw):
    # `scores["x"] = x` reports `scores` with the key "x" (for `h[k] as h`
    # selectors); a plain `scores` sees its own assignments only, as in 1.4
    with probing("tally > scores", raw=raw).values() as got:
        tally(3)
    values = [r["scores"].value if raw else r["scores"] for r in got]
    assert values == [{"x": 3, "double": 6}]
    with probing('tally > scores["double"] as d').values() as one:
        tally(3)
    assert one == [{"d": 6}]


@tooled
def side(x):
    half = x // 2
    return half


@tooled
def negmul(x, y):
    a = -x * y
    return a


@tooled
def family(x):
    w = negmul(side(x), 2) + side(x + 2)
    return w


@pytest.mark.parametrize(
    "selector, expected",
    [
        # a sibling call that already returned (the 1.x guide's "sibling calls")
        ("family(x, side(half as h), negmul(!a))", [{"a": -12, "x": 12, "h": 6}]),
        # a call below the focus's function that returned before the focus was set
        ("family(!w) > side(half)", [{"half": 7, "w": -5}]),
        ("family(!w) > negmul(a)", [{"a": -12, "w": -5}]),
    ],
)
def test_a_result_keeps_what_calls_off_the_focus_path_captured(selector, expected):
    with probing(selector).values() as got:
        family(12)
    assert got == expected


@pytest.mark.parametrize("probe_type", ["immediate", "total"])
@pytest.mark.parametrize("selector", ["steps(!y=3, y as yy)", "steps(y as yy, !y=3)"])
def test_one_variable_under_two_names(selector, probe_type):
    with probing(selector, probe_type=probe_type).values() as got:
        steps(1)
    assert got == [{"y": 3, "yy": 3}]


@tooled
def checked_side(x, final):
    s = x + 1
    t = s * 2
    t = final
    return t


@tooled
def keeper(x, final):
    checked_side(x, final)
    w = 1
    return w


@pytest.mark.parametrize(
    "final, expected",
    [
        (4, [{"s": 2, "t": 4, "w": 1}]),  # t=4 once the side call is over: kept
        (5, [{"w": 1}]),  # t ends at 5: the side call's captures are taken back
    ],
)
def test_side_captures_follow_their_filters(final, expected):
    with probing("keeper(!w) > checked_side(s, t=4)").values() as got:
        keeper(1, final)
    assert got == expected


@tooled
def twice_set(x):
    y = 2
    y = 3  # noqa: F841 (probed)
    z = 30
    return z


def test_a_filtered_total_focus_stays_current_past_other_values():
    with probing("twice_set(!y=2, z)", probe_type="total").values() as got:
        twice_set(1)
    assert got == [{"y": 2, "z": 30}]


def test_a_dotted_match_function_rebound_behind_its_object_is_used():
    from types import SimpleNamespace

    cfg = SimpleNamespace(pred=lambda v: v > 2)
    seen = []
    for rebound in (lambda v: v < 2, None):
        with probing("steps(x~cfg.pred) > y").values() as got:
            for k in range(1, 5):
                steps(k)
        seen.append(sorted({r["x"] for r in got}))
        cfg.pred = rebound
    assert seen == [[3, 4], [1]]


def test_an_error_in_a_match_function_says_where_it_came_from():
    def gt(n):
        return lambda v: v > n

    with pytest.raises(TypeError) as err:
        with probing("steps(x~gt(2)) > y"):
            steps(None)
    assert "raised by the selector's ~ function" in "".join(err.value.__notes__)


def test_override_on_a_probe_made_without_overridable_says_what_to_pass():
    with probing("f > y") as probe:
        with pytest.raises(TypeError, match=r"overridable=True"):
            probe.override(3)
        with pytest.raises(TypeError, match=r"overridable=True"):
            probe.koverride(lambda y: y)
        assert f(1) == 2


@tooled
def iterations(n):
    for j in range(n):
        y = j * 10
    return y


@pytest.mark.parametrize(
    "selector, probe_type, expected",
    [
        # immediate: j's value when y is set
        ("iterations(j=2, !y)", "immediate", [{"j": 2, "y": 20}]),
        # total: y=10's result also holds the j=2 set while it was current, and
        # y=20's the j=3: no result passes "j == 2" on every value it holds (as 1.4),
        # rather than pairing y=10 with j=2
        ("iterations(j=2, !y)", "total", []),
        ("iterations(j=4, !y)", "total", [{"j": 4, "y": 40}]),
    ],
)
def test_a_total_result_passes_a_filter_on_every_value_it_holds(selector, probe_type, expected):
    with probing(selector, probe_type=probe_type).values() as got:
        iterations(5)
    assert got == expected


def test_a_keyed_slot_alone_captures_it_under_its_name():
    with probing("tally > scores['double']").values() as got:
        tally(3)
    assert got == [{"scores": 6}]
