"""Saturation, latents and linear probes of a small CNN on scikit-learn's digits.

Run with `python examples/saturation.py [figure.png]` (default: a temporary
folder; the README's figure is `python examples/saturation.py docs/saturation.png`). The model is trained by the Learner with the `Saturation`
callback (every Conv2d and Linear output, train and eval passes, collected by
probes: no hook, no edit); then every layer's latents are extracted to disk and a
logistic-regression probe is fitted per layer. The figure shows, per layer, the
saturation of each epoch's eval pass and the probes' accuracy.
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from ptera.lab import DataLoaders, Learner, Saturation
from ptera.lab.data import digits
from ptera.lab.models import Lenet5
from ptera.lab.representations import extract_latents, saturation, train_probes


def main(figure: Path) -> None:
    torch.manual_seed(0)
    train, test = digits()
    model = Lenet5(image_size=8)
    sat = Saturation(delta=0.99)
    dls = DataLoaders.from_datasets(train, test, batch_size=64)
    learn = Learner(
        model, dls, nn.functional.cross_entropy, lr=1e-2, opt_func=torch.optim.Adam, cbs=[sat]
    )
    learn.fit(6)
    with torch.no_grad():
        x, y = test.tensors
        accuracy = (model.eval()(x).argmax(1) == y).float().mean().item()
    print(f"test accuracy after {learn.epoch + 1} epochs: {accuracy:.3f}")

    history = sat.history
    final = history[(history.epoch == history.epoch.max()) & (history.split == "eval")]
    print("saturation of the last eval pass (k of D principal directions for 99% variance):")
    for row in final.itertuples():
        print(f"  {row.layer:14s} {row.k:4d} / {row.dim:<4d} = {row.saturation:.2f}")
    # The callback's eval numbers are a one-pass saturation() of the same weights.
    again = saturation(model, test)
    assert list(again.k) == list(final.k)

    with tempfile.TemporaryDirectory() as folder:
        extract_latents(model, train, folder, split="train")
        extract_latents(model, test, folder, split="eval")
        probes = train_probes(folder)
    print("linear probes (logistic regression on each layer's output):")
    for row in probes.itertuples():
        print(f"  {row.layer:14s} eval accuracy {row.eval_accuracy:.3f}")

    plot(history, probes, figure)
    print(f"figure: {figure}")


def plot(history, probes, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(probes.layer)
    eval_rows = history[history.split == "eval"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("viridis")
    epochs = sorted(eval_rows.epoch.unique())
    for epoch in epochs:
        part = eval_rows[eval_rows.epoch == epoch].set_index("layer").reindex(layers)
        left.plot(
            layers, part.saturation, marker="o", color=cmap(epoch / max(1, len(epochs) - 1)),
            label=f"epoch {epoch}",
        )  # fmt: skip
    left.set_title("saturation per layer (eval pass)")
    left.set_ylabel("k / D at delta = 0.99")
    left.set_ylim(0, 1.05)
    left.legend(fontsize="small")
    right.bar(layers, probes.eval_accuracy, color="tab:orange", label="eval")
    right.plot(layers, probes.train_accuracy, "k.", label="train")
    right.axhline(0.1, color="gray", linestyle=":", label="chance")
    right.set_ylim(0, 1.05)
    right.set_title("linear probe accuracy per layer")
    right.legend(fontsize="small", loc="lower left")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    main(out or Path(tempfile.mkdtemp("-saturation")) / "saturation.png")
