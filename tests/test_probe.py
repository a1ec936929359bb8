"""Probes: every selector form against small programs, overrides, isolation, cleanup."""

import asyncio
import gc
import runpy
import threading
import tracemalloc
import warnings

import pytest

from ptera import SelectorError, global_probe, probing, tooled
from ptera.overlay import active_rule_count
from tests.test_selfless import ELSEWHERE


@tooled
def square(x):
    rval = x * x
    return rval


@tooled
def sumsquares(x, y):
    xx = square(x)
    yy = square(y)
    rval = xx + yy
    return rval


@tooled
def f(x):
    a = x + 1
    b = a * 2
    y = 0
    for i in range(3):
        y = y + b + i
    return y


@tooled
def g(x):
    z = f(x) + 1
    return z


@tooled
def h(x):
    w = g(x) * 2
    return w


@tooled
def fact(n):
    if n <= 1:
        r = 1
    else:
        r = n * fact(n - 1)
    return r


@tooled
def layer(x):
    q = x * 2
    return q


@tooled
def seq(inp):
    acts = {}
    acts[0] = inp
    for i in range(3):
        acts[i + 1] = layer(acts[i])
    return acts[3]


@tooled
def flagged(x, mode="train"):
    out = x * 10
    return out


@tooled
def gen(n):
    for i in range(n):
        yield i * i


@pytest.mark.parametrize(
    "selector, run, expected",
    [
        ("f > b", lambda: f(1), [{"b": 4}]),
        ("f(x) > y", lambda: f(1), [{"x": 1, "y": y} for y in (0, 4, 9, 15)]),
        ("f(!x) > b", lambda: f(1), [{"x": 1}]),
        ("f(x as inp) > b as bee", lambda: f(1), [{"inp": 1, "bee": 4}]),
        ("b", lambda: f(1), [{"b": 4}]),
        ("g > f > b", lambda: g(1), [{"b": 4}]),
        ("h > f > b", lambda: h(1), []),
        ("h >> f > b", lambda: h(1), [{"b": 4}]),
        ("h(x) >> b", lambda: h(2), [{"x": 2, "b": 6}]),
        ("g(x) >> f(a) > b", lambda: g(1), [{"x": 1, "a": 2, "b": 4}]),
        (
            "sumsquares(x) > square > rval",
            lambda: sumsquares(3, 4),
            [{"x": 3, "rval": 9}, {"x": 3, "rval": 16}],
        ),
        ("sumsquares > rval", lambda: sumsquares(3, 4), [{"rval": 25}]),
        ("square > #value", lambda: sumsquares(3, 4), [{"#value": 9}, {"#value": 16}]),
        ("square(x) > #value as r", lambda: square(5), [{"x": 5, "r": 25}]),
        ("fact(n) > r", lambda: fact(3), [{"n": 1, "r": 1}, {"n": 2, "r": 2}, {"n": 3, "r": 6}]),
        ("fact > fact(n) > r", lambda: fact(3), [{"n": 1, "r": 1}, {"n": 2, "r": 2}]),
        (
            "flagged(mode='eval') > out",
            lambda: (flagged(1), flagged(2, mode="eval")),
            [{"mode": "eval", "out": 20}],
        ),
        ("f(x=2) > b", lambda: (f(1), f(2)), [{"x": 2, "b": 6}]),
        ("seq > acts[2] as a2", lambda: seq(1), [{"a2": 4}]),
        ("seq > acts[$k] as a", lambda: seq(1), [{"k": k, "a": 2**k} for k in range(4)]),
        ("layer[2] > q", lambda: seq(1), [{"q": 4}]),
        ("seq > layer[$i] > q", lambda: seq(1), [{"i": i, "q": 2**i} for i in (1, 2, 3)]),
        ("gen > #yield", lambda: list(gen(3)), [{"#yield": v} for v in (0, 1, 4)]),
        ("f > #loop_i", lambda: f(0), [{"#loop_i": True} for i in range(3)]),
        ("f > #enter", lambda: f(0), [{"#enter": True}]),
        ("f{x, !#exit}", lambda: f(0), [{"x": 0, "#exit": True}]),
    ],
)
def test_probe_values(selector, run, expected):
    with probing(selector).values() as values:
        run()
    assert values == expected


