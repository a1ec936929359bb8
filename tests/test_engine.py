"""The engine's state lives in one ``Engine``; the module-level names are the default's.

A fresh ``Engine()`` shares nothing with the default one but the functions' code:
its rules, plans, frames, counts and missed calls are its own, and ``reset()``
returns it to a clean slate.
"""

import threading

import pytest

from ptera import Immediate, Total, overlay, probing, tooled
from ptera import compiled as stance
from ptera.lookup import state_for
from ptera.overlay import ENGINE, BaseOverlay, Engine, after_exit
from ptera.transform import HELPER


@tooled
def outer(x):
    a = inner(x)
    return a + 1


@tooled
def inner(x):
    y = x * 2
    return y


def listen(selector: str, seen: list, engine: Engine | None = None):
    """A rule that appends each focus value of ``selector``, optionally noting the frames."""

    def trigger(captures):
        value = {k: c.value for k, c in captures.items()}
        if engine is not None:
            value["frames"] = (ENGINE.frame.get(), engine.frame.get())
        seen.append(value)

    return Immediate(selector, trigger=trigger).rule()


def is_idle(fn) -> bool:
    return fn.__code__ is state_for(fn).idle


@pytest.fixture
def engine():
    fresh = Engine()
    yield fresh
    fresh.reset()  # whatever a test left active goes; the default takes the module back on use


@pytest.mark.parametrize(
    "name",
    [
        "activate",
        "deactivate",
        "check_owner",
        "current_plan",
        "after_exit",
        "missed_calls",
        "active_rule_count",
        "engine_lock",
    ],
)
def test_the_module_functions_are_the_default_engines_methods(name):
    function = getattr(overlay, name)
    assert function.__self__ is ENGINE
    assert function.__func__ is getattr(Engine, name)


def test_instrumented_code_calls_the_default_engines_helpers():
    namespace = inner.__globals__[HELPER]
    assert namespace is overlay.HELPERS[HELPER] is ENGINE.helpers[HELPER]
    assert namespace.enter is overlay._enter is ENGINE._enter
    assert namespace.exit is overlay._exit is ENGINE._exit
    assert namespace.engine is ENGINE


def test_a_fresh_engine_activates_its_rules_only(engine):
    seen, seen_default = [], []
    fid = state_for(inner).fid
    with engine.activate((listen("inner > y", seen),)):
        assert outer(1) == 3
        assert engine.active_rule_count() == 1 and overlay.active_rule_count() == 0
        assert fid in engine.current_plan().fns and fid not in overlay.current_plan().fns
        assert engine.counts[state_for(inner)] and not ENGINE.counts.get(state_for(inner))
        assert not ENGINE.rules
    assert seen == [{"y": 2}] and is_idle(inner)
    with overlay.activate((listen("inner > y", seen_default),)):  # the default's, again
        outer(2)
    assert seen == [{"y": 2}] and seen_default == [{"y": 4}]


def test_a_fresh_engine_keeps_its_own_frame_stack(engine):
    seen = []
    with engine.activate((listen("outer > inner > y", seen, engine),)):
        outer(1)
    [record] = seen
    default_frame, own_frame = record.pop("frames")
    assert record == {"y": 2}
    assert default_frame is None and own_frame is not None
    assert engine.frame.get() is None


def test_global_rules_stay_on_their_engine(engine):
    seen = []
    with engine.activate((listen("inner > y", seen),), glob=True):
        assert len(engine.rules) == 1 and ENGINE.rules == ()
        thread = threading.Thread(target=outer, args=(2,))
        thread.start()
        thread.join()
    assert seen == [{"y": 4}] and engine.epoch == 2 and not engine.rules


def test_missed_calls_are_counted_by_the_engine_that_installed_the_code(engine):
    fid = state_for(inner).fid
    before = overlay.missed_calls([fid])
    with engine.activate((listen("inner > y", []),)):
        thread = threading.Thread(target=inner, args=(1,))  # another context: not seen
        thread.start()
        thread.join()
    assert engine.missed_calls([fid]) == {fid: 1}
    assert overlay.missed_calls([fid]) == before


