"""Small programs whose behaviour must not change when instrumented or probed.

Each ``p_*`` function takes no arguments and returns a value (or raises). The
tests run each one plain, instrumented and idle, and with probes on every point.
"""

import asyncio
import contextlib

COUNTER = 0


def p_assign():
    a = 1
    b = a + 1
    return a, b


def p_tuple_unpack():
    a, b = 1, 2
    (c, d), e = (3, 4), 5
    return a, b, c, d, e


def p_star_unpack():
    first, *rest = [1, 2, 3, 4]
    *init, last = "abc"
    return first, rest, init, last


def p_chained_assign():
    a = b = [1]
    b.append(2)
    return a, b


def p_augmented():
    x = 1
    x += 2
    x *= 3
    s = "a"
    s += "b"
    return x, s


def p_annotated():
    x: int = 3
    y: list[int] = [x]
    return x, y


def p_for_else():
    out = []
    for i in range(3):
        out.append(i)
    else:
        out.append("done")
    return out


def p_while():
    n, steps = 10, 0
    while n > 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def p_break_continue():
    out = []
    for i in range(10):
        if i % 2:
            continue
        if i > 6:
            break
        out.append(i)
    return out


def p_nested_loops():
    total = 0
    for i in range(3):
        for j in range(i):
            total += i * j
    return total


def p_comprehensions():
    xs = [i * i for i in range(5)]
    d = {k: v for k, v in zip("abc", xs)}
    s = sum(x for x in xs if x % 2)
    return xs, d, s


def p_walrus():
    data = [1, 5, 9]
    if (n := len(data)) > 2:
        big = n
    else:
        big = 0
    found = [y for x in data if (y := x * 2) > 4]
    return n, big, found, y


def p_with():
    events = []

    @contextlib.contextmanager
    def cm(tag):
        events.append(("in", tag))
        yield tag.upper()
        events.append(("out", tag))

    with cm("a") as a, cm("b") as b:
        events.append((a, b))
    return events


def p_except_as():
    try:
        1 / 0
    except ZeroDivisionError as err:
        kind = type(err).__name__
    return kind


def p_finally_return():
    log = []
    try:
        log.append(1)
        return log
    finally:
        log.append(2)


def p_raises():
    x = 1
    raise ValueError(f"bad x={x}")


def p_caught_in_loop():
    caught = []
    for i in range(4):
        try:
            if i % 2:
                raise KeyError(i)
        except KeyError as e:
            caught.append(e.args[0])
    return caught


def _gen(n):
    for i in range(n):
        y = i * 10
        yield y


def p_generator():
    return list(_gen(4))


def _echo():
    total = 0
    while True:
        got = yield total
        if got is None:
            return total
        total += got


def p_generator_send():
    g = _echo()
    next(g)
    out = [g.send(1), g.send(2)]
    try:
        g.send(None)
    except StopIteration as stop:
        out.append(stop.value)
    return out


def p_yield_from():
    def inner():
        yield 1
        yield 2
        return 3

    def outer():
        r = yield from inner()
        yield r

    return list(outer())


async def _acoro(x):
    await asyncio.sleep(0)
    y = x + 1
    return y


def p_async():
    return asyncio.run(_acoro(1))


async def _agen():
    for i in range(3):
        await asyncio.sleep(0)
        yield i


def p_async_gen():
    async def main():
        return [x async for x in _agen()]

    return asyncio.run(main())


def _make_adder(k):
    def add(x):
        return x + k

    return add


def p_closure():
    return _make_adder(5)(1)


def p_nonlocal():
    count = 0

    def bump():
        nonlocal count
        count += 1

    bump()
    bump()
    return count


def p_global():
    global COUNTER
    COUNTER = COUNTER + 1
    return COUNTER > 0


def _fib(n):
    if n < 2:
        r = n
    else:
        r = _fib(n - 1) + _fib(n - 2)
    return r


def p_recursion():
    return _fib(10)


def _kwonly(a, *, b=2, c):
    s = a + b + c
    return s


def p_keyword_only():
    return _kwonly(1, c=3), _kwonly(1, b=0, c=0)


def _star(*args, **kwargs):
    n = len(args) + len(kwargs)
    return n, args, sorted(kwargs)


def p_star_args():
    return _star(1, 2, x=3)


def _defaults(a, b=[]):  # noqa: B006 - the shared default is the point
    b.append(a)
    return len(b)