@pytest.mark.parametrize(
    "selector, run, expected",
    [
        ("sumsquares{!x} > square{rval}", lambda: sumsquares(3, 4), [{"x": [3], "rval": [9, 16]}]),
        (
            "square{rval} > x",
            lambda: sumsquares(3, 4),
            [{"x": [3], "rval": [9]}, {"x": [4], "rval": [16]}],
        ),
        ("sumsquares(x, y)", lambda: sumsquares(1, 2), [{"x": [1], "y": [2]}]),
        ("sumsquares{square{rval}}", lambda: sumsquares(1, 2), [{"rval": [1, 4]}]),
        ("f{y}", lambda: f(1), [{"y": [0, 4, 9, 15]}]),
    ],
)
def test_total_probe_pools_values(selector, run, expected):
    with probing(selector, raw=True, probe_type="total").values() as values:
        run()
    assert [{k: cap.values for k, cap in entry.items()} for entry in values] == expected


def test_total_probe_of_single_values_gives_plain_values():
    with probing("square{rval} > x", probe_type="total").values() as values:
        sumsquares(3, 4)
    assert values == [{"x": 3, "rval": 9}, {"x": 4, "rval": 16}]


def test_raw_probe_keeps_real_names():
    with probing("f > $v", raw=True).values() as values:
        f(1)
    names = [entry["v"].names[0] for entry in values]
    assert names == ["x", "a", "b", "y", "i", "y", "i", "y", "i", "y"]


def test_several_selectors_in_one_probe():
    with probing("f > b", "square > rval; sumsquares > rval").values() as values:
        f(1)
        sumsquares(1, 2)
    assert values == [{"b": 4}, {"rval": 1}, {"rval": 4}, {"rval": 5}]


def test_giving_operators_work_on_a_probe(capsys):
    with probing("f(x) > y") as probe:
        maxes = probe["y"].max().accum()
        probe["y"].map(abs).filter(lambda v: v > 5).print("y={}")
        probe.kmap(lambda x, y: x + y).accum()
        f(1)
        f(2)
    assert maxes == [21]
    assert capsys.readouterr().out.split() == ["y=9", "y=15", "y=6", "y=13", "y=21"]


def test_wmap_brackets_enter_and_exit():
    def count(**_):
        yield
        return "done"

    with probing("f(!#enter, !!#exit)") as probe:
        results = probe.wmap(count).accum()
        f(1)
        f(2)
    assert results == ["done", "done"]


def test_override_replaces_the_focus_value():
    with probing("square > rval", overridable=True) as probe:
        probe.override(0)
        assert sumsquares(3, 4) == 0
    with probing("square(x) > rval", overridable=True) as probe:
        probe.where(x=3).koverride(lambda x, rval: rval + x)
        assert sumsquares(3, 4) == 12 + 16
    with probing("f > b", overridable=True) as probe:
        probe["b"].override(lambda b: b * 100)
        assert f(1) == 3 * 400 + 3
    assert sumsquares(3, 4) == 25


def test_listener_sees_overridden_value():
    with (
        probing("square > rval", overridable=True) as over,
        probing("square > rval").values() as seen,
    ):
        over.override(7)
        sumsquares(1, 2)
    assert seen == [{"rval": 7}, {"rval": 7}]


