"""The Workbench: WeightsLab's experiment on an ordinary ``nn.Module``, trained by the Learner.

``Workbench(model, optimizer_class, train_dataset, eval_dataset)`` trains a
classifier step by step (``train_n_steps``), evaluates (``eval_n_steps``,
``eval_full``), shows per-neuron statistics (``display_stats``), operates on
neurons (``add_neurons``, ``prune``, ``reinit_neurons``, per-neuron learning
rates, freezing) and on samples (``train_samples`` / ``eval_samples``), and saves
and restores all of it (``dump`` / ``load``).

Decisions:

* Training runs in a ``Learner`` (``wb.learner``): its callbacks and selector
  listeners work inside the workbench. The Learner's loaders are views that yield
  the next *n* batches of persistent iterators, so training continues across
  calls; its optimizer factory returns the workbench's one optimizer, which
  surgery keeps.
* Per-sample losses come from the loss function with ``reduction="none"``; the
  Learner's loss is their mean, so nothing is computed twice.
* The model is a classifier: its output is ``(batch, classes)`` scores (logits or
  log-probabilities; the default loss, ``cross_entropy``, takes both).
* Surgery traces the model once with ``torch.fx`` (the graph's structure does not
  change with sizes) and then only edits tensors.
* Checkpoints go to ``root`` (by default a temporary folder, made at the first
  ``dump``).
* The seed's ``exp.model.<operation>(...)`` is ``wb.<operation>(...)`` with the
  same arguments (the user's model class is never given methods), and its
  ``exp.model.layers[i].set_per_neuron_learning_rate(neurons, lr=)`` is
  ``wb.layers[i]....``: ``wb.layers`` are ``BenchLayer``s bound to the workbench.
  The layer method's form called on the workbench (neurons, no layer) is an
  error saying both ways to write it.
* ``reinit_neurons`` changes no shape, so it needs no consumer: it works on the
  output layer; ``prune`` and ``add_neurons`` need one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..callbacks import Callback
from ..learner import DataLoaders, Learner
from . import surgery
from .checkpoint import CheckpointStore, architecture, reshape_to
from .layers import Layer, input_count, neuron_count, operable_layers, resolve_layer
from .neurons import NeuronStats
from .rates import NeuronRates
from .routes import Route, SurgeryError, find_route, trace
from .samples import AllowedBatches, OrderedBatches, SampleTable

__all__ = ["Workbench"]


_LAYER_FIRST: Any = object()  # no neurons given: the seed's per-layer call made on the workbench


@dataclass(frozen=True, repr=False)
class BenchLayer(Layer):
    """An operable layer of a workbench, with the seed's per-layer operations
    (``exp.model.layers[0].set_per_neuron_learning_rate(...)`` in WeightsLab)."""

    bench: Workbench = field(compare=False)

    def set_per_neuron_learning_rate(self, neurons: Iterable[int], lr: float) -> None:
        """``wb.set_per_neuron_learning_rate(this layer, neurons, lr)``."""
        self.bench.set_per_neuron_learning_rate(self.name, neurons, lr)

    def set_per_incoming_neuron_learning_rate(self, neurons: Iterable[int], lr: float) -> None:
        """``wb.set_per_incoming_neuron_learning_rate(this layer, neurons, lr)``."""
        self.bench.set_per_incoming_neuron_learning_rate(self.name, neurons, lr)


class _Steps:
    """A Learner loader: the next ``n`` batches of ``source`` (a function giving sample ids)."""

    def __init__(self, wb: Workbench, table: SampleTable):
        self.wb, self.table = wb, table
        self.n, self.source = 0, None

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            ids = self.source()
            self.wb._ids = ids
            batch = self.table.fetch(ids)
            yield tuple(t.to(self.wb.device) if isinstance(t, torch.Tensor) else t for t in batch)


class _Tracker(Callback):
    """Writes each batch's predictions into the sample tables and sums loss and accuracy."""

    order = -10

    def __init__(self, wb: Workbench):
        self.wb = wb
        self.begin()

    def begin(self) -> None:
        # Per-batch tensors, summed once in ``result``: no reduction per batch.
        self.losses: list[torch.Tensor] = []
        self.hits: list[torch.Tensor] = []

    def after_batch(self, learn) -> None:
        if learn.loss is None:
            return
        wb = self.wb
        targets = learn.yb
        predictions = learn.preds.detach().argmax(1)
        table = wb.train_samples if learn.training else wb.eval_samples
        table.record(wb._ids, wb._per_sample, predictions, targets, wb.seen)
        self.losses.append(wb._per_sample)
        self.hits.append(predictions == targets)
        if learn.training:
            wb.seen += len(wb._ids)
            wb.step += 1

    def result(self) -> tuple[float, float]:
        if not self.losses:
            return float("nan"), float("nan")
        losses, hits = torch.cat(self.losses), torch.cat(self.hits)
        return float(losses.double().mean()), float(hits.double().mean())


