"""A compiled MLP with and without an active probe (issue 20 item 1).

While any overlay is active, compiled regions run eagerly (``ptera/compiled.py``),
so a probe on a compiled model costs what eager mode costs, plus the probe. This
prints each case as a ratio to the compiled model with nothing active, measured in
interleaved rounds. ``python benchmarks/bench_compile.py [backend]`` (default
``inductor``; ``aot_eager`` needs no C++ compiler).
"""

import statistics
import sys

import torch
from timing import interleave, report
from torch import nn

from ptera import probing, tooled

BATCH, WIDTH, ROUNDS, CALLS = 64, 256, 31, 20  # CALLS forwards per timed run


@tooled
def unrelated(x):
    y = x + 1
    return y


def main(backend: str) -> None:
    torch.set_num_threads(1)  # a shared 2-core machine: threads only add noise
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 10)
    )
    compiled = torch.compile(net, backend=backend)
    x = torch.randn(BATCH, WIDTH)

    def probed(model, selector):
        def run():
            with probing(selector) as probe:
                probe.subscribe(lambda _: None)
                with torch.no_grad():
                    for _ in range(CALLS):
                        model(x)

        return run

    def plain(model):
        def run():
            with torch.no_grad():
                for _ in range(CALLS):
                    model(x)

        return run

    cases = {
        "compiled, nothing active": plain(compiled),
        "eager, nothing active": plain(net),
        "compiled, probe on another fn": probed(compiled, "unrelated > y"),
        "compiled, probe Linear > #value": probed(compiled, "Linear > #value"),
        "eager, probe Linear > #value": probed(net, "Linear > #value"),
    }
    times = interleave(cases, ROUNDS)
    report(
        f"compiled MLP ({backend}, batch {BATCH}, width {WIDTH}, {ROUNDS} rounds)",
        times,
        "compiled, nothing active",
        {},
    )
    base = times["compiled, nothing active"]
    spread = [t / b for t, b in zip(times["compiled, probe Linear > #value"], base)]
    print(f"probe on compiled: ratio range {min(spread):.2f}-{max(spread):.2f}")
    print(f"median compiled forward: {statistics.median(base) / CALLS * 1e6:.0f} us")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "inductor")
