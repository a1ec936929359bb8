"""The Learner's overhead: digits MLP, 5 epochs, ratios to hand-written loops.

1. `Learner` + `MetricsCB` (torchmetrics accuracy, the loss weighted by batch size,
   summed on the device once per epoch) vs a hand loop updating the same metric and
   summing the loss the same way.
2. `ActivationStats` (probes) vs the same statistics recorded by forward hooks
   (`HookStats`: same torch calls, same storage, equal numbers), both in hand loops
   and inside the same Learner (a callback that registers the hooks), so that the
   difference is the mechanism alone.
3. The stage dispatch alone: microseconds per batch that the Learner adds to a
   hand loop on a model too small to hide it (one Linear(4, 2), batches of 8
   made in advance).

Every case runs once per round, rounds interleaved (half of them in the reverse
order); ratios are per round, reported as median and range (min-max), and as the
ratio of the two cases' fastest runs (load on a shared machine only adds time). Times are the main thread's CPU time
(``time.thread_time``; torch runs on one thread here), not wall time: on a shared,
loaded machine wall time mostly measures the wait for a core.
"""

import os
import statistics
import time
from types import SimpleNamespace

import torch
from sklearn.datasets import load_digits
from timing import interleave
from torch import nn
from torch.utils.data import TensorDataset, random_split
from torchmetrics.classification import MulticlassAccuracy

from ptera.lab import ActivationStats, DataLoaders, Learner, MetricsCB

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "11"))
EPOCHS = 5
DATA = load_digits()