def test_two_engines_cannot_instrument_one_module_at_once(engine):
    with engine.activate((listen("inner > y", []),)):
        with pytest.raises(RuntimeError, match="one engine at a time"):
            with probing("outer > a"):
                pass
        assert is_idle(outer) and overlay.active_rule_count() == 0
    with probing("outer > a") as probe:  # the module is free again
        values = probe["a"].accum()
        outer(1)
    assert values == [2]


def test_an_activation_is_removed_by_its_own_engine(engine):
    activation = engine.activate((listen("inner > y", []),))
    with pytest.raises(ValueError, match="belongs to"):
        overlay.deactivate(activation)
    assert activation.active
    activation.remove()
    assert not activation.active and is_idle(inner)


def test_reset_ends_everything_active():
    engine, seen = Engine(), []
    stance_before = stance._s.active
    local = engine.activate((listen("inner > y", seen),))
    engine.activate((listen("outer > a", seen),), glob=True)
    thread = threading.Thread(target=inner, args=(1,))  # one missed call
    thread.start()
    thread.join()
    assert engine.missed
    engine.after_exit(lambda: None)
    engine.reset()
    assert engine.active_rule_count() == 0 and not engine.counts and not engine.missed
    assert engine.after.calls == [] and stance._s.active == stance_before
    assert is_idle(inner) and is_idle(outer)
    outer(1)
    local.remove()  # from before the reset: inert
    assert not local.active and seen == [] and engine.active_rule_count() == 0
    with engine.activate((listen("inner > y", seen),)):  # and it works as before
        outer(1)
    assert seen == [{"y": 2}]


def test_reset_drops_rules_other_contexts_activated():
    engine, seen, ready, done = Engine(), [], threading.Event(), threading.Event()

    def other_thread():
        engine.activate((listen("inner > y", seen),))  # never removed
        ready.set()
        done.wait()
        inner(1)
        seen.append(engine.active_rule_count())

    thread = threading.Thread(target=other_thread)
    thread.start()
    ready.wait()
    engine.reset()
    with engine.activate((listen("inner > y", []),)):  # inner's code installed again
        done.set()
        thread.join()
    assert seen == [0]
    engine.reset()


def test_decorating_leaves_the_engine_that_runs_a_module_in_place(engine):
    seen = []
    with engine.activate((listen("inner > y", seen),)):

        @tooled
        def late(x):
            z = x + 1
            return z

        assert globals()[HELPER].engine is engine
        outer(1)
        assert late(1) == 2
    assert seen == [{"y": 2}]


def test_a_resident_counts_again_after_a_reset(engine):
    seen = []
    resident = engine.resident((listen("inner > y", seen),))
    assert resident.engine is engine and not is_idle(inner)
    engine.reset()
    assert is_idle(inner)
    entered = resident.enter()  # takes its counts again
    try:
        outer(1)
    finally:
        resident.leave(*entered)
    assert seen == [{"y": 2}] and engine.active_rule_count() == 0
    resident.hold.release()
    assert is_idle(inner) and not engine.counts.get(state_for(inner))


def test_a_hold_released_inside_its_engines_lock_waits_for_the_end(engine):
    resident = engine.resident((listen("inner > y", []),))
    with engine.engine_lock():
        resident.hold.release()
        assert resident.hold.held and not is_idle(inner)
    assert not resident.hold.held and is_idle(inner)


def test_work_queued_by_a_failed_exit_does_not_run_at_a_later_one():
    ran = []

    def close(captures):
        after_exit(lambda: ran.append(captures["y"].value))
        if captures["y"].value == 2:  # the listener fails after queueing its work
            raise RuntimeError("listener failed")

    with BaseOverlay(Total("inner > y", close)):
        with pytest.raises(RuntimeError):
            inner(1)
        assert ran == []
        inner(2)
    assert ran == [4]  # not [2, 4]: the failed exit's work went with it
