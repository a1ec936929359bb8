"""How a probe feeds its subscribers: plain functions directly, operator chains through
reactivex, with the same values, order, exceptions and completion either way.

Each shape below subscribes to ``source``: the probe itself (the direct path for plain
subscribers) or ``probe.pipe()`` (the same stream behind an empty operator chain: the
reactivex path). Both runs must give the expected log.
"""

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observer

from ptera import probing, tooled
from ptera.overlay import active_rule_count


@tooled
def step(x):
    a = x + 1
    return a


class Boom(Exception):
    pass


def plain(source, log):
    source.subscribe(lambda d: log.append(("fn", d["a"])))


def on_next_kwarg(source, log):
    source.subscribe(on_next=lambda d: log.append(("kw", d["a"])))


def with_completion(source, log):
    source.subscribe(lambda d: log.append(("fn", d["a"])), on_completed=lambda: log.append("done"))


def observer_object(source, log):
    source.subscribe(
        Observer(lambda d: log.append(("obs", d["a"])), None, lambda: log.append("obs done"))
    )


def chain(source, log):
    source["a"].map(lambda v: v * 10).subscribe(lambda v: log.append(("map", v)))


def mixed(source, log):
    source.subscribe(lambda d: log.append(("first", d["a"])))
    source.where(a=3).subscribe(lambda d: log.append(("where", d["a"])))
    source.subscribe(lambda d: log.append(("last", d["a"])), on_completed=lambda: log.append("end"))


def helpers(source, log):
    source["a"] >> log
    source.ksubscribe(lambda a: log.append(("k", a)))
    log.append(source["a"].accum())


def dispose_between_calls(source, log):
    first = source.subscribe(lambda d: log.append(("one", d["a"])))
    source.subscribe(lambda d: log.append(("two", d["a"])), on_completed=lambda: log.append("two"))

    def after(x):
        if x == 2:
            first.dispose()

    return after


def dispose_the_next_one_while_feeding(source, log):
    later = []

    def first(d):
        log.append(("first", d["a"]))
        if d["a"] == 3:
            later[0].dispose()  # the next subscriber misses this value already

    source.subscribe(first)
    later.append(source.subscribe(lambda d: log.append(("second", d["a"]))))


def dispose_itself_while_feeding(source, log):
    me = []

    def once(d):
        log.append(("once", d["a"]))
        me[0].dispose()

    me.append(source.subscribe(once, on_completed=lambda: log.append("never")))


def raising(source, log):
    def fail(d):
        log.append(("fail", d["a"]))
        if d["a"] == 3:
            raise Boom  # into step(2); the subscriber stays subscribed

    source.subscribe(fail, on_completed=lambda: log.append("fail done"))
    source.subscribe(lambda d: log.append(("after", d["a"])))


def subscribing_while_feeding(source, log):
    def spawn(d):
        log.append(("spawn", d["a"]))
        if d["a"] == 2:
            # A subscriber added during a delivery starts with the next value.
            source.subscribe(lambda d: log.append(("new", d["a"])))

    source.subscribe(spawn)


def late_subscriber(source, log):
    def after(x):
        if x == 1:
            source.subscribe(lambda d: log.append(("late", d["a"])))

    return after


CALLS = (1, 2, 3)

SHAPES = [
    (plain, [("fn", 2), ("fn", 3), ("fn", 4)]),
    (on_next_kwarg, [("kw", 2), ("kw", 3), ("kw", 4)]),
    (with_completion, [("fn", 2), ("fn", 3), ("fn", 4), "exit", "done"]),
    (observer_object, [("obs", 2), ("obs", 3), ("obs", 4), "exit", "obs done"]),
    (chain, [("map", 20), ("map", 30), ("map", 40)]),
    (
        mixed,
        [("first", 2), ("last", 2), ("first", 3), ("where", 3), ("last", 3)]
        + [("first", 4), ("last", 4), "exit", "end"],
    ),
    (helpers, [[2, 3, 4], 2, ("k", 2), 3, ("k", 3), 4, ("k", 4)]),
    (
        dispose_between_calls,
        [("one", 2), ("two", 2), ("one", 3), ("two", 3), ("two", 4), "exit", "two"],
    ),
    (
        dispose_the_next_one_while_feeding,
        [("first", 2), ("second", 2), ("first", 3), ("first", 4)],
    ),
    (dispose_itself_while_feeding, [("once", 2)]),
    (
        raising,
        [("fail", 2), ("after", 2), ("fail", 3), ("raised", 2), ("fail", 4), ("after", 4)]
        + ["exit", "fail done"],
    ),
    (
        subscribing_while_feeding,
        [("spawn", 2), ("spawn", 3), ("new", 3), ("spawn", 4), ("new", 4)],
    ),
    (late_subscriber, [("late", 3), ("late", 4)]),
]


