"""Functions as objects: the classic "trace queries" walk-through, state and priorities."""

import asyncio
import contextvars
import copy
import pickle
import threading

import pytest

from ptera import (
    BaseOverlay,
    ConflictError,
    Immediate,
    Override,
    PteraFunction,
    PteraNameError,
    Recurrence,
    Total,
    default,
    probing,
    ptera,
    rewriting,
    tweaking,
    using,
)
from ptera.effects import Overlay  # the composable one (ptera.Overlay is 1.4's)
from ptera.overlay import active_rule_count


@ptera
def square(x):
    rval = x * x
    return rval


@ptera
def sumsquares(x, y):
    xx = square(x)
    yy = square(y)
    rval = xx + yy
    return rval


# (selector, what to read from the collection, expected) for sumsquares(3, 4)
WALKTHROUGH = [
    ("x", ("map", "x"), [3, 4, 3]),  # completed in order: square(3), square(4), sumsquares
    ("square > x", ("map", "x"), [3, 4]),
    ("sumsquares > x", ("map", "x"), [3]),
    ("square{rval} > x", ("map", "x", "rval"), [(3, 9), (4, 16)]),
    ("square(x) > rval", ("map", "x", "rval"), [(3, 9), (4, 16)]),
    ("square(x as base) > rval", ("map", "base", "rval"), [(3, 9), (4, 16)]),
    (
        "sumsquares(x as ssx, y as ssy) > square > x",
        ("map", "ssx", "ssy", "x"),
        [(3, 4, 3), (3, 4, 4)],
    ),
    ("sumsquares{!x} > square{rval}", ("map_all", "x", "rval"), [([3], [9, 16])]),
    ("sumsquares{rval as total} > xx", ("map", "xx", "total"), [(9, 25)]),
    ("square > #value", ("map", "#value"), [9, 16]),
    ("sumsquares{} as out", ("map", "out"), [25]),
    ("sumsquares > square(x=4) > rval", ("map", "rval"), [16]),
    ("sumsquares >> $v", ("map", "v"), [3, 3, 9, 4, 4, 16, 9, 16, 25]),
]


@pytest.mark.parametrize("selector, read, expected", WALKTHROUGH)
def test_using_walkthrough(selector, read, expected):
    res = sumsquares.using(q=selector)(3, 4)
    assert res.value == 25
    method, *names = read
    assert getattr(res.q, method)(*names) == expected


@pytest.mark.parametrize(
    "method, overlay, expected",
    [
        ("tweak", {"square > rval": 0}, 0),
        ("tweak", {"square > x": 2}, 8),
        ("tweak", {"sumsquares > xx": 100}, 116),
        ("tweak", {"square(x=3) > rval": 0}, 16),
        ("rewrite", {"square{x} > rval": lambda x: x + 1}, 9),
        ("rewrite", {"sumsquares > square > x": lambda x: -x}, 25),
        ("rewrite", {"sumsquares{y} > xx": lambda xx, y: xx * y}, 52),
    ],
)
def test_tweak_and_rewrite(method, overlay, expected):
    assert getattr(sumsquares, method)(overlay)(3, 4) == expected
    assert sumsquares(3, 4) == 25  # the original is untouched


def test_overlays_compose_and_stack():
    f = sumsquares.tweak({"square(x=3) > rval": 0}).rewrite(
        {"square(x=4) > rval": lambda rval: -rval}
    )
    assert f(3, 4) == -16
    res = f.using(q="sumsquares > rval")(3, 4)
    assert res.value == -16 and res.q.map("rval") == [-16]


def test_map_forms():
    q = sumsquares.using(q="square{rval} > x")(3, 4).q
    assert q.map(lambda x, rval: x + rval) == [12, 20]
    assert q.map(lambda rval, **rest: rval) == [9, 16]
    assert q.map() == [{"x": 3, "rval": 9}, {"x": 4, "rval": 16}]
    assert q.map_all("x") == [[3], [4]]
    full = q.map_full(lambda x: (x.name, x.names, x.value, x.values))
    assert full == [("x", ["x"], 3, [3]), ("x", ["x"], 4, [4])]


def test_map_errors_are_clear():
    q = sumsquares.using(q="sumsquares{!x} > square{rval}")(3, 4).q
    with pytest.raises(ValueError, match="capture 'rval' has 2 values.*map_all"):
        q.map("rval")
    with pytest.raises(KeyError, match="no capture 'zz'.*it has: x, rval"):
        q.map("zz")
    with pytest.raises(TypeError, match="wants zz but the match has only x, rval"):
        q.map_all(lambda zz: zz)