def p_default_args():
    return _defaults(1, []), _defaults(2, [0])


def _posonly(a, b, /, c):
    return a - b + c


def p_positional_only():
    return _posonly(5, 3, c=1)


def p_subscript_order():
    log = []

    def note(tag, value):
        log.append(tag)
        return value

    h = {}
    note("h", h)[note("k", "key")] = note("v", 1)
    h["a"] = h["key"] + 1
    return log, h


def p_attribute_assign():
    class Box:
        pass

    b = Box()
    b.x = 1
    b.x += 1
    return b.x


def p_class_body():
    class K:
        attr = 3

        def method(self):
            return self.attr * 2

    return K().method()


def p_lambda():
    f = lambda x: x * 3  # noqa: E731
    return f(2)


def p_nested_def():
    def helper(v):
        w = v + 1
        return w

    return helper(1)


def p_del():
    x = 1
    y = x
    del x
    try:
        x  # noqa: F821
    except UnboundLocalError:
        return y


def p_import():
    import math as m
    from os import path

    return m.sqrt(16), path.join("a", "b")


class _Base:
    def value(self):
        return 1


class _Child(_Base):
    def value(self):
        v = super().value()
        return v + 1


def p_super():
    return _Child().value()


class _Private:
    def __init__(self):
        self.__hidden = 5

    def reveal(self):
        h = self.__hidden
        return h


def p_name_mangling():
    return _Private().reveal()


def p_match():
    out = []
    for value in [1, (2, 3), {"k": 4}, "s"]:
        match value:
            case 1:
                out.append("one")
            case (a, b):
                out.append(a + b)
            case {"k": v}:
                out.append(v)
            case _:
                out.append("other")
    return out


def p_assert_fails():
    x = 0
    assert x, "x must be true"


def p_implicit_none():
    x = 1
    if x > 5:
        return x


def p_multiple_returns():
    results = []
    for v in (1, -1, 0):
        if v > 0:
            results.append("pos")
        elif v < 0:
            results.append("neg")
        else:
            results.append("zero")
    return results


def p_slice_assign():
    xs = [1, 2, 3, 4]
    xs[1:3] = [9]
    return xs


class Recording(dict):
    """A dict that logs each item read and write, to compare a program's own steps."""

    def __init__(self, log, tag):
        super().__init__()
        self.log, self.tag = log, tag

    def __getitem__(self, key):
        self.log.append((self.tag, "get", key))
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self.log.append((self.tag, "set", key, value))
        super().__setitem__(key, value)


def p_item_targets():
    log, count = [], [0]

    def key(k):
        count[0] += 1
        log.append(("key", k))
        return k

    h, g = Recording(log, "h"), Recording(log, "g")
    h[key(0)], h[key(1)] = 1, 2
    (h[key("a")], x) = (h[key(0)], 3)
    h[key(2)], *rest = [4, 5, 6]
    first, *h[key("rest")] = "xyz"
    (h[key(3)], (g[key(4)], y)) = (7, (8, 9))
    [i, h[key(i)]] = (5, 10)  # the key reads the `i` just stored
    h[key(6)] = g[key(7)] = x = 11
    x = h[key(8)] = 12
    h[key(9)]: int = 13
    for i, h[key(i * 100)] in enumerate("ab"):
        g[key("loop")] = i

    @contextlib.contextmanager
    def manager(tag):
        log.append(("enter", tag))
        yield tag
        log.append(("exit", tag))

    with manager(1) as a, manager(2) as h[key("with")], manager(3), manager(4) as g[key(a)]:
        log.append("body")
    try:
        (h[key(20)], (h[key(21)], y)) = (15, (16,))  # the inner unpacking fails
    except ValueError as err:
        log.append(str(err))
    return log, count[0], dict(h), dict(g), x, y, rest, first


def p_docstring():
    """A docstring that must survive."""
    return p_docstring.__doc__


def p_fstring_and_format():
    name, value = "x", 3.14159
    s = f"{name}={value:.2f}"
    return s


PROGRAMS = {name: fn for name, fn in sorted(globals().items()) if name.startswith("p_")}
HELPERS = [
    _gen,
    _echo,
    _acoro,
    _agen,
    _make_adder,
    _fib,
    _kwonly,
    _star,
    _defaults,
    _posonly,
    _Child.value,
    _Private.reveal,
    _Private.__init__,
]