def run(shape, direct: bool) -> list:
    log = []
    with probing("step > a") as probe:
        source = probe if direct else probe.pipe()
        after = shape(source, log)
        for x in CALLS:
            try:
                step(x)
            except Boom:
                log.append(("raised", x))
            if after is not None:
                after(x)
        log.append("exit")
    assert active_rule_count() == 0
    return log


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "reactivex"])
@pytest.mark.parametrize("shape, expected", SHAPES, ids=[s.__name__ for s, _ in SHAPES])
def test_each_subscriber_shape_gives_the_same_log_on_both_paths(shape, expected, direct):
    log = run(shape, direct)
    if "exit" not in expected:
        expected = [*expected, "exit"]
    assert log == expected


def _in_reactivex() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("reactivex"):
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize(
    "subscribe, through_reactivex",
    [
        (lambda p, fn: p.subscribe(fn), False),
        (lambda p, fn: p.subscribe(on_next=fn), False),
        (lambda p, fn: p >> [] and p.subscribe(fn), False),
        (lambda p, fn: p.pipe().subscribe(fn), True),
        (lambda p, fn: p.map(lambda d: d).subscribe(fn), True),
        # A plain subscriber among reactivex ones is still called, in its turn, by ptera.
        (lambda p, fn: (p["a"].subscribe(lambda v: None), p.subscribe(fn)), False),
    ],
)
def test_a_plain_subscriber_is_called_without_reactivex(subscribe, through_reactivex):
    seen = []
    with probing("step > a") as probe:
        subscribe(probe, lambda d: seen.append(_in_reactivex()))
        step(1)
        step(2)
    assert seen == [through_reactivex] * 2


def test_a_lone_plain_subscriber_is_what_the_engine_calls():
    def record(d):
        seen.append(d)

    seen = []
    with probing("step > a") as probe:
        probe.subscribe(record)
        step(1)
        assert probe._rules[0].emit is record  # no wrapper left after the first value
        step(2)
    assert seen == [{"a": 2}, {"a": 3}]
    assert probe._rules[0].emit is not record  # nothing feeds an ended probe's subscriber


def test_completion_that_raises_still_ends_the_probe():
    def fail():
        raise Boom

    log = []
    with pytest.raises(Boom):
        with probing("step > a") as probe:
            probe.subscribe(log.append, on_completed=fail)
            probe.subscribe(log.append, on_completed=lambda: log.append("second"))
            step(1)
    assert log == [{"a": 2}, {"a": 2}]  # as giving: the observers after it are not completed
    assert active_rule_count() == 0
    step(2)
    assert len(log) == 2


def test_subscribing_to_an_ended_probe_does_not_take_over_its_reused_rule():
    first_seen, second_seen = [], []
    with probing("step > a") as first:
        first.subscribe(first_seen.append)
        step(1)
    with probing("step > a") as second:  # may reuse the rule the first probe had
        second.subscribe(second_seen.append)
        first.subscribe(first_seen.append)
        step(2)
    assert first_seen == [{"a": 2}]
    assert second_seen == [{"a": 3}]


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((42,), {}, "on_next must be a function, not 42"),
        ((print, "oops"), {}, "on_error must be a function, not 'oops'"),
        ((print,), {"on_completed": 3}, "on_completed must be a function, not 3"),
    ],
)
def test_a_subscriber_that_is_not_a_function_fails_at_subscribe(args, kwargs, message):
    with probing("step > a") as probe:
        with pytest.raises(TypeError, match=message):
            probe.subscribe(*args, **kwargs)
        step(1)  # the probe still works


# A random program of subscriptions, disposals and calls: both paths log the same.
OPS = st.lists(
    st.one_of(
        st.just(("plain",)),
        st.just(("chain",)),
        st.tuples(st.just("dispose"), st.integers(0, 5)),
        st.tuples(st.just("call"), st.integers(0, 3)),
    ),
    max_size=12,
)


def program(ops, direct: bool) -> list:
    log = []
    subs = []
    with probing("step > a") as probe:
        source = probe if direct else probe.pipe()
        for op in ops:
            tag = len(subs)
            if op[0] == "plain":
                subs.append(
                    source.subscribe(
                        lambda d, tag=tag: log.append((tag, d["a"])),
                        on_completed=lambda tag=tag: log.append((tag, "done")),
                    )
                )
            elif op[0] == "chain":
                subs.append(
                    source["a"].map(lambda v, tag=tag: log.append((tag, "map", v))).subscribe()
                )
            elif op[0] == "dispose" and subs:
                subs[op[1] % len(subs)].dispose()
            elif op[0] == "call":
                step(op[1])
    return log


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_any_program_of_subscriptions_logs_the_same_on_both_paths(ops):
    assert program(ops, direct=True) == program(ops, direct=False)