def setup():
    torch.manual_seed(0)
    ds = TensorDataset(torch.tensor(DATA.data, dtype=torch.float32) / 16, torch.tensor(DATA.target))
    train, valid = random_split(ds, [0.8, 0.2], generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return model, DataLoaders.from_datasets(train, valid, batch_size=64)


class HookStats:
    """The statistics ActivationStats records, recorded by forward hooks (the baseline).

    Written as one would by hand, as lean as it gets: each hook holds its layer's
    lists, and computes the same statistics with the same torch calls, in the same
    order, read with one ``.tolist()`` per flush, into the same ``stats`` layout
    (``tests/test_lab.py`` checks that the numbers are equal).
    """

    def __init__(self, model, bins=40, hist_max=10.0):
        self.stats = {"train": {}, "eval": {}}
        self.training = True
        self.slots = []
        self.handles = [
            m.register_forward_hook(self.hook(name, isinstance(m, nn.ReLU), bins, hist_max))
            for name, m in model.named_children()
        ]

    def hook(self, name, activation, bins, hist_max):
        slots = {}
        for training, split in ((True, "train"), (False, "eval")):
            series = {"mean": [], "std": [], "hist": []}
            slots[training] = ([], [], [] if activation else None, series["hist"])
            self.slots.append((series, slots[training]))
            self.stats[split][name] = series

        def record(module, inputs, out):
            mean, std, dead, hist = slots[self.training]
            x = out.detach()
            if x.dtype != torch.float32:
                x = x.float()
            mean.append(x.mean())
            std.append(x.std() if x.numel() > 1 else x.new_zeros(()))
            if dead is not None:
                dead.append((x <= 0).float().mean())
            hist.append(x.abs().histc(bins, 0, hist_max))

        return record

    def flush(self):
        pending = [
            (series, key, values)
            for series, slot in self.slots
            for key, values in zip(("mean", "std", "dead"), slot)
            if values
        ]
        if not pending:
            return
        numbers = torch.cat([torch.stack(values) for _, _, values in pending]).tolist()
        start = 0
        for series, key, values in pending:
            series.setdefault(key, []).extend(numbers[start : start + len(values)])
            start += len(values)
            values.clear()

    def remove(self):
        for h in self.handles:
            h.remove()


class HookStatsCB:
    """HookStats inside a Learner: hooks for the fit, flushed each epoch."""

    order = 5

    def before_fit(self, learn):
        self.stats = HookStats(learn.model)

    def before_epoch(self, learn):
        self.stats.training = learn.training

    def after_epoch(self, learn):
        self.stats.flush()

    def cleanup_fit(self, learn):
        self.stats.remove()


def hand_loop(model, dls, stats=None, epochs=EPOCHS, metric=True):
    """The Learner's work by hand; ``stats`` (``HookStatsCB()`` or ``ActivationStats()``)
    is driven through its callback methods with a stand-in for the learner."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = {t: MulticlassAccuracy(num_classes=10) for t in (True, False)}
    state = SimpleNamespace(model=model, training=True)
    if stats is not None:
        stats.before_fit(state)
    for _ in range(epochs):
        for train, loader in ((True, dls.train), (False, dls.valid)):
            state.training = train
            if isinstance(stats, HookStatsCB):
                stats.before_epoch(state)
            model.train(train)
            acc[train].reset()
            losses, sizes = [], []
            with torch.set_grad_enabled(train):
                for xb, yb in loader:
                    preds = model(xb)
                    loss = nn.functional.cross_entropy(preds, yb)
                    if train:
                        loss.backward()
                        opt.step()
                        opt.zero_grad()
                    if metric:
                        acc[train].update(preds.detach(), yb)
                    losses.append(loss.detach())
                    sizes.append(yb.shape[0])
            if metric:
                acc[train].compute().item()
            stacked = torch.stack(losses).float()
            (stacked @ torch.tensor(sizes, dtype=stacked.dtype) / sum(sizes)).item()
            if stats is not None:
                stats.after_epoch(state)
    if stats is not None:
        stats.cleanup_fit(state)


def tiny():
    # Batches made in advance: no DataLoader cost to hide the dispatch in.
    torch.manual_seed(0)
    xs, ys = torch.randn(512, 4), torch.randint(0, 2, (512,))
    batches = [(xs[i : i + 8], ys[i : i + 8]) for i in range(0, 512, 8)]
    return nn.Linear(4, 2), DataLoaders(batches, batches[:16])


def summary(name, ratios, target=""):
    ratios, fastest = ratios
    lo, med, hi = min(ratios), statistics.median(ratios), max(ratios)
    print(f"{name:52} {med:7.3f}   {lo:.3f}-{hi:.3f}  {fastest:8.3f}  {target}")


def main():
    torch.set_num_threads(1)

    def learner(*cbs, model_dls=None):
        model, dls = model_dls or setup()
        metrics = MetricsCB(MulticlassAccuracy(num_classes=10), print_epochs=False)
        Learner(model, dls, nn.functional.cross_entropy, cbs=[metrics, *cbs]).fit(EPOCHS)

    def tiny_learner():
        model, dls = tiny()
        Learner(model, dls, nn.functional.cross_entropy, cbs=[MetricsCB(print_epochs=False)]).fit(
            EPOCHS
        )

    cases = {
        "hand loop + metrics": lambda: hand_loop(*setup()),
        "Learner + MetricsCB": learner,
        "hand loop + metrics + hook stats": lambda: hand_loop(*setup(), HookStatsCB()),
        "hand loop + metrics + ActivationStats (probes)": lambda: hand_loop(
            *setup(), ActivationStats()
        ),
        "Learner + MetricsCB + hook stats": lambda: learner(HookStatsCB()),
        "Learner + MetricsCB + ActivationStats (probes)": lambda: learner(ActivationStats()),
        "tiny: hand loop": lambda: hand_loop(*tiny(), metric=False),
        "tiny: Learner + MetricsCB (loss only)": tiny_learner,
    }
    # Half the rounds in each order, so that no case always follows the same one.
    first = interleave(cases, ROUNDS - ROUNDS // 2, clock=time.thread_time)
    second = interleave(dict(reversed(cases.items())), ROUNDS // 2, clock=time.thread_time)
    times = {name: first[name] + second[name] for name in cases}

    def ratios(a, b):
        # Per round, and of the fastest runs: a loaded machine only ever adds time.
        return [x / y for x, y in zip(times[a], times[b])], min(times[a]) / min(times[b])

    print(
        f"Learner overhead, digits MLP 64-128-10, {EPOCHS} epochs, 1 thread, {ROUNDS} rounds,"
        " CPU time"
    )
    print(f"{'case':52} {'median':>7}   {'range':11}  {'fastest':>8}  target")
    for name, ts in times.items():
        print(f"  {name:50} {statistics.median(ts) * 1e3:9.1f} ms")
    summary(
        "Learner + MetricsCB / hand loop",
        ratios("Learner + MetricsCB", "hand loop + metrics"),
        "<=1.02",
    )
    summary(
        "ActivationStats (probes) / hook stats, in hand loops",
        ratios(
            "hand loop + metrics + ActivationStats (probes)", "hand loop + metrics + hook stats"
        ),
        "<=1.02",
    )
    summary(
        "ActivationStats (probes) / hook stats, in the Learner",
        ratios(
            "Learner + MetricsCB + ActivationStats (probes)", "Learner + MetricsCB + hook stats"
        ),
        "<=1.02",
    )
    summary(
        "Learner + ActivationStats / hand loop + hook stats",
        ratios(
            "Learner + MetricsCB + ActivationStats (probes)", "hand loop + metrics + hook stats"
        ),
    )
    _, dls = tiny()
    batches = EPOCHS * (len(dls.train) + len(dls.valid))
    extra = [
        (a - b) / batches * 1e6
        for a, b in zip(times["tiny: Learner + MetricsCB (loss only)"], times["tiny: hand loop"])
    ]
    print(
        f"{'stage dispatch, us per batch (tiny model)':52} {statistics.median(extra):7.1f}"
        f"   {min(extra):.1f}-{max(extra):.1f}"
    )


if __name__ == "__main__":
    main()
