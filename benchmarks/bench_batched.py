"""Batched trials: 16 and 64 LeNet trials on digits (1x8x8), 3 epochs, batched vs serial.

The grid: ``k`` weight seeds x (1 control + 3 epsilons of ``PerturbWeights``), so
``4k`` trials that differ only in their initial weights: one group per 64 trials.
Both executors run in this process, single-threaded, on the same device
(``BENCH_DEVICE``, default ``cpu``), writing a fresh store each round; rounds
interleave the two. Printed: wall time, speed-up (serial / batched, per round:
median and range) and per-trial throughput (trials x epochs per minute).
"""

import os
import shutil
import statistics
import tempfile
import time

from ptera.lab.data import digits
from ptera.lab.experiments import BatchedExecutor, Experiment, PerturbWeights, ReinitWeights
from ptera.lab.models import Lenet5

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
EPOCHS = 3
DATA = digits()
TARGETS = {16: ">= 1.3x (CPU)", 64: ">= 10x (GPU)"}


def experiment(path, seeds):
    return Experiment(
        model=Lenet5(image_size=8),
        datasets=DATA,
        variations=[ReinitWeights.make_variations(seed_weights=range(seeds))],
        interventions=[PerturbWeights.make_variations(epsilon=(0.001, 0.01, 0.1))],
        store=path,
        lr=0.05,
        hyperparameters={"momentum": 0.9},
        batch_size=32,
        device=DEVICE,
    )


def timed(path, seeds, executor):
    exp = experiment(path, seeds)
    start = time.perf_counter()
    exp.run(EPOCHS, executor=executor, verbose=False)
    elapsed = time.perf_counter() - start
    assert len(exp.trained) == 4 * seeds
    return elapsed


def main():
    root = tempfile.mkdtemp()
    print(f"batched trials: LeNet on digits, {EPOCHS} epochs, {DEVICE}, {ROUNDS} rounds")
    print(
        f"{'trials':>6} {'serial s':>9} {'batched s':>10} {'speed-up (range)':>22}"
        f" {'trial-epochs/min serial':>24} {'batched':>8} {'target':>14}"
    )
    try:
        for seeds in (4, 16):
            n = 4 * seeds
            serial, batched = [], []
            for r in range(ROUNDS):
                serial.append(timed(f"{root}/s-{n}-{r}.db", seeds, "serial"))
                batched.append(timed(f"{root}/b-{n}-{r}.db", seeds, BatchedExecutor(64)))
            ratios = sorted(s / b for s, b in zip(serial, batched))
            med = statistics.median
            rate = [n * EPOCHS * 60 / med(t) for t in (serial, batched)]
            print(
                f"{n:>6} {med(serial):9.1f} {med(batched):10.1f}"
                f" {med(ratios):9.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"
                f" {rate[0]:24.0f} {rate[1]:8.0f} {TARGETS[n]:>14}",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