def test_global_probe_sees_every_thread():
    seen = []
    gp = global_probe("layer > q")
    gp["q"].subscribe(seen.append)
    threads = [threading.Thread(target=layer, args=(n,)) for n in (10, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    layer(1)
    gp.deactivate()
    layer(100)
    assert sorted(seen) == [2, 20, 40]


def test_threads_see_only_their_own_probes():
    results = {}
    barrier = threading.Barrier(2)

    def worker(n):
        with probing("layer > q").values() as values:
            barrier.wait()
            layer(n)
            barrier.wait()
        results[n] = values

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {1: [{"q": 2}], 2: [{"q": 4}]}


def test_asyncio_tasks_see_only_their_own_probes():
    @tooled
    async def work(n):
        await asyncio.sleep(0)
        v = n * 3
        await asyncio.sleep(0)
        return v

    async def task(n):
        with probing("work > v").values() as values:
            await work(n)
            await asyncio.sleep(0)
        return values

    async def main():
        return await asyncio.gather(task(1), task(2))

    assert asyncio.run(main()) == [[{"v": 3}], [{"v": 6}]]


def test_exception_in_block_restores_code():
    original = f.__code__
    with pytest.raises(ZeroDivisionError):
        with probing("f > b"):
            assert f.__code__ is not original
            1 / 0
    assert f.__code__ is original
    assert active_rule_count() == 0


def test_subscriber_exception_propagates():
    class Boom(Exception):
        pass

    def explode(_):
        raise Boom()

    with probing("f > b") as probe:
        probe.subscribe(explode)
        with pytest.raises(Boom):
            f(1)


def test_programs_own_exceptions_are_unchanged():
    @tooled
    def failing(x):
        y = x + 1
        raise KeyError(y)

    with probing("failing > #error").values() as errors:
        with pytest.raises(KeyError) as info:
            failing(1)
    assert errors == [{"#error": info.value}]


def test_many_cycles_do_not_leak():
    def cycle():
        with probing("f(x) > b") as probe:
            probe.subscribe(lambda _: None)
            f(1)

    for _ in range(200):
        cycle()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(10_000):
        cycle()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 100_000, growth
    assert active_rule_count() == 0


def test_probe_a_function_we_do_not_own_by_module_path():
    import textwrap

    original = textwrap.dedent.__code__
    with probing("/textwrap/dedent > margin").values() as values:
        textwrap.dedent("    a\n    b")
    assert values[-1] == {"margin": "    "}
    assert textwrap.dedent.__code__ is original
    with probing("textwrap:indent > prefix").values() as values:
        textwrap.indent("a", "> ")
    assert values == [{"prefix": "> "}]


def test_probe_a_method_by_class_name_in_scope():
    class Counter:
        def bump(self, n):
            total = n + 1
            return total

    c = Counter()
    with probing("Counter.bump > total").values() as a, probing("c.bump > total").values() as b:
        c.bump(1)
    # Through the instance, only that instance's calls, with it as `self` (as in 1.4).
    assert a == [{"total": 2}] and b == [{"self": c, "total": 2}]


def test_env_resolves_names():
    with probing("fn > b", env={"fn": f}).values() as values:
        f(1)
    assert values == [{"b": 4}]


@pytest.mark.parametrize(
    "selector, message",
    [
        ("nosuchfunction > x", "cannot find function 'nosuchfunction'"),
        ("f > nosuchvar", "'f' has no variable 'nosuchvar'"),
        ("/no.such.module/f > x", "cannot import module 'no.such.module'"),
        ("f >", "expected a variable or function name"),
    ],
)
def test_bad_selectors_fail_at_once(selector, message):
    with pytest.raises(SelectorError, match=message):
        probing(selector)


def test_a_probe_activates_once():
    probe = probing("f > b")
    with probe:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        with probe:
            pass


# A probe entered again with the same selector reuses the rule of the last one that
# ended (speed), but never when a call of the old one is still alive.
@tooled
def two_steps():
    x = 1
    yield x
    x = 2
    yield x


def test_reused_probe_does_not_see_a_generator_from_before():
    with probing("two_steps > x") as first:
        seen_first = first["x"].accum()
        gen = two_steps()
        next(gen)
    with probing("two_steps > x") as second:
        seen_second = second["x"].accum()
        next(gen)  # started under the first probe: its values are not the second's
        list(two_steps())
    assert seen_first == [1]
    assert seen_second == [1, 2]


def test_reused_probe_does_not_see_a_task_that_copied_the_context():
    async def main():
        gate = asyncio.Event()

        async def late():
            await gate.wait()
            return list(two_steps())

        with probing("two_steps > x") as first:
            seen_first = first["x"].accum()
            task = asyncio.create_task(late())  # copies the context, probe included
            await asyncio.sleep(0)
        with probing("two_steps > x") as second:
            seen_second = second["x"].accum()
            gate.set()
            await task
            list(two_steps())
        return seen_first, seen_second

    seen_first, seen_second = asyncio.run(main())
    assert seen_second == [1, 2]  # its own call only
    assert seen_first in ([], [1, 2])  # the task's call: the first probe's, or no one's


@pytest.mark.parametrize("where", ELSEWHERE)
def test_a_probe_ended_in_another_context_fails_and_keeps_its_subscribers(where):
    probe = probing("f > a")
    seen = probe["a"].accum()
    probe.activate()
    errors = []

    def stop():
        try:
            probe.deactivate()
        except ValueError as exc:
            errors.append(str(exc))

    ELSEWHERE[where](stop)
    assert errors and "activated in another context" in errors[0]
    f(1)
    probe.deactivate()  # in its own context
    f(2)
    assert seen == [2] and active_rule_count() == 0


def test_probe_entered_in_a_loop_sees_each_call_once():
    for i in range(5):
        with probing("two_steps > x") as probe:
            seen = probe["x"].accum()
            list(two_steps())
        assert seen == [1, 2], i


@pytest.mark.parametrize("first", [0, 1])
def test_probes_end_in_any_order(first):
    probes = [probing("f > a"), probing("f > b")]
    seen = [p.accum() for p in probes]
    for p in probes:
        p.activate()
    f(1)
    probes[first].deactivate()
    f(1)  # the other probe is still on
    probes[first].deactivate()  # a second deactivate does nothing
    f(1)
    probes[1 - first].deactivate()
    f(1)
    counts = [3, 3]
    counts[first] = 1
    assert [len(s) for s in seen] == counts
    assert active_rule_count() == 0


@pytest.mark.parametrize("first", [0, 1])
def test_global_probes_end_in_any_order(first):
    probes = [global_probe("f > a"), global_probe("f > a")]
    seen = [p.accum() for p in probes]
    f(1)
    probes[first].deactivate()
    probes[first].deactivate()
    f(1)
    probes[1 - first].deactivate()
    f(1)
    counts = [2, 2]
    counts[first] = 1
    assert [len(s) for s in seen] == counts
    assert active_rule_count() == 0


def test_an_activation_is_removed_once_whatever_the_order():
    from ptera import Immediate
    from ptera.overlay import activate

    seen = []

    def trigger(caps):  # Immediate passes Capture objects, as in 1.4
        seen.append({k: c.value for k, c in caps.items()})

    rule = lambda: Immediate("f > a", trigger=trigger).rule()  # noqa: E731
    one, two = activate((rule(),)), activate((rule(),))
    one.remove()
    one.remove()  # idempotent: must not take away what `two` needs
    f(1)
    assert seen == [{"a": 2}]
    with activate((rule(),)):
        f(2)
    assert seen == [{"a": 2}, {"a": 3}, {"a": 3}]
    two.remove()
    f(3)
    assert len(seen) == 3 and active_rule_count() == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: probing(123), "a selector is a string or a Scope .*, not int"),
        (lambda: probing(None), "a selector is a string or a Scope .*, not NoneType"),
        (lambda: probing(["f > b"]), "a selector is a string or a Scope .*, not list"),
        (lambda: global_probe(123), "a selector is a string or a Scope .*, not int"),
        (lambda: probing("f > b", env=3), "env must be a mapping"),
        (lambda: probing("f > b", overridable=True).koverride(3), "koverride needs a function"),
    ],
)
def test_wrong_types_are_type_errors_that_say_what_was_expected(call, message):
    with pytest.raises(TypeError, match=message):
        call()
    assert active_rule_count() == 0


