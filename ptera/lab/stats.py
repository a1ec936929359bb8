"""Activation statistics by probes: no hook is registered, no model is edited.

``ActivationStats()`` probes the output (``#value``) of every leaf module class of
the model (``Linear(self) > #value as out``, ``ReLU(self) > #value as out``, ...) or
of any selector given, and records per layer and per batch the mean, the std, a
histogram of absolute values (the "colorful dimension") and, for activation
functions only, the dead fraction (share of values <= 0), train and eval apart.
``plot`` writes PNGs.

Decisions:

* Layers are keyed by their module name (as ``named_modules`` spells it) and
  labelled "name (Class)" in plots (``label``).
* The dead fraction is recorded only for outputs of ``torch.nn`` activation
  modules (``ReLU``, ``GELU``, ...): for a ``Linear`` output, a pre-activation,
  values <= 0 mean nothing.
* A record costs no device sync: the statistics of a batch stay tensors (on the
  model's device) until the epoch ends or ``stats`` is read, and are then turned
  into numbers with one ``.tolist()`` for all layers and statistics. Probed values
  come out of the model's graph; ``detach`` keeps the statistics out of autograd
  (cheaper than a ``no_grad`` block per call).
* A record is a few lookups and the statistics themselves: each module of the
  model is mapped once, by id, to the lists its statistics go to, so the
  per-call cost is that of a forward hook computing the same numbers
  (``benchmarks/bench_lab.py`` compares them, ``tests/test_lab.py`` checks that
  they agree exactly).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .. import probing
from .callbacks import Callback

__all__ = ["ActivationStats"]

_ACTIVATIONS = tuple(
    cls
    for cls in vars(nn.modules.activation).values()
    if isinstance(cls, type)
    and issubclass(cls, nn.Module)
    and cls.__module__ == nn.modules.activation.__name__
    and cls is not nn.MultiheadAttention
)
_SCALARS = ("mean", "std", "dead")


class ActivationStats(Callback):
    """Per-layer activation statistics of every batch, collected with a probe."""

    order = 5
    runs_in_lr_find = False

    def __init__(
        self, *selectors: str, bins: int = 40, hist_max: float = 10.0, env: dict | None = None
    ):
        self.selectors = selectors
        self.bins, self.hist_max = bins, hist_max
        self.env = env or {}
        self.classes: dict[str, str] = {}
        self._stats: dict[str, dict[str, dict[str, list]]] = {}
        self._slots: dict[bool, dict[int, tuple]] = {True: {}, False: {}}
        self._named: dict[bool, dict[str, tuple]] = {True: {}, False: {}}
        self._probe = None

    @property
    def stats(self) -> dict[str, dict[str, dict[str, list]]]:
        """``{"train" | "eval": {layer: {"mean", "std", "hist"[, "dead"]: [per batch]}}}``."""
        self._flush()
        return self._stats

    def _default_selectors(self, model: torch.nn.Module) -> tuple[list[str], dict]:
        classes = {}
        for module in model.modules():
            if not any(True for _ in module.children()):
                classes[type(module).__qualname__] = type(module)
        env = {f"_cls{i}": cls for i, cls in enumerate(classes.values())}
        return [f"_cls{i}(self) > #value as out" for i in range(len(classes))], env

    def before_fit(self, learn) -> None:
        self._layers = {
            id(m): (name or type(m).__name__, isinstance(m, _ACTIVATIONS), type(m).__name__)
            for name, m in learn.model.named_modules()
        }
        self._stats = {"train": {}, "eval": {}}
        # Per split: module id -> its layer's lists (see _slot), and layer name -> the same.
        self._slots: dict[bool, dict[int, tuple]] = {True: {}, False: {}}
        self._named: dict[bool, dict[str, tuple]] = {True: {}, False: {}}
        self.classes = {}
        if self.selectors:
            selectors, env = list(self.selectors), self.env
        else:
            selectors, env = self._default_selectors(learn.model)
        self._learn = learn
        self._probe = probing(*selectors, env=env)
        probe = self._probe.__enter__()
        probe.subscribe(self._record)

    def _slot(self, module: Any, training: bool) -> tuple:
        """The lists a module's outputs go to: ``(mean, std, dead or None, hist)``.

        mean, std and dead hold the batch's 0-d tensors until ``_flush``; hist is
        the layer's series itself. Modules of the model are cached by id (they
        live as long as the fit); any other module is looked up by class each time,
        since a dead module's id may come back as another one's.
        """
        known = self._layers.get(id(module)) if module is not None else ("out", False, "")
        if known is None:
            cls = type(module).__name__
            name, activation = cls, isinstance(module, _ACTIVATIONS)
        else:
            name, activation, cls = known
        named = self._named[training]
        slot = named.get(name)
        if slot is None:
            self.classes.setdefault(name, cls)
            series = self._stats["train" if training else "eval"].setdefault(name, _series())
            slot = named[name] = ([], [], [] if activation else None, series["hist"])
        if known is not None:
            self._slots[training][id(module)] = slot
        return slot

    def _record(self, data: dict) -> None:
        # Called for every probed module call: kept to a few lookups and the statistics.
        x = data.get("out")
        if not isinstance(x, torch.Tensor):
            return
        training = self._learn.training
        module = data.get("self")
        slot = self._slots[training].get(id(module))
        if slot is None:
            slot = self._slot(module, training)
        mean, std, dead, hist = slot
        x = x.detach()
        if x.dtype != torch.float32:
            x = x.float()  # histc and a stable std want float32 (bf16 under autocast)
        mean.append(x.mean())
        std.append(x.std() if x.numel() > 1 else x.new_zeros(()))
        if dead is not None:
            dead.append((x <= 0).float().mean())
        hist.append(x.abs().histc(self.bins, 0, self.hist_max))

    def _flush(self) -> None:
        """Turn the pending statistics into numbers: one device read for all of them."""
        pending = [
            (self._stats["train" if training else "eval"][name], key, values)
            for training, named in self._named.items()
            for name, slot in named.items()
            for key, values in zip(_SCALARS, slot)
            if values
        ]
        if not pending:
            return
        # One stack per layer and statistic (a layer's values share its device), then
        # one tensor on one device, so that a model split over devices still works.
        stacks = [torch.stack(values) for _, _, values in pending]
        device = stacks[0].device
        numbers = torch.cat([s.to(device) for s in stacks]).tolist()
        start = 0
        for series, key, values in pending:
            end = start + len(values)
            series.setdefault(key, []).extend(numbers[start:end])
            start = end
            values.clear()

    def after_epoch(self, learn) -> None:
        self._flush()

    def cleanup_fit(self, learn) -> None:
        self._flush()
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.__exit__(None, None, None)

    def layers(self, split: str = "train") -> list[str]:
        """The layers recorded in ``split``, by module name."""
        return list(self.stats.get(split, {}))

    def label(self, name: str) -> str:
        """A layer's name and class, as plots show it: ``"0 (Linear)"``."""
        cls = self.classes.get(name, "")
        return f"{name} ({cls})" if cls and cls != name else name

    def plot(self, directory: str | os.PathLike = ".", split: str = "train") -> list[str]:
        """Write means/stds, dead fractions and colorful-dimension PNGs; return their paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stats = self.stats.get(split, {})
        if not stats:
            raise ValueError(f"no {split} statistics recorded: call fit with this callback first")
        os.makedirs(directory, exist_ok=True)
        paths = []
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for name, s in stats.items():
            for ax, key in zip(axes, _SCALARS):
                if key in s:
                    ax.plot(s[key], label=self.label(name))
        titles = ("mean", "std", "dead fraction (<= 0), activations only")
        for ax, title in zip(axes, titles):
            ax.set_title(title)
            ax.set_xlabel("batch")
        axes[0].legend(fontsize="small")
        if axes[2].lines:
            axes[2].legend(fontsize="small")
        paths.append(os.path.join(directory, f"activations_{split}.png"))
        fig.savefig(paths[-1])
        plt.close(fig)
        fig, axes = plt.subplots(1, len(stats), figsize=(4 * len(stats), 3.5), squeeze=False)
        for ax, (name, s) in zip(axes[0], stats.items()):
            hist = torch.stack(s["hist"]).t().float().log1p().cpu().numpy()
            extent = (0, hist.shape[1], 0, self.hist_max)
            ax.imshow(hist, origin="lower", aspect="auto", extent=extent)
            ax.set_title(self.label(name))
            ax.set_xlabel("batch")
            ax.set_ylabel("|activation|")
        fig.tight_layout()
        paths.append(os.path.join(directory, f"colorful_dimension_{split}.png"))
        fig.savefig(paths[-1])
        plt.close(fig)
        return paths


def _series() -> dict[str, list[Any]]:
    return {"mean": [], "std": [], "hist": []}
