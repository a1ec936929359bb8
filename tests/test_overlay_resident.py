"""An object's overlay stays installed across calls and goes when the object does
(``idle`` is the code a decorated function runs when nothing is active)."""

import gc
import runpy
import threading

import pytest

from ptera import overlay as engine
from ptera import probing, ptera, tooled, using
from ptera.lookup import state_for


@ptera
def inner(x):
    y = x * 2
    return y


@ptera
def outer(x):
    a = inner(x)
    b = inner(a + 1)
    return a + b


@ptera
def counting(n):
    for i in range(n):
        yield inner(i)


def idle(fn):
    return state_for(fn).idle


def collect():
    gc.collect()
    gc.collect()


def test_a_thousand_calls_install_the_code_once(monkeypatch):
    installs = []
    real = engine.Engine._install
    ours = {state_for(inner), state_for(outer)}

    def install(self, states):
        states = list(states)
        if ours & set(states):  # objects of other tests may be collected meanwhile
            installs.append(1)
        real(self, states)

    monkeypatch.setattr(engine.Engine, "_install", install)

    def calls():
        obj = outer.using(y="inner > y")
        for i in range(1000):
            assert obj(i).y.map("y") == [2 * i, 2 * (2 * i + 1)]
        assert len(installs) == 1

    calls()
    collect()
    assert len(installs) == 2  # released once, when the object went


def listened(cycle: bool) -> list:
    """Make an object with a listener, call it, and drop it; what the listener saw."""
    obj = outer.clone(return_object=True)
    seen = []

    @obj.on("inner > y")
    def record(y):
        seen.append(y)
        if cycle:
            return obj  # the listener refers to the object: a reference cycle

    obj(1)
    assert inner.__code__ is not idle(inner)
    assert inner(5) == 10  # outside the object's calls: nothing seen
    return seen


@pytest.mark.parametrize("cycle", [False, True])
def test_the_idle_code_comes_back_when_the_object_goes(cycle):
    # Made in a function: `on` reads the caller's names, and a frame's snapshot of
    # its locals would keep the object alive until that frame ends.
    assert listened(cycle) == [2, 6]
    collect()
    assert inner.__code__ is idle(inner)
    assert engine.active_rule_count() == 0


def test_objects_called_in_threads_each_see_their_own_calls():
    obj = outer.using(y="inner > y")
    errors = []

    def work(k):
        try:
            for i in range(200):
                got = obj(k * 1000 + i).y.map("y")
                assert got == [2 * (k * 1000 + i), 2 * (2 * (k * 1000 + i) + 1)]
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@ptera
def recursive(n):
    obj: object
    value = obj(n - 1).value if n > 0 else 0
    return value + 1


def test_a_nested_call_of_the_same_object_reuses_its_activation():
    obj = recursive.clone(return_object=True).using(v="recursive > value")
    obj.state.obj = obj
    result = obj(3)
    # Each call gets its own result; the nested calls' matches go to the innermost.
    assert result.value == 4 and result.v.map("value") == [3]


def test_a_generator_object_with_effects_says_to_use_a_with_block():
    # Its body runs after the call returns, outside the object's overlay: an error
    # rather than effects silently ignored.
    with pytest.raises(TypeError, match="generator or async function.*with using"):
        counting.using(y="inner > y")(3)
    assert list(counting.new()(3)) == [0, 2, 4]  # a state alone is fine
    with using(y="inner > y") as result:
        assert list(counting(3)) == [0, 2, 4]
    assert result.y.map("y") == [0, 2, 4]


def test_a_registry_change_between_calls_rebuilds_the_rules_and_keeps_counts_right():
    def calls():
        obj = outer.using(y="inner > y")
        assert obj(1).y.map("y") == [2, 6]

        @tooled
        def newcomer(q):
            r = q + 1
            return r

        assert obj(2).y.map("y") == [4, 10]

    calls()
    collect()
    assert inner.__code__ is idle(inner) and outer.__code__ is idle(outer)


