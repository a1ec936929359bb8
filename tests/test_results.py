"""Results: listeners called with their captures by parameter name."""

import pytest

from ptera import ptera
from ptera.capture import Capture
from ptera.results import call_with, listener_call


def one(x):
    return ("one", x)


def one_default(x=5):
    return ("default", x)


def two(x, y):
    return ("two", x, y)


def var_kw(**kw):
    return ("kw", sorted(kw.items()))


def bound_one(self, x):
    return ("bound", x)


class Holder:
    method = bound_one


@pytest.mark.parametrize("fn", [one, one_default, two, var_kw, Holder().method])
@pytest.mark.parametrize("data", [{"x": 1}, {"x": 1, "y": 2}, {"x": [3, 4], "z": 0}, {"y": 2}, {}])
def test_listener_call_gives_what_call_with_gives(fn, data):
    caps = {k: Capture(k, [k], [v]) for k, v in data.items()}
    try:
        want = call_with(fn, data)
    except TypeError as err:
        with pytest.raises(TypeError, match="wants") as got:
            listener_call(fn)(caps)
        assert str(got.value) == str(err)
    else:
        assert listener_call(fn)(caps) == want


@pytest.mark.parametrize("name", ["value", "fields", "activation", "field", "_hidden"])
def test_a_collection_cannot_take_a_name_the_result_uses(name):
    @ptera
    def twice(x):
        y = x * 2
        return y

    with pytest.raises(ValueError, match=f"'{name}' cannot name a collection"):
        twice.using(**{name: "twice > y"})

    def listener(y):
        return y

    listener.__name__ = name
    with pytest.raises(ValueError, match=f"on: '{name}' cannot name a collection"):
        twice.clone(return_object=True).on("twice > y")(listener)
