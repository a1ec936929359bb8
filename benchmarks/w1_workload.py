"""The W1 workload, shared by ptera and the ptera 1.4.1 peer run in its own venv.

Usage: python w1_workload.py REPEATS  -> prints a JSON dict of case -> list of seconds.
Works with any ptera that has `tooled` and `probing` (ours, or 1.4.1).
"""

import json
import sys
import time

from ptera import probing, tooled

N = 100_000


def plain(x):
    a = x + 1
    b = a * 2
    y = 0
    for i in range(3):
        y = y + b + i
    return y


def f(x):
    a = x + 1
    b = a * 2
    y = 0
    for i in range(3):
        y = y + b + i
    return y


def other(x):
    q = x + 1
    return q


f = tooled(f)
other = tooled(other)


def loop(fn):
    t = time.perf_counter()
    for i in range(N):
        fn(i)
    return time.perf_counter() - t


def noop(_):
    pass


def probed(selector):
    def run():
        with probing(selector) as probe:
            probe.subscribe(noop)
            return loop(f)

    return run


def enter_exit():
    t = time.perf_counter()
    for _ in range(2000):
        with probing("f > b"):
            pass
    # Scaled so that the number is microseconds per cycle when divided by N/1e6.
    return (time.perf_counter() - t) / 2000 * N


CASES = {
    "plain": lambda: loop(plain),
    "tooled, idle": lambda: loop(f),
    "probe on another function": lambda: _with_other(),
    "probe on b (1 value/call)": probed("f > b"),
    "probe on y (4 values/call)": probed("f > y"),
    "probe on all (f > $v)": probed("f > $v"),
    "enter + exit of probing": enter_exit,
}


def _with_other():
    with probing("other > q") as probe:
        probe.subscribe(noop)
        return loop(f)


def main(repeats: int) -> dict:
    results = {name: [] for name in CASES}
    for _ in range(repeats):  # interleaved: each repeat runs every case once
        for name, case in CASES.items():
            results[name].append(case())
    return results


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)))
