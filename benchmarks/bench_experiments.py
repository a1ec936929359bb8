"""Experiments: a LeNet on digits (1x8x8), 30 trials x 3 epochs.

The grid is the seed's first example at a smaller scale: 3 weight seeds x
(1 control + 3 epsilons x 3 noise seeds) = 30 trials.

1. serial (in this process) vs ``processes=2``: wall time and speed-up.
2. The experiment machinery per trial (store, checkpoints, hashing and seeding),
   timed inside the serial run, as a fraction of the trial's time; and the whole
   serial run against the same 30 trainings by a bare ``Learner`` (no store, no
   checkpoints, no metrics, no seeds).
3. Rerunning the finished experiment (a new ``Experiment`` on the same store).
"""

import functools
import os
import shutil
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from ptera.lab import DataLoaders, Learner
from ptera.lab.data import digits
from ptera.lab.experiments import Experiment, PerturbWeights, ReinitWeights, config, store, trial
from ptera.lab.models import Lenet5

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
EPOCHS = 3
DATA = digits()
SETTINGS = dict(lr=0.05, hyperparameters={"momentum": 0.9}, batch_size=32)


def experiment(path):
    return Experiment(
        model=Lenet5(image_size=8),
        datasets=DATA,
        variations=[ReinitWeights.make_variations(seed_weights=range(3))],
        interventions=[
            PerturbWeights.make_variations(epsilon=(0.001, 0.01, 0.1), seed_weights=range(3))
        ],
        store=path,
        **SETTINGS,
    )


def bare():
    """The same 30 trainings with a bare Learner: the floor for the serial run."""
    torch.set_num_threads(1)
    try:
        for _ in range(30):
            model = Lenet5(image_size=8)
            dls = DataLoaders(
                DataLoader(DATA[0], 32, shuffle=True), DataLoader(DATA[1], trial.EVAL_BATCH)
            )
            opt = functools.partial(torch.optim.SGD, momentum=0.9)
            Learner(model, dls, torch.nn.functional.cross_entropy, lr=0.05, opt_func=opt).fit(
                EPOCHS
            )
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


MACHINERY = [
    (store.Store, "register"),
    (store.Store, "epochs"),
    (store.Store, "save_checkpoint"),
    (store.Store, "commit_epoch"),
    (store.Store, "load_checkpoint"),
    (store.Store, "claim"),
    (store.Store, "release"),
    (store.Store, "remove_leftovers"),
    (store.Store, "record_experiment"),
    (config, "trial_hash"),
    (config, "derive_seed"),
    (config, "data_fingerprint"),
    (config, "model_identity"),
]


def timed_machinery():
    """Wrap the store, hashing and seeding functions with timers; returns the tally."""
    spent = [0.0]
    undo = []
    for owner, name in MACHINERY:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(owner, name, wrapper)
        undo.append((owner, name, original))
    for module in (trial,):  # names imported by value
        for name in ("derive_seed",):
            undo.append((module, name, getattr(module, name)))
            setattr(module, name, config.derive_seed)
    return spent, undo


def main():
    root = tempfile.mkdtemp()
    serial, parallel, bare_t, rerun, overhead = [], [], [], [], []
    try:
        for r in range(ROUNDS):
            path = f"{root}/serial-{r}.db"
            spent, undo = timed_machinery()
            start = time.perf_counter()
            exp = experiment(path)
            exp.run(EPOCHS)
            serial.append(time.perf_counter() - start)
            for owner, name, original in undo:
                setattr(owner, name, original)
            assert len(exp.trained) == 30
            overhead.append(spent[0] / serial[-1])

            start = time.perf_counter()
            again = experiment(path)
            again.run(EPOCHS)
            rerun.append(time.perf_counter() - start)
            assert again.trained == []

            start = time.perf_counter()
            exp = experiment(f"{root}/processes-{r}.db")
            exp.run(EPOCHS, processes=2)
            parallel.append(time.perf_counter() - start)
            assert len(exp.trained) == 30

            start = time.perf_counter()
            bare()
            bare_t.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = statistics.median
    speedups = [s / p for s, p in zip(serial, parallel)]
    vs_bare = [s / b for s, b in zip(serial, bare_t)]
    print(f"experiments: LeNet on digits, 30 trials x {EPOCHS} epochs, {ROUNDS} rounds (medians)")
    print(f"{'case':44} {'median':>10} {'target':>14}")
    print(f"{'serial (trials single-threaded)':44} {med(serial):9.1f}s {'< 120 s':>14}")
    print(f"{'processes=2':44} {med(parallel):9.1f}s")
    print(f"{'speed-up of processes=2':44} {med(speedups):9.2f}x {'>= 1.7x':>14}")
    print(f"{'machinery (store, checkpoints, hashing)':44} {med(overhead):9.1%} {'<= 5%':>14}")
    print(f"{'serial / bare Learner (incl. metrics, evals)':44} {med(vs_bare):9.2f}x")
    print(f"{'rerun of the finished experiment':44} {med(rerun):9.2f}s {'< 2 s':>14}")


if __name__ == "__main__":
    main()
