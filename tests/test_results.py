"""Results: listeners called with their captures by parameter name."""

import pytest

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