class Workbench:
    """Train a classifier step by step, and operate on its neurons and samples.

    ``model`` is any ``nn.Module`` (unchanged: statistics are probes, surgery edits
    tensors from the outside). ``optimizer_class`` is called once with the
    model's parameters and ``lr=learning_rate``. ``loss_fn`` must accept
    ``reduction="none"``. ``cbs`` are extra Learner callbacks. Checkpoints go to
    ``root``; with ``log_dir`` (needs ``tensorboard``) losses and accuracies are
    logged under ``log_dir/name``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer_class: Callable,
        train_dataset: Dataset,
        eval_dataset: Dataset,
        device: Any = "cpu",
        learning_rate: float = 1e-2,
        batch_size: int = 256,
        name: str = "x0",
        seed: int = 0,
        *,
        loss_fn: Callable = F.cross_entropy,
        cbs: Iterable = (),
        root: str | os.PathLike | None = None,
        log_dir: str | os.PathLike | None = None,
    ):
        self.name, self.seed, self.loss_fn = name, seed, loss_fn
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer_class(self.model.parameters(), lr=learning_rate)
        self.train_samples = SampleTable(train_dataset, seed)
        self.eval_samples = SampleTable(eval_dataset, seed + 1)
        self.train_loader = AllowedBatches(self.train_samples, batch_size, seed)
        self.eval_loader = OrderedBatches(self.eval_samples, batch_size)
        self.generator = torch.Generator().manual_seed(seed)  # surgery's draws
        self.stats = NeuronStats()
        self.rates = NeuronRates(self.model)
        self.step = self.seen = self.epoch = 0
        self._tracker = _Tracker(self)
        self._train = _Steps(self, self.train_samples)
        self._train.source = self._next_train_ids
        self._eval = _Steps(self, self.eval_samples)
        self._graph = None
        self._ids = self._per_sample = None
        self.learner = Learner(
            self.model,
            DataLoaders(self._train, self._eval),
            self._loss,
            lr=learning_rate,
            opt_func=lambda params, lr: self.optimizer,
            cbs=[self._tracker, self.stats, self.rates, *cbs],
        )
        self.checkpoints = CheckpointStore(root, prefix=f"ptera-workbench-{name}-")
        self._writer = None
        if log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError(
                    "log_dir needs the tensorboard package: pip install tensorboard"
                ) from exc
            self._writer = SummaryWriter(os.path.join(os.fspath(log_dir), name))

    def __repr__(self) -> str:
        layers = ", ".join(f"{layer.name}:{layer.size}" for layer in self.layers)
        return f"Workbench({self.name!r}, step={self.step}, seen={self.seen}, layers=[{layers}])"

    @property
    def layers(self) -> list[BenchLayer]:
        """The operable layers (``Linear`` and ``Conv2d`` leaves, in module order), each
        with the seed's per-layer methods (``set_per_neuron_learning_rate(neurons, lr=)``)."""
        return [BenchLayer(layer.index, layer.name, layer.module, self) for layer in
                operable_layers(self.model)]  # fmt: skip

    @property
    def chkpt_manager(self) -> CheckpointStore:
        """The seed's name for ``checkpoints``."""
        return self.checkpoints

    # -- training and evaluation -------------------------------------------------------
    def _loss(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sample = self.loss_fn(preds, targets, reduction="none")
        self._per_sample = per_sample.detach()
        return per_sample.mean()

    def _next_train_ids(self) -> torch.Tensor:
        ids = self.train_loader.next()
        if ids is None:
            self.train_loader.new_epoch()
            self.epoch += 1
            ids = self.train_loader.next()
            if ids is None:
                raise RuntimeError(
                    "every training sample is deny-listed: allow some again"
                    " (train_samples.allowlist_samples) before training"
                )
        return ids

    def _run(self, loader: _Steps, n: int, train: bool) -> tuple[float, float]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of steps must be an integer >= 0, not {n!r}")
        loader.n = n
        self._tracker.begin()
        self.learner.fit(1, train=train, valid=not train)
        loss, accuracy = self._tracker.result()
        if self._writer is not None and n:
            split = "train" if train else "eval"
            self._writer.add_scalar(f"{split}/loss", loss, self.seen)
            self._writer.add_scalar(f"{split}/accuracy", accuracy, self.seen)
        return loss, accuracy

    def train_n_steps(self, n: int) -> tuple[float, float]:
        """Train on the next ``n`` batches of allowed samples; returns their (loss, accuracy)."""
        return self._run(self._train, n, train=True)

    def eval_n_steps(self, n: int) -> tuple[float, float]:
        """Evaluate the next ``n`` eval batches (cycling over the eval set); (loss, accuracy)."""
        self._eval.source = self.eval_loader.next
        return self._run(self._eval, n, train=False)

    def eval_full(self) -> tuple[float, float]:
        """Evaluate every eval sample (deny-listed ones too); (loss, accuracy)."""
        batches = iter(self.eval_loader.all())
        self._eval.source = lambda: next(batches)
        return self._run(self._eval, len(self.eval_loader), train=False)

    def train_n_steps_with_eval_full(self, n: int, eval_every: int = 50) -> tuple[float, float]:
        """Train ``n`` steps with an ``eval_full`` every ``eval_every`` steps and at the end.

        Returns the last evaluation's (loss, accuracy).
        """
        done, result = 0, (float("nan"), float("nan"))
        while done < n:
            k = min(eval_every, n - done)
            self.train_n_steps(k)
            done += k
            result = self.eval_full()
        return result

    # -- statistics ----------------------------------------------------------------
    def neuron_stats(self):
        """Per-layer, per-neuron trigger statistics (a pandas DataFrame; see ``NeuronStats``)."""
        return self.stats.dataframe()

    def display_stats(self, console: Any = None) -> None:
        """Print each layer's trigger rates, train and eval, with dead and weak neurons flagged."""
        self.stats.display(console)

    def dead_neurons(self, layer_index: int | str, split: str = "train") -> list[int]:
        """Neurons of the layer that never triggered on the ``split`` samples seen so far."""
        return self.stats.dead(resolve_layer(self.model, layer_index).name, split)

    # -- surgery ---------------------------------------------------------------------
    def _route(self, layer_index: int | str) -> Route:
        layer = resolve_layer(self.model, layer_index)
        if self._graph is None:
            try:
                self._graph = trace(self.model)
            except SurgeryError as exc:
                raise SurgeryError(f"layer {layer.index} ({layer.name!r}): {exc}") from exc
        return find_route(self.model, self._graph, layer)

    def _follow(self, change: surgery.Change) -> None:
        if change.keep is not None:
            self.stats.prune(change.layer, change.keep)
        if change.added:
            self.stats.grow(change.layer, change.added)
        if change.reset is not None:
            self.stats.reset(change.layer, change.reset)
        self.rates.follow(change)

    def add_neurons(
        self, layer_index: int | str, neuron_count: int, init: str = "preserve"
    ) -> None:
        """Add ``neuron_count`` neurons; ``init="preserve"`` keeps the network's function."""
        route = self._route(layer_index)
        self._follow(surgery.add_neurons(route, self.optimizer, neuron_count, init, self.generator))

    def prune(self, layer_index: int | str, neuron_indices: Iterable[int]) -> None:
        """Remove neurons: the network becomes the old one with their activations at zero."""
        route = self._route(layer_index)
        self._follow(surgery.prune(route, self.optimizer, neuron_indices))

    def reinit_neurons(
        self,
        layer_index: int | str,
        neuron_indices: Iterable[int],
        perturbation_ratio: float | None = None,
    ) -> None:
        """Re-draw the neurons' incoming weights and biases, or perturb them by a relative noise.

        No shape changes, so unlike ``prune`` and ``add_neurons`` this works on any
        operable layer, the output layer included, and needs no traceable forward.
        """
        route = Route(resolve_layer(self.model, layer_index), norms=(), consumers=())
        self._follow(
            surgery.reinit_neurons(
                route, self.optimizer, neuron_indices, perturbation_ratio, self.generator
            )
        )

    # -- learning rates and freezing -------------------------------------------------------
    def _set_rate(self, layer_index, neurons, lr, axis: str) -> None:
        if neurons is _LAYER_FIRST:  # the seed's layer method called on the workbench
            method = f"set_per{'' if axis == 'out' else '_incoming'}_neuron_learning_rate"
            raise TypeError(
                f"wb.{method} takes the layer first: wb.{method}(layer_index, neurons, lr=...),"
                f" or on the layer, as in the seed: wb.layers[i].{method}(neurons, lr=...)"
                f" (got {layer_index!r} for layer_index and no neurons)"
            )
        if lr is None:
            raise TypeError("a per-neuron learning rate needs lr= (a factor of the base rate)")
        layer = resolve_layer(self.model, layer_index)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
            raise ValueError(f"a learning-rate factor is a number >= 0, not {lr!r}")
        if axis == "out":
            idx = surgery.neuron_indices(layer, neurons)
        else:
            idx = surgery.neuron_indices(
                layer, neurons, input_count(layer.module), "incoming neurons"
            )
        self.rates.set(layer.name, axis, idx, lr)

    def set_per_neuron_learning_rate(
        self, layer_index: int | str, neurons: Iterable[int] = _LAYER_FIRST, lr: float | None = None
    ) -> None:
        """Scale the learning rate of ``neurons`` (their rows and biases) by ``lr``; 0 freezes them.

        ``wb.layers[i].set_per_neuron_learning_rate(neurons, lr=...)`` is the seed's form.
        """
        self._set_rate(layer_index, neurons, lr, "out")

    def set_per_incoming_neuron_learning_rate(
        self, layer_index: int | str, neurons: Iterable[int] = _LAYER_FIRST, lr: float | None = None
    ) -> None:
        """Scale the learning rate of the weights reading input ``neurons`` (columns) by ``lr``.

        ``wb.layers[i].set_per_incoming_neuron_learning_rate(neurons, lr=...)`` is the seed's form.
        """
        self._set_rate(layer_index, neurons, lr, "in")

    def freeze_layers_up_to_idx(self, index: int) -> None:
        """Freeze the operable layers ``0 .. index`` (inclusive)."""
        last = resolve_layer(self.model, index).index
        for layer in self.layers[: last + 1]:
            for param in layer.module.parameters():
                param.requires_grad_(False)
                param.grad = None

    def unfreeze_layers_from_idx(self, index: int) -> None:
        """Unfreeze the operable layers from ``index`` (inclusive) on."""
        first = resolve_layer(self.model, index).index
        for layer in self.layers[first:]:
            for param in layer.module.parameters():
                param.requires_grad_(True)

    @property
    def frozen_layers(self) -> list[str]:
        """Names of the operable layers whose weights do not train."""
        return [layer.name for layer in self.layers if not layer.module.weight.requires_grad]

    # -- checkpoints -----------------------------------------------------------------
    def dump(self) -> int:
        """Save everything (weights, architecture, optimizer, factors, frozen layers, statistics,
        sample tables, data order); returns the new checkpoint's id."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        payload = {
            "architecture": architecture(self.model),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "optimizer_params": [
                [names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups
            ],
            "rates": self.rates.state_dict(),
            "frozen": self.frozen_layers,
            "stats": self.stats.state_dict(),
            "train_samples": self.train_samples.state_dict(),
            "eval_samples": self.eval_samples.state_dict(),
            "train_order": self.train_loader.state_dict(),
            "progress": {
                "step": self.step,
                "seen": self.seen,
                "epoch": self.epoch,
                "eval_pos": self.eval_loader.pos,
            },
            "generator": self.generator.get_state(),
        }
        summary = {
            "step": self.step,
            "seen": self.seen,
            "layers": {layer.name: neuron_count(layer.module) for layer in self.layers},
        }
        return self.checkpoints.save(payload, summary)

    def load(self, checkpoint_id: int) -> None:
        """Restore checkpoint ``checkpoint_id`` (shapes included) into this workbench."""
        state = self.checkpoints.load(checkpoint_id)
        reshape_to(self.model, state["architecture"])
        self.model.load_state_dict(state["model"])
        named = dict(self.model.named_parameters())
        for group, params in zip(self.optimizer.param_groups, state["optimizer_params"]):
            group["params"] = [named[n] for n in params]
        self.optimizer.state.clear()
        self.optimizer.load_state_dict(state["optimizer"])
        frozen = set(state["frozen"])
        for layer in self.layers:
            for param in layer.module.parameters():
                param.requires_grad_(layer.name not in frozen)
        self.rates.load_state_dict(state["rates"])
        self.stats.load_state_dict(state["stats"], self.device)
        self.train_samples.load_state_dict(state["train_samples"])
        self.eval_samples.load_state_dict(state["eval_samples"])
        self.train_loader.load_state_dict(state["train_order"])
        progress = state["progress"]
        self.step, self.seen, self.epoch = progress["step"], progress["seen"], progress["epoch"]
        self.eval_loader.pos = progress["eval_pos"]
        self.generator.set_state(state["generator"])
