"""The probe mechanism per module call, against a forward hook (issue 18).

A tiny ``nn.Linear(4, 4)`` called ``CALLS`` times with a batch of 1, so the module's
own work is small and the instrumentation shows. Cases, interleaved, CPU time
(``process_time``):

* plain: nothing attached;
* forward hook: ``register_forward_hook(noop)``;
* probe, subscribe: ``probing("Linear > #value")`` with ``.subscribe(noop)``
  (a plain subscriber: fed directly, without reactivex);
* probe, map: the same with a giving operator chain, ``.map(fn).subscribe(noop)``.

Prints, per case, the microseconds per call above plain (median over rounds of the
difference to plain in the same round, and the difference of the minimums), and the
ratio of the probe's extra cost to the hook's (target for ``.subscribe``: <= 1). Then the delivery alone: microseconds per value pushed into
a probe with one plain subscriber, one ``on_next=`` subscriber, and one subscriber
behind ``.map``.
"""

import os
import statistics
import time

import torch
from timing import interleave
from torch.nn import Linear

from ptera import probing

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "21"))
CALLS = int(os.environ.get("BENCH_CALLS", "5000"))
VALUES = 20000


def noop(*args):
    return None


def same(x):
    return x


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lin = Linear(4, 4)
    x = torch.randn(1, 4)
    env = {"Linear": Linear}

    def calls():
        for _ in range(CALLS):
            lin(x)

    def plain():
        calls()

    def hook():
        handle = lin.register_forward_hook(noop)
        try:
            calls()
        finally:
            handle.remove()

    def probe_subscribe():
        with probing("Linear > #value", env=env) as p:
            p.subscribe(noop)
            calls()

    def probe_map():
        with probing("Linear > #value", env=env) as p:
            p.map(same).subscribe(noop)
            calls()

    times = interleave(
        {
            "plain": plain,
            "forward hook": hook,
            "probe, .subscribe": probe_subscribe,
            "probe, .map(...).subscribe": probe_map,
        },
        ROUNDS,
        clock=time.process_time,
    )
    base = times["plain"]
    extra = {
        name: [(t - b) / CALLS * 1e6 for t, b in zip(ts, base)]
        for name, ts in times.items()
        if name != "plain"
    }
    print(
        f"Per module call: nn.Linear(4, 4), batch 1, {CALLS} calls, {ROUNDS} interleaved rounds,"
        " CPU time, 1 thread"
    )
    print(f"plain call: median {statistics.median(base) / CALLS * 1e6:.2f} us")
    print(f"{'case':28} {'us over plain: median (range)':>32} {'min - min':>10}")
    for name, us in extra.items():
        floor = (min(times[name]) - min(base)) / CALLS * 1e6
        print(
            f"{name:28} {statistics.median(us):14.2f} ({min(us):6.2f} .. {max(us):5.2f})"
            f" {floor:10.2f}"
        )
    hook_us = extra["forward hook"]
    hook_floor = min(times["forward hook"]) - min(base)
    for name in ("probe, .subscribe", "probe, .map(...).subscribe"):
        ratios = [p / h for p, h in zip(extra[name], hook_us)]
        floor = (min(times[name]) - min(base)) / hook_floor
        print(
            f"{name} / forward hook (extra cost): median {statistics.median(ratios):.2f},"
            f" of minimums {floor:.2f}"
        )
    delivery()


def delivery():
    """Microseconds per value fed to a probe (its rule's emit), by subscriber shape."""
    data = {"value": 1}

    def run(subscribe):
        def case():
            with probing("Linear > #value", env={"Linear": Linear}) as p:
                subscribe(p)
                rule = p._rules[0]
                rule.emit(data)  # a lone subscriber's feed becomes the function itself
                emit = rule.emit  # what the engine calls for each match from now on
                for _ in range(VALUES):
                    emit(data)

        return case

    times = interleave(
        {
            "nothing subscribed": run(lambda p: None),
            "one plain subscriber": run(lambda p: p.subscribe(noop)),
            "one on_next= subscriber": run(lambda p: p.subscribe(on_next=noop)),
            "one .map(...) subscriber": run(lambda p: p.map(same).subscribe(noop)),
        },
        ROUNDS,
        clock=time.process_time,
    )
    print(f"\nDelivery per value (the rule's emit, {VALUES} values), us, median and range:")
    for name, ts in times.items():
        us = [t / VALUES * 1e6 for t in ts]
        print(f"{name:30} {statistics.median(us):6.2f} {min(us):7.2f} .. {max(us):5.2f}")


if __name__ == "__main__":
    main()
