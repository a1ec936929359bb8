"""The Learner's overhead: digits MLP, 5 epochs, ratios to hand-written loops.

1. `Learner` + `MetricsCB` (torchmetrics accuracy, weighted loss) vs a hand loop
   updating the same torchmetrics objects.
2. `Learner` + `ActivationStats` (probes) vs the hand loop recording the same
   statistics from `register_forward_hook`.
"""

import os

import torch
from sklearn.datasets import load_digits
from timing import interleave, report
from torch import nn
from torch.utils.data import TensorDataset, random_split
from torchmetrics.aggregation import MeanMetric
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


def hand_loop(model, dls, hooks=False):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = {t: MulticlassAccuracy(num_classes=10) for t in (True, False)}
    loss_m = {t: MeanMetric() for t in (True, False)}
    stats = {}
    handles = []
    if hooks:
        state = {"train": True}

        def hook(name):
            def record(module, inputs, out):
                x = out.detach().float()
                s = stats.setdefault(
                    (state["train"], name), {"mean": [], "std": [], "dead": [], "hist": []}
                )
                s["mean"].append(x.mean().item())
                s["std"].append(x.std().item())
                s["dead"].append((x <= 0).float().mean().item())
                s["hist"].append(x.abs().histc(40, 0, 10))

            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in model.named_children()]
    for _ in range(EPOCHS):
        for train, loader in ((True, dls.train), (False, dls.valid)):
            if hooks:
                state["train"] = train
            model.train(train)
            acc[train].reset()
            loss_m[train].reset()
            with torch.set_grad_enabled(train):
                for xb, yb in loader:
                    preds = model(xb)
                    loss = nn.functional.cross_entropy(preds, yb)
                    if train:
                        loss.backward()
                        opt.step()
                        opt.zero_grad()
                    acc[train].update(preds.detach(), yb)
                    loss_m[train].update(loss.detach(), weight=len(yb))
            acc[train].compute()
            loss_m[train].compute()
    for h in handles:
        h.remove()


def main():
    torch.set_num_threads(1)

    def hand_metrics():
        hand_loop(*setup())

    def learner_metrics():
        model, dls = setup()
        cb = MetricsCB(MulticlassAccuracy(num_classes=10), print_epochs=False)
        Learner(model, dls, nn.functional.cross_entropy, cbs=[cb]).fit(EPOCHS)

    def hand_hooks():
        hand_loop(*setup(), hooks=True)

    def learner_stats():
        model, dls = setup()
        cbs = [MetricsCB(MulticlassAccuracy(num_classes=10), print_epochs=False), ActivationStats()]
        Learner(model, dls, nn.functional.cross_entropy, cbs=cbs).fit(EPOCHS)

    times = interleave(
        {
            "hand loop + metrics": hand_metrics,
            "Learner + MetricsCB": learner_metrics,
            "hand loop + metrics + hook stats": hand_hooks,
            "Learner + ActivationStats (probes)": learner_stats,
        },
        ROUNDS,
    )
    report(
        f"Learner, digits MLP 64-128-10, {EPOCHS} epochs, 1 thread, {ROUNDS} rounds (vs hand loop)",
        times,
        "hand loop + metrics",
        {"Learner + MetricsCB": "<=1.05"},
    )
    ratio = sorted(
        a / b
        for a, b in zip(
            times["Learner + ActivationStats (probes)"], times["hand loop + metrics + hook stats"]
        )
    )
    print(
        f"ActivationStats by probes / by hooks, median: {ratio[len(ratio) // 2]:.3f} (target <=1.05)"
    )


if __name__ == "__main__":
    main()
