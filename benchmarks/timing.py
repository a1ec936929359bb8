"""Interleaved timing: every case runs once per round, so drift hits all cases alike."""

import statistics
import time
from collections.abc import Callable


def interleave(
    cases: dict[str, Callable[[], None]],
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per run of each case, ``rounds`` runs each, cases interleaved.

    ``clock=time.process_time`` counts only this process's CPU time: steadier on a
    shared machine, for single-threaded cases.
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm up: code variants, allocator, caches
    for _ in range(rounds):
        for name, fn in cases.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def report(title: str, times: dict[str, list[float]], base: str, targets: dict) -> None:
    """Print min and median of each case as a ratio to ``base`` of the same round."""
    ratios = {name: [t / b for t, b in zip(ts, times[base])] for name, ts in times.items()}
    print(title)
    print(f"{'case':34} {'median ms':>10} {'min ratio':>10} {'median ratio':>13} {'target':>8}")
    for name, rs in ratios.items():
        target = targets.get(name, "")
        print(
            f"{name:34} {statistics.median(times[name]) * 1e3:10.1f} {min(rs):10.3f}"
            f" {statistics.median(rs):13.3f} {target:>8}"
        )
