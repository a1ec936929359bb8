"""Per-neuron trigger statistics, collected by probes on the layers' outputs.

``NeuronStats`` is a Learner callback: during ``fit`` it probes the output
(``#value``) of every ``Linear`` and ``Conv2d`` layer (no hook, no edit of the
model) and counts, per neuron and per split (train / eval), how often it
triggers (output > 0) and over how many samples.

Decisions:

* A ``Linear`` neuron triggers once per sample (per position, for inputs with
  extra leading dimensions); a ``Conv2d`` channel counts every positive position,
  as WeightsLab does, so its ``rate`` (triggers / samples) can exceed 1. The
  ``active`` column counts the samples on which the neuron triggered at least
  once, so ``active_rate`` is a fraction for every layer type.
* Counters live on the layer's device and are summed without ``.item()``; a batch
  costs three cheap tensor operations per layer (its per-sample counts wait, and
  are summed every 32 batches or when read), and no synchronisation. A conv
  layer's ``sign(relu(x))`` is written into a scratch tensor kept per layer
  (reallocated only when the output's shape changes): allocating a fresh map
  each batch cost about as much as the operations.
* Statistics follow surgery (``prune`` / ``grow`` / ``reset`` rows); a layer whose
  size changed behind the callback's back starts its counts over.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ... import probing
from ..callbacks import Callback
from .layers import operable_layers

__all__ = ["NeuronStats"]

SPLITS = ("train", "eval")


class _Counts:
    """Triggers, active samples (per neuron) and samples seen, for one layer and split.

    Batches wait in ``pending`` (per-sample counts, whole numbers in floats) and are
    summed every ``FLUSH`` batches or when read: three tensor operations a batch
    instead of seven.
    """

    __slots__ = ("triggers", "active", "seen", "pending")
    FLUSH = 32

    def __init__(self, size: int, device: Any = None):
        self.triggers = torch.zeros(size, dtype=torch.int64, device=device)
        self.active = torch.zeros(size, dtype=torch.int64, device=device)
        self.seen = 0
        self.pending: list[torch.Tensor] = []

    def add(self, per_sample: torch.Tensor) -> None:
        self.pending.append(per_sample)
        self.seen += per_sample.shape[0]
        if len(self.pending) >= self.FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            batch = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
            self.pending = []
            # Whole numbers in floats (NaN outputs count as not triggering): exact as int64.
            batch = batch.nan_to_num(0.0).to(torch.int64)
            self.triggers += batch.sum(0)
            self.active += (batch > 0).sum(0)


class NeuronStats(Callback):
    """Per-neuron trigger counts of the model's ``Linear``/``Conv2d`` layers, by probes.

    ``layers`` restricts the layers (qualified module names); by default every
    operable layer is counted. ``dataframe()`` gives one row per layer, neuron and
    split; ``display()`` prints the table with dead and weak neurons flagged.
    """

    order = 5

    def __init__(self, layers: list[str] | None = None, weak_ratio: float = 0.25):
        self.only = list(layers) if layers is not None else None
        self.weak_ratio = weak_ratio
        self.counts: dict[str, dict[str, _Counts]] = {split: {} for split in SPLITS}
        self._probe = None
        self._learn = None
        self._scratch: dict[str, torch.Tensor] = {}

    # -- collection ------------------------------------------------------------------
    def before_fit(self, learn) -> None:
        self.watch(learn.model)
        self._learn = learn
        self._probe = probing(
            "_Linear(self) > #value as out",
            "_Conv2d(self) > #value as out",
            env={"_Linear": nn.Linear, "_Conv2d": nn.Conv2d},
        )
        self._probe.__enter__().subscribe(self._record)

    def cleanup_fit(self, learn) -> None:
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.__exit__(None, None, None)

    def watch(self, model: nn.Module) -> None:
        """Count the layers of ``model`` (done by ``before_fit``)."""
        self._names = {
            id(layer.module): layer.name
            for layer in operable_layers(model)
            if self.only is None or layer.name in self.only
        }

    def _record(self, data: dict) -> None:
        out = data.get("out")
        name = self._names.get(id(data.get("self")))
        if name is None or not isinstance(out, torch.Tensor):
            return
        split = "train" if self._learn.training else "eval"
        # sign(relu(x)) is 1 exactly where x > 0, and twice as fast as a comparison
        # (which makes booleans); per-sample counts stay exact in float32.
        if isinstance(data["self"], nn.Conv2d):
            positive = self._positive(name, out.detach())  # summed now: scratch is safe
            if positive.dim() == 3:  # unbatched
                positive = positive[None]
            per_sample = positive.sum((2, 3), dtype=torch.float32)  # (batch, channels)
        elif out.dim() <= 2:  # one position per sample, kept pending: a fresh tensor
            positive = torch.relu(out.detach()).sign_()
            per_sample = positive.view(-1, positive.shape[-1])
        else:  # (batch, ..., features)
            positive = torch.relu(out.detach()).sign_()
            per_sample = positive.flatten(1, -2).sum(1, dtype=torch.float32)
        counts = self.counts[split].get(name)
        if counts is None or counts.triggers.shape[0] != per_sample.shape[1]:
            counts = self.counts[split][name] = _Counts(per_sample.shape[1], out.device)
        counts.add(per_sample)

    def _positive(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """``sign(relu(out))`` written into a scratch tensor kept per layer: a fresh
        tensor per batch costs more (the allocator's first touch) than the two ops."""
        scratch = self._scratch.get(name)
        if scratch is None or scratch.shape != out.shape or scratch.dtype != out.dtype:
            scratch = torch.empty(out.shape, dtype=out.dtype, device=out.device)
            self._scratch[name] = scratch
        elif scratch.device != out.device:
            scratch = self._scratch[name] = scratch.to(out.device)
        return torch.clamp_min(out, 0, out=scratch).sign_()

    def flush(self) -> None:
        """Sum the batches still pending (reading and surgery do it first)."""
        for split in SPLITS:
            for counts in self.counts[split].values():
                counts.flush()

    def after_fit(self, learn) -> None:
        self.flush()

    # -- surgery ---------------------------------------------------------------------
    def prune(self, layer: str, keep: torch.Tensor) -> None:
        """Keep only the neurons ``keep`` (indices) of ``layer``."""
        self.flush()
        for split in SPLITS:
            counts = self.counts[split].get(layer)
            if counts is not None:
                idx = keep.to(counts.triggers.device)
                counts.triggers = counts.triggers[idx]
                counts.active = counts.active[idx]

    def grow(self, layer: str, n: int) -> None:
        """Append ``n`` neurons with zero counts to ``layer``."""
        self.flush()
        for split in SPLITS:
            counts = self.counts[split].get(layer)
            if counts is not None:
                zeros = counts.triggers.new_zeros(n)
                counts.triggers = torch.cat([counts.triggers, zeros])
                counts.active = torch.cat([counts.active, zeros])

    def reset(self, layer: str, neurons: torch.Tensor) -> None:
        """Zero the counts of ``neurons`` of ``layer`` (after a re-initialisation)."""
        self.flush()
        for split in SPLITS:
            counts = self.counts[split].get(layer)
            if counts is not None:
                idx = neurons.to(counts.triggers.device)
                counts.triggers[idx] = 0
                counts.active[idx] = 0

    # -- reading ---------------------------------------------------------------------
    def dataframe(self):
        """A pandas DataFrame: ``layer, neuron, split, triggers, seen, rate, active, active_rate``."""
        import pandas as pd

        frames = []
        self.flush()
        for split in SPLITS:
            for layer, c in self.counts[split].items():
                triggers = c.triggers.cpu().numpy()
                active = c.active.cpu().numpy()
                seen = max(c.seen, 1)
                frames.append(
                    pd.DataFrame(
                        {
                            "layer": layer,
                            "neuron": range(len(triggers)),
                            "split": split,
                            "triggers": triggers,
                            "seen": c.seen,
                            "rate": triggers / seen,
                            "active": active,
                            "active_rate": active / seen,
                        }
                    )
                )
        columns = ["layer", "neuron", "split", "triggers", "seen", "rate", "active", "active_rate"]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)[columns]

    def dead(self, layer: str, split: str = "train") -> list[int]:
        """Neurons of ``layer`` that never triggered on the samples of ``split`` seen so far."""
        self.flush()
        counts = self.counts[split].get(layer)
        if counts is None or counts.seen == 0:
            return []
        return torch.nonzero(counts.triggers == 0).flatten().tolist()

    def weak(self, layer: str, split: str = "train") -> list[int]:
        """Live neurons of ``layer`` whose rate is below ``weak_ratio`` times the layer's median."""
        self.flush()
        counts = self.counts[split].get(layer)
        if counts is None or counts.seen == 0:
            return []
        t = counts.triggers.double()
        limit = self.weak_ratio * t.median()
        return torch.nonzero((t > 0) & (t < limit)).flatten().tolist()

    def display(self, console: Any = None, layers: list[str] | None = None) -> None:
        """Print the seed's table (train and eval rate per neuron), flagging dead and weak neurons."""
        from rich.console import Console
        from rich.table import Table

        self.flush()
        console = console or Console()
        names = layers or list(dict.fromkeys([*self.counts["train"], *self.counts["eval"]]))
        for layer in names:
            table = Table(title=f"{layer}: trigger rate (triggers / samples seen)")
            table.add_column("neuron", justify="right")
            for split in SPLITS:
                table.add_column(split, justify="right")
            table.add_column("")
            train, evals = self.counts["train"].get(layer), self.counts["eval"].get(layer)
            size = len((train or evals).triggers)
            dead, weak = set(self.dead(layer)), set(self.weak(layer))
            for i in range(size):
                cells = [_cell(c, i) for c in (train, evals)]
                flag = (
                    "[red]<- BAD (dead)"
                    if i in dead
                    else "[yellow]<- NOT GREAT (weak)"
                    if i in weak
                    else ""
                )
                table.add_row(f"{i:05d}", *cells, flag)
            console.print(table)

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """The counts as plain tensors and numbers (for checkpoints)."""
        self.flush()
        return {
            split: {
                name: {"triggers": c.triggers.cpu(), "active": c.active.cpu(), "seen": c.seen}
                for name, c in self.counts[split].items()
            }
            for split in SPLITS
        }

    def load_state_dict(self, state: dict, device: Any = None) -> None:
        """Restore counts saved by ``state_dict`` (on ``device``)."""
        self.counts = {split: {} for split in SPLITS}
        for split in SPLITS:
            for name, c in state.get(split, {}).items():
                counts = _Counts(0)
                counts.triggers = c["triggers"].to(device)
                counts.active = c["active"].to(device)
                counts.seen = int(c["seen"])
                self.counts[split][name] = counts


def _cell(counts: _Counts | None, i: int) -> str:
    if counts is None or i >= len(counts.triggers):
        return "-"
    triggers = int(counts.triggers[i])
    return f"{triggers / max(counts.seen, 1):.4f} ({triggers} / {counts.seen})"