def test_positional_using_is_named_after_the_focus():
    res = sumsquares.using("square > rval", "xx")(3, 4)
    assert res.rval.map("rval") == [9, 16] and res.xx.map("xx") == [9]
    with pytest.raises(AttributeError, match="no collection 'nope'"):
        res.nope


def test_listeners_collect_their_results_under_their_name():
    f = sumsquares.clone(return_object=True)

    @f.on("square > rval")
    def doubled(rval):
        return rval * 2

    @f.on("sumsquares(x) > y")
    def pair(x, y):
        return (x, y)

    res = f(3, 4)
    assert (res.value, res.doubled, res.pair) == (25, [18, 32], [(3, 4)])
    assert sumsquares.clone()(3, 4) == 25  # listeners belong to f only


def test_on_a_plain_function_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"clone\(return_object=True\)"):
        sumsquares.on("x")


def test_context_manager_equivalents():
    from ptera import rewriting, using

    with tweaking({"square > rval": 1}):
        assert sumsquares(3, 4) == 2
    with rewriting({"square{x} > rval": lambda x: x}):
        assert sumsquares(3, 4) == 7
    with using(q="square > x", r="sumsquares > rval") as res:
        sumsquares(3, 4)
    assert res.q.map("x") == [3, 4] and res.r.map("rval") == [25]
    assert sumsquares(3, 4) == 25


def test_probe_and_tweak_see_the_same_values():
    with probing("square > rval").values() as seen:
        with tweaking({"square(x=3) > rval": 0}):
            assert sumsquares(3, 4) == 16
    assert seen == [{"rval": 0}, {"rval": 16}]
    with probing("sumsquares > xx").values() as seen:
        assert sumsquares.tweak({"sumsquares > xx": 1})(3, 4) == 17
    assert seen == [{"xx": 1}]


@pytest.mark.parametrize("first, expected", [(0, 13), (1, 17)])
def test_overlays_end_in_any_order(first, expected):
    overlays = [tweaking({"square(x=3) > rval": 1}), tweaking({"sumsquares > yy": 4})]
    for ov in overlays:
        ov.__enter__()
    assert sumsquares(3, 4) == 5
    overlays[first].__exit__(None, None, None)
    assert sumsquares(3, 4) == expected  # the other overlay still applies
    overlays[1 - first].__exit__(None, None, None)
    assert sumsquares(3, 4) == 25


async def _call(fn):
    return fn()


def _in_thread(fn):
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join()


ELSEWHERE = {
    "task": lambda fn: asyncio.run(_call(fn)),  # a task runs in a copy of the context
    "thread": _in_thread,
    "copied context": lambda fn: contextvars.copy_context().run(fn),
}


@pytest.mark.parametrize("where", ELSEWHERE)
def test_an_overlay_ended_in_another_context_fails_and_stays_active(where):
    # Ending it there would leave it active where it started, for good.
    ov = tweaking({"sumsquares > yy": 4})
    ov.__enter__()
    errors = []

    def stop():
        try:
            ov.__exit__(None, None, None)
        except ValueError as exc:
            errors.append(str(exc))

    ELSEWHERE[where](stop)
    assert errors and "activated in another context" in errors[0]
    assert sumsquares(3, 4) == 13  # still active here
    ov.__exit__(None, None, None)  # where it started: ends it
    assert sumsquares(3, 4) == 25 and active_rule_count() == 0


def test_a_base_overlay_shared_by_threads_ends_each_threads_own_activation():
    # A enters, B enters, A exits: B's activation must survive A's exit.
    overlay = BaseOverlay(Immediate("square > !rval", intercept=lambda rval: 1000))
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with overlay:
            a_in.set()
            b_in.wait(10)
        a_out.set()
        seen["a"] = sumsquares(3, 4)

    def b():
        a_in.wait(10)
        with overlay:
            b_in.set()
            a_out.wait(10)
            seen["b"] = sumsquares(3, 4)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"a": 25, "b": 2000}


