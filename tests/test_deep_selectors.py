"""``f >> x`` into code that is not decorated: the callees ``f`` names, statically."""

import warnings

import pytest

from ptera import UnmatchedSelectorWarning, probing, tooled
from ptera.reach import MAX_CALL_DEPTH, reachable
from tests import wrapped_program


def helper(v):
    doubled = v * 2
    return doubled


class Thing:
    def go(self, v):
        doubled = self.inner(v) + 1
        return doubled

    def inner(self, v):
        tripled = v * 3
        return tripled


def outer(n):
    total = helper(n) + Thing().go(n) + wrapped_program.wrapped(n)
    return total


def via_callback(fn, n):
    return fn(n)


def calls_through_argument(n):
    return via_callback(helper, n)


def sorts(xs):
    return sorted(xs, key=helper)


def calls_method_of_arg(obj, n):
    return obj.go(n)


def chain_0(n):
    return chain_1(n)


def chain_1(n):
    return chain_2(n)


def chain_2(n):
    return chain_3(n)


def chain_3(n):
    return chain_4(n)


def chain_4(n):
    deepest = n
    return deepest


@tooled
def decorated_leaf(n):
    leaf = n + 1
    return leaf


def calls_decorated(n):
    return decorated_leaf(n)


@pytest.mark.parametrize(
    "selector, call, expected",
    [
        ("outer >> doubled", lambda: outer(2), [{"doubled": 4}, {"doubled": 7}]),
        ("outer >> tripled", lambda: outer(2), [{"tripled": 6}]),
        ("outer >> a", lambda: outer(2), [{"a": 3}]),  # a module attribute, behind wraps
        ("outer(n) >> helper > doubled", lambda: outer(1), [{"n": 1, "doubled": 2}]),
        ("outer > helper > doubled", lambda: outer(1), [{"doubled": 2}]),
        ("calls_decorated >> leaf", lambda: calls_decorated(1), [{"leaf": 2}]),
        ("chain_0 >> deepest", lambda: chain_0(5), [{"deepest": 5}]),  # 4 calls down
        # A function the code names is a candidate, even when a C function calls it.
        ("sorts >> doubled", lambda: sorts([3, 1]), [{"doubled": 6}, {"doubled": 2}]),
        # A function the code names (here, passes on) is a candidate too.
        ("calls_through_argument >> doubled", lambda: calls_through_argument(1), [{"doubled": 2}]),
    ],
)
def test_deep_selector_reaches_undecorated_callees(selector, call, expected):
    with probing(selector).values() as got:
        call()
    assert got == expected


@pytest.mark.parametrize(
    "selector, call",
    [
        # The callee is an argument, not a name the code uses.
        ("via_callback >> doubled", lambda: via_callback(helper, 1)),
        # A method of an object the function receives: its class is not named.
        ("calls_method_of_arg >> doubled", lambda: calls_method_of_arg(Thing(), 1)),
    ],
)
@pytest.mark.filterwarnings("ignore::ptera.UnmatchedSelectorWarning")  # unless a test has `doubled`
def test_what_the_static_search_does_not_reach(selector, call):
    with probing(selector).values() as got:
        call()
    assert got == []


def test_any_variable_below_stays_with_tooled_functions():
    with probing("outer >> $v", raw=True) as p:
        got = p.map(lambda d: d["v"].name).accum()
        outer(1)
    assert got == ["n", "total"]  # outer's own, none of its undecorated callees'


def test_the_search_is_bounded_in_depth():
    found = reachable([chain_0], depth=2)
    assert [f.__name__ for f in found] == ["chain_1", "chain_2"]
    assert MAX_CALL_DEPTH >= 4


def test_reachable_lists_methods_classes_and_module_functions():
    names = {f.__qualname__ for f in reachable([outer])}
    assert {"helper", "Thing.go", "Thing.inner", "wrapped"} <= names
    assert not any(f.__module__.split(".")[0] in ("ptera", "functools") for f in reachable([outer]))


def test_code_is_restored_after_a_deep_probe():
    original = helper.__code__
    with probing("outer >> doubled"):
        assert helper.__code__ is not original
    assert helper.__code__ is original


@pytest.mark.parametrize("selector", ["outer >> doubeld", "Linear >> wieght"])
def test_a_deep_name_nothing_reaches_warns_with_a_caret(selector):
    import torch

    net = torch.nn.Linear(2, 2)  # noqa: F841 (in scope for `Linear`)
    with pytest.warns(UnmatchedSelectorWarning, match="has a variable") as record:
        with probing(selector).values() as got:
            outer(3)
    assert got == []
    text = str(record[0].message)
    assert selector in text and "^" in text
    assert record[0].filename == __file__  # points at the probe, not at ptera


def test_a_deep_name_that_exists_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmatchedSelectorWarning)
        with probing("outer >> doubled").values() as got:
            outer(3)
    assert got
