"""Activation statistics by probes: no hook is registered, no model is edited.

``ActivationStats()`` probes the output (``#value``) of every leaf module class of
the model (``Linear(self) > #value as out``, ``ReLU(self) > #value as out``, ...) or
of any selector given, and records per layer and per batch the mean, the std, the
dead fraction (share of values <= 0) and a histogram of absolute values (the
"colorful dimension"), train and eval apart. ``plot`` writes PNGs.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import torch

from ..probe import probing
from .callbacks import Callback

__all__ = ["ActivationStats"]


class ActivationStats(Callback):
    """Per-layer activation statistics of every batch, collected with a probe."""

    order = 5

    def __init__(
        self, *selectors: str, bins: int = 40, hist_max: float = 10.0, env: dict | None = None
    ):
        self.selectors = selectors
        self.bins, self.hist_max = bins, hist_max
        self.env = env or {}
        self.stats: dict[str, dict[str, dict[str, list]]] = {}
        self._probe = None

    def _default_selectors(self, model: torch.nn.Module) -> tuple[list[str], dict]:
        classes = {}
        for module in model.modules():
            if not any(True for _ in module.children()):
                classes[type(module).__qualname__] = type(module)
        env = {f"_cls{i}": cls for i, cls in enumerate(classes.values())}
        return [f"_cls{i}(self) > #value as out" for i in range(len(classes))], env

    def before_fit(self, learn) -> None:
        self.names = {id(m): name or type(m).__name__ for name, m in learn.model.named_modules()}
        self.stats = {"train": defaultdict(_series), "eval": defaultdict(_series)}
        if self.selectors:
            selectors, env = list(self.selectors), self.env
        else:
            selectors, env = self._default_selectors(learn.model)
        self._learn = learn
        self._probe = probing(*selectors, env=env)
        probe = self._probe.__enter__()
        probe.subscribe(self._record)

    def _record(self, data: dict) -> None:
        out = data.get("out")
        if not isinstance(out, torch.Tensor):
            return
        module = data.get("self")
        name = self.names.get(id(module), type(module).__name__) if module is not None else "out"
        with torch.no_grad():
            x = out.detach().float()
            series = self.stats["train" if self._learn.training else "eval"][name]
            series["mean"].append(x.mean().item())
            series["std"].append(x.std().item() if x.numel() > 1 else 0.0)
            series["dead"].append((x <= 0).float().mean().item())
            series["hist"].append(x.abs().histc(self.bins, 0, self.hist_max).cpu())

    def cleanup_fit(self, learn) -> None:
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.__exit__(None, None, None)

    def layers(self, split: str = "train") -> list[str]:
        return list(self.stats.get(split, {}))

    def plot(self, directory: str | os.PathLike = ".", split: str = "train") -> list[str]:
        """Write means/stds, dead fractions and colorful-dimension PNGs; return their paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(directory, exist_ok=True)
        stats = self.stats.get(split, {})
        if not stats:
            raise ValueError(f"no {split} statistics recorded: call fit with this callback first")
        paths = []
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for name, s in stats.items():
            axes[0].plot(s["mean"], label=name)
            axes[1].plot(s["std"], label=name)
            axes[2].plot(s["dead"], label=name)
        for ax, title in zip(axes, ("mean", "std", "dead fraction (<= 0)")):
            ax.set_title(title)
            ax.set_xlabel("batch")
        axes[0].legend(fontsize="small")
        paths.append(os.path.join(directory, f"activations_{split}.png"))
        fig.savefig(paths[-1])
        plt.close(fig)
        fig, axes = plt.subplots(1, len(stats), figsize=(4 * len(stats), 3), squeeze=False)
        for ax, (name, s) in zip(axes[0], stats.items()):
            hist = torch.stack(s["hist"]).t().float().log1p().numpy()
            ax.imshow(hist, origin="lower", aspect="auto")
            ax.set_title(name)
            ax.set_axis_off()
        paths.append(os.path.join(directory, f"colorful_dimension_{split}.png"))
        fig.savefig(paths[-1])
        plt.close(fig)
        return paths


def _series() -> dict[str, list[Any]]:
    return {"mean": [], "std": [], "dead": [], "hist": []}