@pytest.mark.parametrize("where", ELSEWHERE)
def test_a_base_overlay_ended_in_another_context_fails_and_stays_active(where):
    overlay = BaseOverlay(Immediate("sumsquares > !yy", intercept=lambda yy: 4))
    overlay.__enter__()
    errors = []

    def stop():
        try:
            overlay.__exit__(None, None, None)
        except ValueError as exc:
            errors.append(str(exc))

    ELSEWHERE[where](stop)
    assert errors and "activated in another context" in errors[0]
    assert sumsquares(3, 4) == 13
    overlay.__exit__(None, None, None)
    assert sumsquares(3, 4) == 25 and active_rule_count() == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: tweaking(123), r"tweak needs a mapping \{selector: value\}, not int"),
        (lambda: tweaking("square > rval"), r"tweak needs a mapping .*, not str"),
        (lambda: tweaking({1: 2}), "a selector is a string or a Scope .*, not int"),
        (lambda: rewriting(123), r"rewrite needs a mapping \{selector: function\}, not int"),
        (lambda: using(123), "a selector is a string or a Scope .*, not int"),
        (lambda: using(q=123), "a selector is a string or a Scope .*, not int"),
        (lambda: using(q=None), "a selector is a string or a Scope .*, not NoneType"),
        (lambda: using(q="square > x", env=[1]), "env must be a mapping"),
        (lambda: sumsquares.tweak(123), "tweak needs a mapping"),
        (lambda: sumsquares.using(q=123), "a selector is a string or a Scope .*, not int"),
        (lambda: Overlay().on("square > x", 5), "on needs a function to call, not int"),
        (lambda: BaseOverlay(123), "BaseOverlay needs handlers .*, not int"),
        (lambda: Immediate(123), "a selector is a string or a Scope .*, not int"),
        (lambda: Immediate("square > !x", intercept=3), "Immediate: intercept is a function"),
        (lambda: Immediate("square > !x", trigger="x"), "Immediate: trigger is a function"),
        (lambda: Total("square > x", 3), "Total: close is a function, not 3"),
    ],
)
def test_wrong_types_are_type_errors_that_say_what_was_expected(call, message):
    with pytest.raises(TypeError, match=message):
        call()


# -- selfless objects (core.md section 6) --------------------------------------


@ptera.defaults(debug=False)
def bagel(x, y):
    z: int
    debug: bool
    return (x + y) * z, debug


def test_bagel_state_and_defaults():
    bagel3 = bagel.new(z=3)
    assert isinstance(bagel3, PteraFunction)
    assert bagel3(1, 2) == (9, False)
    assert bagel.new(z=3, y=2)(1) == (9, False)
    assert bagel.new(z=3, y=2)(1, 4) == (15, False)  # the call's own value wins
    assert bagel.new(z=3, x=Override(5))(1, 2) == (21, False)
    assert bagel.new(z=1, debug=True)(1, 1) == (2, True)
    assert bagel.state == {"debug": False}


def test_state_is_readable_and_writable_and_copied():
    b = bagel.new(z=2)
    c = b.new()
    b.state.z = 10
    assert (b.state.z, c.state.z) == (10, 2)
    assert b(1, 1) == (20, False) and c(1, 1) == (4, False)
    with pytest.raises(AttributeError, match="no value for 'w'"):
        b.state.w


def test_unset_declared_variable_names_variable_and_function():
    with pytest.raises(
        PteraNameError, match=r"variable 'z' of bagel .*test_selfless.py:\d+.*bagel.new\(z=...\)"
    ):
        bagel(1, 2)


def test_unknown_state_names_are_refused_with_the_settable_ones():
    with pytest.raises(
        TypeError,
        match=r"no settable variable 'q' \(settable: x \(argument\), y \(argument\), debug \(declared\), z \(declared\)\)",
    ):
        bagel.new(q=1)
    with pytest.raises(TypeError, match="no settable variable 'w'"):
        bagel.new(z=1).state.w = 3


@ptera
def rate():
    lr = default(0.1)
    momentum: float = default(0.9)
    return lr, momentum


@pytest.mark.parametrize(
    "state, expected",
    [
        ({}, (0.1, 0.9)),
        ({"lr": 0.5}, (0.5, 0.9)),
        ({"lr": Override(0.5), "momentum": 0.0}, (0.5, 0.0)),
        ({"lr": default(0.1)}, (0.1, 0.9)),  # equal and the same: no conflict
    ],
)
def test_defaults_in_code_give_way_to_the_state(state, expected):
    assert rate.new(**state)() == expected


@ptera
def forced():
    n = Override(3)
    return n