# -- selectors that could match nothing say so ------------------------------------


@tooled
def comprehensions(xs):
    doubled = [x * 2 for x in xs]
    pairs = {k: v for k, v in zip(xs, doubled)}
    last = [(seen := x) for x in xs]
    return doubled, pairs, last, seen


@pytest.mark.parametrize("name", ["x", "k", "v"])
def test_a_comprehension_variable_is_an_error_with_the_reason(name):
    with pytest.raises(SelectorError, match=f"'{name}' of 'comprehensions' lives only in a"):
        probing(f"comprehensions > {name}")


def test_what_a_comprehension_binds_in_the_function_is_a_point():
    with probing("comprehensions > seen").values() as seen:
        comprehensions([1, 2])
    assert seen == [{"seen": 1}, {"seen": 2}]
    assert "x" not in comprehensions.__ptera_info__


def test_a_probe_around_a_thread_pool_warns_once(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import ptera.probe

    monkeypatch.setattr(ptera.probe, "_warned", [])
    with pytest.warns(RuntimeWarning, match="square ran in another thread.*global_probe"):
        with probing("square > rval").values() as values:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(square, range(3)))
    assert values == []
    with warnings.catch_warnings(record=True) as again:  # once: the second probe is silent
        warnings.simplefilter("always")
        with probing("square > rval"):
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(square, range(3)))
    assert again == []


PROBE_SCRIPT = """
from ptera import Probe, tooled

def main():
    @tooled
    def local_f(x):
        y = x + 1
        return y
    p = Probe("local_f > y")  # a name local to main
    values = p["y"].accum()
    with p:
        local_f(1)
    return values

@tooled
def f(x):
    b = x * 2
    return b

p = Probe("f > b")  # at module level: the outermost frame
values = p["b"].accum()
with p:
    f(3)
RESULT = (main(), values)
"""


def test_probe_made_directly_resolves_names_where_it_is_made(tmp_path):
    # 1.4.1 exports Probe: constructed by hand, at module level or in a function.
    script = tmp_path / "direct_probe.py"
    script.write_text(PROBE_SCRIPT)
    assert runpy.run_path(str(script))["RESULT"] == ([2], [6])
