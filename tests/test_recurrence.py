"""Recurrence: storage by step, reported with its key, bounded by a window."""

import pytest

from ptera import Recurrence, probing, ptera


@ptera
def fib(n):
    f = Recurrence(window=2)
    f[0] = 0
    f[1] = 1
    for i in range(2, n + 1):
        f[i] = f[i - 1] + f[i - 2]
    return f[n]


@pytest.mark.parametrize(
    "selector, names, expected",
    [
        ("fib > f[5] as f", ("f",), [5]),
        ("fib > f[$i] as f", ("i", "f"), [(0, 0), (1, 1), (2, 1), (3, 2), (4, 3), (5, 5)]),
        ("fib(n) > f[2] as f", ("n", "f"), [(5, 1)]),
    ],
)
def test_each_step_is_reported_with_its_key(selector, names, expected):
    assert fib.using(q=selector)(5).q.map(*names) == expected


def _cell(x, h, c):
    c = c + x
    return h + c, c


@ptera
def two_states(xs):
    h, c = Recurrence(), Recurrence(window=1)
    h[0], c[0] = 0, 0
    for i, x in enumerate(xs):
        h[i + 1], c[i + 1] = _cell(x, h[i], c[i])
    return h[len(xs)]


@pytest.mark.parametrize(
    "selector, names, expected",
    [
        ("two_states > h[$i] as h", ("i", "h"), [(0, 0), (1, 1), (2, 4), (3, 10)]),
        ("two_states > c[3] as c", ("c",), [6]),
        ("two_states(xs) > h[1] as h", ("xs", "h"), [([1, 2, 3], 1)]),
    ],
)
def test_steps_set_by_unpacking_are_reported_with_their_keys(selector, names, expected):
    assert two_states.using(q=selector)([1, 2, 3]).q.map(*names) == expected


def test_window_bounds_memory_and_says_why_a_step_is_gone():
    h = Recurrence(window=2)
    for i in range(5):
        h[i] = i * i
    assert list(h) == [3, 4] and len(h) == 2 and 4 in h and 0 not in h
    with pytest.raises(KeyError, match="keeps the last 2 steps"):
        h[0]
    assert fib(30) == 832040


def test_unbounded_recurrence_and_errors():
    h = Recurrence()
    h["a"] = 1
    h["a"] = 2
    assert dict(h.items()) == {"a": 2}
    with pytest.raises(KeyError, match="step 'b' was never set"):
        h["b"]
    with pytest.raises(ValueError, match="at least 1"):
        Recurrence(window=0)


@pytest.mark.parametrize("error", [IndexError, KeyError, LookupError])
@pytest.mark.parametrize("read", [lambda h: h[0], lambda h: h[99]])  # dropped, never set
def test_a_missing_step_is_both_an_index_error_and_a_key_error(error, read):
    h = Recurrence(2)
    for i in range(4):
        h[i] = i + 1
    with pytest.raises(error):
        read(h)


def test_missing_step_message_is_a_plain_sentence():
    with pytest.raises(IndexError) as info:
        Recurrence(1)[3]
    assert str(info.value) == "step 3 was never set (set: none)"


@pytest.mark.parametrize(
    "window, text",
    [(2, "Recurrence(2, {2: 3, 3: 4})"), (None, "Recurrence({0: 1, 1: 2, 2: 3, 3: 4})")],
)
def test_window_is_positional_and_printed_so(window, text):
    h = Recurrence(window)
    for i in range(4):
        h[i] = i + 1
    assert repr(h) == text


@ptera
def inner(v):
    w = v + 0.5
    return w


@ptera
def keyed_layer(inp):
    out = inner(inp) * 2
    return out


@ptera
def keyed_chain(inp):
    layers: list

    h = Recurrence()
    h[0] = inp
    for i, lay in enumerate(layers):
        h[i + 1] = lay(h[i])
    extra = layers[0](100.0)  # a plain call after the keyed ones: no key
    return h[len(layers)] + extra


def test_the_key_of_a_keyed_call_goes_to_that_call_only():
    net = keyed_chain.new(layers=[keyed_layer, keyed_layer])
    with probing("keyed_layer[$k] > inp").values() as seen:
        net(1.0)
    assert [(d.get("k"), d["inp"]) for d in seen] == [(1, 1.0), (2, 3.0), (None, 100.0)]
    with probing("keyed_layer[2] > inp").values() as second:
        net(1.0)
    assert second == [{"inp": 3.0}]
    with probing("inner[$k] > v").values() as nested:  # called inside the keyed call
        net(1.0)
    assert nested == [{"v": 1.0}, {"v": 3.0}, {"v": 100.0}]


def plain_caller(v):  # undecorated: transparent between a keyed call and its callee
    return inner(v)


@ptera
def keyed_through_plain(inp):
    h = Recurrence()
    h[3] = plain_caller(inp)
    return h[3]


def test_a_keyed_call_through_an_undecorated_function_keeps_its_key_whatever_ran_before():
    with probing("keyed_through_plain > inner[3] > v").values() as first:
        keyed_through_plain(1.0)
    with probing("plain_caller > v"):  # an unrelated probe, already ended
        pass
    with probing("keyed_through_plain > inner[3] > v").values() as again:
        keyed_through_plain(1.0)
    assert first == again == [{"v": 1.0}]


@ptera
def keyed_inside(v):
    m = Recurrence()
    m[0] = inner(v)  # a keyed call of its own, made while evaluating an argument
    return m[0]


@ptera
def keyed_with_calls_in_arguments(v):
    h = Recurrence()
    h[7] = keyed_layer(inner(v) + keyed_inside(v))
    return h[7]


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("keyed_with_calls_in_arguments > keyed_layer[7] > inp", [{"inp": 3.0}]),
        ("keyed_with_calls_in_arguments > inner[7] > v", []),  # an argument's call
        ("keyed_inside > inner[0] > v", [{"v": 1.0}]),
    ],
)
def test_calls_evaluating_a_keyed_calls_arguments_are_not_the_keyed_call(selector, expected):
    with probing(selector).values() as seen:
        keyed_with_calls_in_arguments(1.0)
    assert seen == expected


@ptera
def annotated_step(inp):
    h = {}
    h[4]: float = keyed_layer(inp)
    h[5], h[6] = keyed_layer(inp), 0.0  # one call, two keys: no key
    return h[4]


def test_an_annotated_item_assignment_keys_its_call_and_an_unpacking_does_not():
    with probing("annotated_step > keyed_layer[$k] > inp").values() as seen:
        annotated_step(2.0)
    assert seen == [{"k": 4, "inp": 2.0}, {"inp": 2.0}]
