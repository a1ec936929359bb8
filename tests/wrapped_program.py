"""Functions behind decorators, probed by import path in tests/test_compat_probe.py."""

import functools


def with_wraps(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        calls = 1
        return fn(*args, **kwargs) + calls - 1

    return wrapper


def bare_closure(fn):
    def inner(*args):
        extra = 0
        return fn(*args) + extra

    return inner


@with_wraps
def wrapped(q):
    a = q + 1
    return a


@bare_closure
def hidden(q):
    b = q * 2
    return b


@with_wraps
@bare_closure
def both(q):
    c = q - 1
    return c
