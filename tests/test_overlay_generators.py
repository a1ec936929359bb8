"""A generator is a scope for the calls its body makes, and only while its body runs."""

import asyncio
import threading

import pytest

from ptera import probing, tooled


@tooled
def side(x):
    s = x + 1
    return s


@tooled
def numbers(n):
    for i in range(n):
        side(i)
        y = i * 10
        yield y


@tooled
def consumer(n):
    total = 0
    for y in numbers(n):
        total += side(100 + y)  # between two values: not a call of `numbers`
    return total


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("numbers > side > s", [1, 2]),
        ("numbers(i) > side > s", [(0, 1), (1, 2)]),
        ("consumer > side > s", [101, 111]),  # direct calls of consumer only
        ("consumer >> side > s", [1, 101, 2, 111]),
    ],
)
def test_calls_in_a_generators_body_have_it_as_caller(selector, expected):
    with probing(selector).values() as got:
        consumer(2)
    values = [(r["i"], r["s"]) if "i" in r else r["s"] for r in got]
    assert values == expected


def test_immediate_and_total_results_get_the_generators_calls():
    with probing("numbers(!y) > side(s)").values() as immediate:
        list(numbers(2))
    assert immediate == [{"s": 1, "y": 0}, {"s": 2, "y": 10}]
    with probing("numbers{!y} > side(s)", probe_type="total").values() as total:
        list(numbers(2))
    assert [r["y"] for r in total] == [0, 10]


def test_a_generator_left_suspended_or_closed_early_leaves_the_stack():
    with probing("numbers > side > s", "consumer > side > s").values() as got:
        gen = numbers(5)
        next(gen)  # suspended inside `numbers`
        assert consumer(1) == 101  # no trace of the suspended generator here
        gen.close()
        side(7)  # nobody's call
    assert [r["s"] for r in got] == [1, 1, 101]


def test_a_generator_resumed_in_another_thread_is_its_calls_caller_there():
    with probing("numbers > side > s").values() as got:
        gen = numbers(2)
        first = next(gen)
        box = []
        t = threading.Thread(target=lambda: box.append(list(gen)))
        t.start()
        t.join()
    assert (first, box) == (0, [[10]])
    assert [r["s"] for r in got] == [1]  # the probe is this thread's: the other is not seen


@tooled
async def agen(n):
    for i in range(n):
        side(i)
        await asyncio.sleep(0)
        yield i


@tooled
async def drain(n):
    out = []
    async for v in agen(n):
        out.append(side(50 + v))
    return out


def test_async_generators_too():
    with probing("agen > side > s", "drain > side > s").values() as got:
        assert asyncio.run(drain(2)) == [51, 52]
    assert [r["s"] for r in got] == [1, 51, 2, 52]


@tooled
def walk(n):
    if n > 0:
        yield n
        got = yield from walk(n - 1)
        return got + 1
    return 0


@tooled
def relay(it):
    got = yield from it
    return got


def _echo():
    """A generator that answers what it is sent, logs throws, returns its count."""
    log, count = [], 0
    try:
        while True:
            try:
                sent = yield count
            except ValueError as exc:
                log.append(f"threw {exc}")
                sent = -1
            log.append(sent)
            count += 1
    finally:
        log.append("closed")
        _echo.log = log


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("walk > walk > n", [2, 1, 0]),  # the delegating generator is the caller
        ("walk > walk > walk > n", [1, 0]),
        ("walk(!n)", [3, 2, 1, 0]),
    ],
)
def test_yield_from_keeps_the_delegating_generator_as_caller(selector, expected):
    with probing(selector)["n"].values() as got:
        assert list(walk(3)) == [3, 2, 1]
    assert got == expected


def test_a_consumers_calls_between_delegated_values_do_not_see_the_generator():
    with probing("walk > side > x").values() as got:
        for _ in walk(2):
            side(1)
    assert got == []


@pytest.mark.parametrize("probed", [False, True])
def test_yield_from_passes_send_throw_close_and_the_return_value(probed):
    def drive():
        gen = relay(_echo())
        steps = [next(gen), gen.send("a"), gen.throw(ValueError("boom")), gen.send("b")]
        gen.close()
        return steps, _echo.log

    if probed:
        with probing("relay > it").values() as seen:
            result = drive()
        assert len(seen) == 1
    else:
        result = drive()
    assert result == ([0, 1, 2, 3], ["a", "threw boom", -1, "b", "closed"])
    gen = walk(2)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    assert stop.value.value == 2  # `return got + 1` through two delegations


@tooled
def _raises_after(handled):
    try:
        yield 1
    except ValueError:
        pass
    raise KeyError("k")


@tooled
def _delegating(src):
    z = 0
    yield from src(True)
    z = 1
    return z


@pytest.mark.parametrize("probed", [False, True])
def test_a_thrown_exception_reaches_the_delegate_without_a_context(probed):
    def context():
        gen = _delegating(_raises_after)
        next(gen)
        with pytest.raises(KeyError) as info:
            gen.throw(ValueError("v"))
        return info.value.__context__

    if probed:
        with probing("_delegating > z"):
            assert context() is None
    else:
        assert context() is None


@tooled
def _cleaning():
    try:
        yield 1
    except KeyError:
        side(10)
        yield 2
    finally:
        side(20)


def test_a_generator_resumed_by_throw_or_close_is_its_handlers_caller():
    with probing("_cleaning > side > x")["x"].values() as got:
        gen = _cleaning()
        next(gen)
        assert gen.throw(KeyError("k")) == 2
        side(30)  # the consumer's call, the generator suspended
        gen.close()
    assert got == [10, 20]