def test_priorities_and_conflicts_name_both_sources():
    assert forced() == 3
    assert forced.new(n=5)() == 3  # Override in the code beats a plain value
    with pytest.raises(
        ConflictError,
        match=r"'n' of forced has two Override values: 5 from forced.new\(n=...\) and 3 set in the code \(.*test_selfless.py:\d+\)",
    ):
        forced.new(n=Override(5))()
    with pytest.raises(ConflictError, match="'lr' of rate has two default values"):
        rate.new(lr=default(0.2))()
    with pytest.raises(ConflictError, match="argument 'y' of bagel has two Override values"):
        bagel.new(z=1, y=Override(2))(1, Override(3))


def test_defaults_decorator_reaches_arguments_of_direct_calls():
    @ptera.defaults(y=10)
    def add(x, y):
        return x + y

    assert add(1) == 11 and add.new(y=5)(1) == 6 and add(1, 2) == 3
    with pytest.raises(TypeError, match="a later positional argument has none"):

        @ptera.defaults(x=1)
        def sub(x, y):
            return x - y


def test_the_module_itself_decorates():
    import ptera as module

    @module
    def f(x):
        y = x + 1
        return y

    @module.defaults(k=2)
    def g():
        k: int
        return k

    assert f.using(q="y")(1).q.map("y") == [2]
    assert g() == 2


def test_objects_nest_as_state_and_keyed_calls_follow_the_subscript():
    @ptera
    def layer(inp):
        T: float
        return inp * T

    @ptera
    def chain(inp):
        layers: list
        h = Recurrence()
        h[0] = inp
        for i, lay in enumerate(layers):
            h[i + 1] = lay(h[i])
        return h[len(layers)]

    net = chain.new(layers=[layer.new(T=2.0), layer.new(T=3.0)])
    assert net(1) == 6.0
    assert net.tweak({"layer > T": 1.0})(1) == 1.0
    assert net.tweak({"layer[1] > T": 10.0})(1) == 30.0
    assert net.tweak({"layer[2] > T": 10.0})(1) == 20.0
    assert net.using(h="h[1] as h")(1).h.map("h") == [2.0]
    assert net.using(q="chain > layer[$i] > T")(1).q.map("i", "T") == [(1, 2.0), (2, 3.0)]
    assert net.using(q="chain > h[$k] as h")(1).q.map("k", "h") == [(0, 1), (1, 2.0), (2, 6.0)]
    net.state.layers[-1].state.T = 5.0
    assert net(1) == 10.0


def test_state_reaches_generators_and_coroutines():
    @ptera
    def gen(n):
        step: int
        for i in range(n):
            yield i * step

    @ptera
    async def coro(x):
        k: int
        await asyncio.sleep(0)
        return x * k

    assert list(gen.new(step=3)(3)) == [0, 3, 6]
    assert asyncio.run(coro.new(k=4)(2)) == 8
    with pytest.raises(PteraNameError):
        list(gen(2))


def test_objects_look_like_their_function():
    b = bagel.new(z=1)
    assert (b.__name__, b.__qualname__, b.__wrapped__) == ("bagel", "bagel", bagel)
    assert "PteraFunction bagel" in repr(b)


def test_a_failed_call_does_not_leak_its_state_into_the_next_one():
    b = bagel.new(z=5)
    with pytest.raises(TypeError):
        b(1, 2, 3)  # too many arguments: the body never ran
    with pytest.raises(PteraNameError):
        bagel(1, 2)  # a direct call has no z


def test_each_call_gets_fresh_collections_of_the_first_kind_named():
    @ptera
    def sq(x):
        y = x * x
        return y

    def y(y):
        return y + 1

    def z(y):
        return -y

    obj = sq.new().clone(return_object=True).using(y="sq > y")
    obj.on("sq > y")(y)
    obj.on("sq > y")(z)
    first, second = obj(2), obj(3)
    # "y" is a using collection first (an `on` of the same name adds to it), "z" a list.
    assert type(first.y).__name__ == "Collection" and type(first.z) is list
    assert first.y[0]["y"].value == 4 and first.y[1:] == [5] and first.z == [-4]
    assert second.y[0]["y"].value == 9 and second.y[1:] == [10] and second.z == [-9]
    assert first.y is not second.y


def test_copies_of_an_object_share_its_code_and_deep_copies_copy_its_state():
    obj = square.new().using(q="square > rval")
    deep = copy.deepcopy(obj)
    assert deep(3).q.map("rval") == obj(3).q.map("rval") == [9]
    assert copy.copy(obj)(2).q.map("rval") == [4]
    with pytest.raises(TypeError, match="cannot be pickled .* pickle its state values"):
        pickle.dumps(obj)