def test_calls_give_the_same_results_as_the_with_form():
    obj = outer.using(a="outer > a", y="inner(x) > y", whole="outer{a, b}")
    for i in range(3):
        called = obj(i)
        with obj._overlay as entered:
            entered.value = outer(i)
        for name in ("a", "y", "whole"):
            assert called[name].map_full() == entered[name].map_full()
        assert called.value == entered.value


def test_an_object_collected_inside_the_engine_is_released_after_it():
    def made():
        obj = outer.using(y="inner > y")
        obj(1)
        return obj._overlay._resident.hold

    with engine.engine_lock():
        hold = made()
        collect()
        assert hold.held  # deferred: the counts may be mid-update here
    assert not hold.held
    assert inner.__code__ is idle(inner)


def plain_helper(callback, v):  # undecorated: a library function between f and g
    w = v
    return callback(w)


@tooled
def through_helper(v):
    return plain_helper(inner, v)


def test_only_decorated_functions_stay_instrumented_between_calls():
    # Held code in `plain_helper` would make it a call between `through_helper` and
    # `inner`, so `through_helper > inner` would stop matching while the object lives.

    watch = through_helper.using(q="plain_helper > w")
    assert watch(2).q.map("w") == [2]
    assert plain_helper.__code__ is state_for(plain_helper).original
    with probing("through_helper > inner > y").values() as seen:
        through_helper(1)
    assert seen == [{"y": 2}]
    assert watch(3).q.map("w") == [3]  # instrumented again for the call


def test_a_deferred_release_is_settled_by_the_next_object_call():
    other = outer.tweak({"outer > b": 0})
    other(1)

    def made():
        obj = through_helper.using(y="inner > y")
        obj(1)
        return obj._overlay._resident.hold

    with engine.ENGINE.lock:  # the bare lock, as a collection mid-count would find it
        hold = made()
        collect()
    assert hold.held
    other(1)
    assert not hold.held


LOOP_SCRIPT = """
import gc, weakref
from ptera import ptera

@ptera
def train(x):
    loss = x * 2
    return loss

class Model:
    pass

refs = []
for i in range(20):
    model = Model()
    refs.append(weakref.ref(model))
    obj = train.new().using(q="train > loss")  # names resolve in this module's namespace
    obj(i)
del model
gc.collect()
ALIVE = sum(r() is not None for r in refs)
"""


def test_objects_made_in_a_module_level_loop_do_not_keep_earlier_ones(tmp_path):
    # Each object's snapshot of the module's names holds the previous object as its
    # function only, so the chain object -> snapshot -> previous object -> model breaks.

    script = tmp_path / "loop_objects.py"
    script.write_text(LOOP_SCRIPT)
    # The last object's snapshot holds the model bound when it was made; no earlier one.
    assert runpy.run_path(str(script), run_name="loop_objects")["ALIVE"] == 1


REBIND_SCRIPT = """
from ptera import ptera

@ptera
def f(x):
    a = x + 1
    return a

@ptera
def g(x):
    a = x + 100
    return a

@ptera
def main(x, step):
    return step(x)

objs = []
for step in (f, g):
    objs.append(main.using(q="step > a"))  # `step` names f, then g
RESULT = [obj(1, f).q.map("a") + obj(1, g).q.map("a") for obj in objs]
"""


def test_names_resolve_as_they_were_bound_when_the_object_was_made(tmp_path):
    script = tmp_path / "rebind.py"
    script.write_text(REBIND_SCRIPT)
    assert runpy.run_path(str(script), run_name="rebind")["RESULT"] == [[2], [101]]


@pytest.mark.filterwarnings("ignore:probe 'plain_helper")  # it ran here, not in its thread
def test_another_threads_probe_does_not_change_what_greater_than_means_here():
    # plain_helper runs instrumented code while the other thread's probe is active;
    # in this thread no rule names it, so it stays transparent for `>`.
    started, done = threading.Event(), threading.Event()

    def other():
        with probing("plain_helper > w"):
            started.set()
            done.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        started.wait(10)
        assert plain_helper.__code__ is not state_for(plain_helper).original
        with probing("through_helper > inner > y").values() as seen:
            through_helper(1)
        assert seen == [{"y": 2}]
    finally:
        done.set()
        thread.join()
