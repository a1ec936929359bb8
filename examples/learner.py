"""The Learner on scikit-learn's digits: metrics, progress, activation statistics, LR finder.

Run with `python examples/learner.py [output-folder]` (created if missing). The model is a stock
`nn.Sequential`; every statistic below is collected by selectors (probes), not by
hooks, and `@learn.on(...)` listens to a variable of the training loop itself.
"""

import sys
import tempfile

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset, random_split
from torchmetrics.classification import MulticlassAccuracy

from ptera.lab import ActivationStats, DataLoaders, Learner, MetricsCB, ProgressCB


def digits():
    d = load_digits()
    ds = TensorDataset(torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target))
    train, valid = random_split(ds, [0.8, 0.2], generator=torch.Generator().manual_seed(0))
    return DataLoaders.from_datasets(train, valid, batch_size=64)


def main(out):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    stats = ActivationStats()
    metrics = MetricsCB(accuracy=MulticlassAccuracy(num_classes=10, average="micro"))
    # No loss_fn: integer class targets choose cross_entropy.
    learn = Learner(model, digits(), cbs=[metrics, ProgressCB(), stats])

    finder = learn.lr_find(num_it=60)
    learn.lr = min(finder.suggestion * 3, 1.0)
    print(
        f"LR finder: {len(finder.losses)} batches, suggested lr {finder.suggestion:.3g}, using {learn.lr:.3g}"
    )
    print(f"  plot: {finder.plot(f'{out}/lr_find.png')}")

    @learn.on("one_batch(xb) > loss")
    def hard_batches(xb, loss):
        # Any variable of the loop is a query away: here, the biggest training losses.
        return round(loss.item(), 4)

    learn.fit(8)
    acc = metrics.history[-1]["accuracy"]
    print(f"largest batch loss seen: {max(learn.results.hard_batches):.4f}")
    for name in stats.layers():
        s = stats.stats["train"][name]
        dead = f", dead {s['dead'][-1]:.1%}" if "dead" in s else ""  # activations only
        print(
            f"layer {stats.label(name)}: last mean {s['mean'][-1]:+.3f}, std {s['std'][-1]:.3f}{dead}"
        )
    print(f"activation plots: {', '.join(stats.plot(out))}")
    print(f"final validation accuracy: {acc:.1%}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ptera-learner-"))
