"""Flat collectors give the same results as the general path, value for value.

A collecting rule whose templates are roots plus plain captures one ``>>`` below
(``Rule.flat``) reports into one list per root call; every other rule takes
``Match``. Each selector below runs both ways (the general one by declaring no
rule flat) and the captures must be equal, in the same order.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptera import Recurrence, probing, tooled, using
from ptera import capture as capture_module
from ptera.capture import Rule
from ptera.match import compile_selector
from ptera.overlay import activate
from ptera.plugin import collecting_rule
from ptera.selector import select


@tooled
def leaf(x):
    y = x * 2
    z = y + 1
    return z


@tooled
def middle(n):
    h = Recurrence()
    h[0] = n
    for i in range(3):
        h[i + 1] = leaf(h[i])
    total = h[3]
    return total


@tooled
def top(n, deep=2):
    a = middle(n)
    b = top(n + 1, deep - 1) if deep > 0 else 0
    loss = a + b
    return loss


@tooled
def gen(n):
    for i in range(n):
        v = leaf(i)
        yield v


def run_top():
    return top(1)


def run_gen():
    return list(gen(3))


# (selector, program, flat when collecting (a plugin's rule), flat as a total rule)
CORPUS = [
    ("top{loss}", run_top, True, True),
    ("top{a, loss}", run_top, True, True),
    ("top{!!loss} >> y", run_top, True, False),  # as a total rule `y` is a focus
    ("top{loss} >> y", run_top, True, False),
    ("top >> $v", run_top, True, False),  # `top` is also below `top` (recursion)
    ("top{a} >> leaf{z}", run_top, True, True),
    ("top >> leaf > y", run_top, True, False),
    ("top{loss} >> h[1] as h", run_top, False, False),  # a keyed variable
    ("middle{total} >> z", run_top, True, False),
    ("top(n=2) > loss", run_top, False, False),  # a filter
    ("top{#exit} >> y", run_top, False, False),
    ("leaf{y, z}", run_top, True, True),
    ("top > middle > leaf > y", run_top, False, False),  # deeper than one level
    ("top{a} > middle{total}", run_top, False, False),  # `>`: a direct child
    ("gen >> y", run_gen, True, False),
    ("gen{v}", run_gen, True, True),
]


def collected(selector: str, program, flat: bool, monkeypatch, collect: bool) -> list:
    monkeypatch.setattr(capture_module, "_is_flat", _flat_if(flat))
    out = []
    sel = select(selector, env=globals())
    if collect:
        rule = collecting_rule(sel, globals(), out.append)
    else:
        rule = Rule(compile_selector(sel, globals()), out.append, immediate=False, raw=True)
    assert rule.flat is (flat and _REAL(rule.compiled, False, False, None))
    with activate((rule,)):
        value = program()
    return [value, out]


_REAL = capture_module._is_flat


def _flat_if(allowed: bool):
    return lambda *args: allowed and _REAL(*args)


@pytest.mark.parametrize("collect", [True, False])
@pytest.mark.parametrize("selector, program, flat_collecting, flat_total", CORPUS)
def test_flat_and_general_paths_give_the_same_captures(
    selector, program, flat_collecting, flat_total, collect, monkeypatch
):
    comp = compile_selector(select(selector, env=globals()), globals(), collect=collect)
    assert _REAL(comp, False, False, None) is (flat_collecting if collect else flat_total)
    general = collected(selector, program, False, monkeypatch, collect)
    fast = collected(selector, program, True, monkeypatch, collect)
    # repr: a Recurrence compares by identity, and each run makes its own.
    assert repr(fast) == repr(general)
    if program is run_top:  # a generator is a leaf scope: `gen >> y` finds nothing
        assert general[1], "the corpus should match something"


@pytest.mark.parametrize("selector, program, flat_collecting, flat_total", CORPUS)
def test_using_reads_the_same_results_either_way(
    selector, program, flat_collecting, flat_total, monkeypatch
):
    results = []
    for allowed in (False, True):
        monkeypatch.setattr(capture_module, "_is_flat", _flat_if(allowed))
        with using(q=select(selector, env=globals())) as res:
            program()
        results.append(res.q.map_full())
    assert repr(results[0]) == repr(results[1])


@tooled
def chain(k, m):
    s = 0
    for j in range(k):
        s = s + leaf(j * m)
    return s


@settings(max_examples=25, deadline=None)
@given(k=st.integers(0, 4), m=st.integers(-3, 3), with_probe=st.booleans())
def test_flat_results_do_not_depend_on_other_active_rules(k, m, with_probe):
    """A probe on the same functions (a Match beside a flat root) changes nothing."""
    out = {}
    for allowed in (False, True):
        capture_module_flat = _flat_if(allowed)
        old = capture_module._is_flat
        capture_module._is_flat = capture_module_flat
        try:
            got = []
            rule = collecting_rule("chain{s} >> z", globals(), got.append)
            if with_probe:
                with probing("leaf > y") as probe, activate((rule,)):
                    ys = probe["y"].accum()
                    chain(k, m)
                got.append(("probe", list(ys)))
            else:
                with activate((rule,)):
                    chain(k, m)
        finally:
            capture_module._is_flat = old
        out[allowed] = got
    assert out[False] == out[True]


@pytest.mark.parametrize("flat", [False, True])
def test_two_flat_rules_reaching_one_function_each_get_their_own(flat, monkeypatch):
    """`leaf` reports into two roots at once (`top`'s and `middle`'s lists): each rule
    gets what it gets when it is active alone."""
    monkeypatch.setattr(capture_module, "_is_flat", _flat_if(flat))
    selectors = ["top{loss} >> y", "middle{total} >> z"]
    alone = []
    for selector in selectors:
        out: list = []
        with activate((collecting_rule(selector, globals(), out.append),)):
            run_top()
        alone.append(repr(out))
    together: list = [[], []]
    rules = tuple(collecting_rule(s, globals(), o.append) for s, o in zip(selectors, together))
    assert all(rule.flat is flat for rule in rules)
    with activate(rules):
        run_top()
    assert [repr(out) for out in together] == alone
