"""The Workbench's costs: tracking overhead while training, and the time of one surgery.

1. One epoch of a small CNN on digits (1400 samples, Adam) through the
   Workbench with NeuronStats (probes on 4 layers) and the sample tables on, vs
   the same epoch as a plain loop (same batches, by tensor indexing), and vs the
   Workbench with NeuronStats removed (the Learner and the sample tables alone).
   Target: <= 1.15x the plain loop. Timed twice: wall clock (``perf_counter``) and
   this process's CPU time (``process_time``), which the other programs on a busy
   machine disturb less. At the Workbench's default batch size (256, the seed's)
   and at 64, where the fixed cost per step weighs four times more.
2. Each surgery call (prune, add_neurons, reinit_neurons) on a 10-layer CNN
   (9 Conv2d + BatchNorm + Linear) with Adam state. Target: < 50 ms a call.
"""

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from timing import interleave, report
from torch import nn
from torch.utils.data import TensorDataset

from ptera.lab import Workbench

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from workbench import DigitsModel  # noqa: E402 -- the example's CNN (the seed's model)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "11"))
BATCHES = (256, 64)


def data():
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(d.target)
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def tracking(batch):
    train, valid = data()
    x, y = train.tensors
    torch.manual_seed(0)
    model = DigitsModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(0)

    def plain_epoch():
        model.train()
        for ids in torch.randperm(len(y), generator=order).split(batch):
            loss = F.cross_entropy(model(x[ids]), y[ids])
            loss.backward()
            opt.step()
            opt.zero_grad()

    torch.manual_seed(0)
    full = Workbench(DigitsModel(), torch.optim.Adam, train, valid, batch_size=batch)
    torch.manual_seed(0)
    tables_only = Workbench(DigitsModel(), torch.optim.Adam, train, valid, batch_size=batch)
    tables_only.learner.remove_cb(tables_only.stats)
    steps = len(full.train_loader)
    cases = {
        "plain loop": plain_epoch,
        "Workbench, sample tables only": lambda: tables_only.train_n_steps(steps),
        "Workbench, NeuronStats + tables": lambda: full.train_n_steps(steps),
    }
    title = f"One epoch, CNN on digits ({steps} steps of {batch}), 1 thread, {ROUNDS} rounds"
    target = {"Workbench, NeuronStats + tables": "<=1.15"}
    report(title + ", wall clock", interleave(cases, ROUNDS), "plain loop", target)
    cpu = interleave(cases, ROUNDS, clock=time.process_time)
    report(title + ", process CPU time", cpu, "plain loop", target)


class TenLayers(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(1 if i == 0 else width, width, 3, padding=1) for i in range(9)]
        )
        self.norm = nn.BatchNorm2d(width)
        self.head = nn.Linear(width * 8 * 8, 10)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i == 4:
                x = self.norm(x)
            x = F.relu(x)
        return self.head(torch.flatten(x, 1))


def surgery():
    train, valid = data()
    torch.manual_seed(0)
    wb = Workbench(TenLayers(), torch.optim.Adam, train, valid, batch_size=64)
    wb.train_n_steps(1)  # Adam state for every parameter
    start = time.perf_counter()
    wb.prune(0, [0])  # the first call traces the model with torch.fx
    first = time.perf_counter() - start
    calls = {"prune": [], "add_neurons": [], "reinit_neurons": []}
    for _ in range(ROUNDS):
        for layer in range(9):
            for name, call, args in (
                ("add_neurons", wb.add_neurons, (layer, 2)),
                ("prune", wb.prune, (layer, [0, 1])),
                ("reinit_neurons", wb.reinit_neurons, (layer, [0, 1])),
            ):
                start = time.perf_counter()
                call(*args)
                calls[name].append(time.perf_counter() - start)
    wb.train_n_steps(1)  # still trainable
    print(f"Surgery on a 10-layer CNN with Adam state ({ROUNDS} x 9 layers per operation)")
    print(f"first call (includes the torch.fx trace): {first * 1e3:.1f} ms")
    print(f"{'operation':16} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'target':>8}")
    for name, ts in calls.items():
        print(
            f"{name:16} {statistics.median(ts) * 1e3:10.2f} {min(ts) * 1e3:8.2f}"
            f" {max(ts) * 1e3:8.2f} {'<50':>8}"
        )


def main():
    torch.set_num_threads(1)
    for batch in BATCHES:
        tracking(batch)
        print()
    surgery()


if __name__ == "__main__":
    main()
