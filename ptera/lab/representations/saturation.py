"""Saturation: how many principal directions a layer's outputs use, streamed and exact.

For each layer the covariance of its outputs over every row of a pass is built
from streaming float64 sums (``X^T X``, ``sum x``, ``n``), centered and divided
by ``n``; its eigenvalues (sorted descending, negatives clamped to 0) give the
cumulative explained fractions ``cum_k``. The intrinsic dimensionality ``k`` at
``delta`` is ``min{k : cum_k >= delta}`` (``rule="textbook"``) or delve 0.1.50's
``max(1, #{i : cum_i < delta})`` (``rule="delve"``); saturation is ``k / D``.

Decisions:

* Rows: ``Linear`` outputs are rows as they are; 4-d (conv) outputs follow
  ``conv_method``: ``"channelwise"`` (every position a row of ``C`` values),
  ``"mean"`` / ``"max"`` (each channel pooled over H, W), ``"flatten"``
  (``C*H*W`` values a sample). Other shapes are rows of their last dimension.
* The covariance covers the whole pass, not the last mini-batch (delve
  recreates its covariance on every forward call, so its training numbers
  describe the last few samples of an epoch). With the whole data as one batch,
  ``rule="delve"`` equals delve's numbers.
* A layer whose outputs do not vary (trace 0) has ``k = 0`` (textbook) or 1 (delve,
  its ``max(1, ...)``).
* The ``Saturation`` callback measures the train and eval passes of each epoch
  apart, from the activations the Learner computes anyway (no extra forward
  pass); its history restarts at each fit. Each layer's outputs are copied
  (the copy converts them to float64) into a buffer of 64Ki values allocated
  once per fit, and folded into the sums by one ``addmm_`` when the next batch
  would not fit: the product reads data still in cache, and nothing is
  allocated per batch.
* Channelwise conv rows are never built as rows: the copy lays each batch's
  maps out as columns of a ``(C, N)`` buffer, so ``X^T X`` is one product
  ``X X^T`` on it (the batched product on the maps as they lie, ``sum_b M M^T``,
  measured 1.2-2.5x slower at LeNet-5's sizes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

from ..callbacks import Callback
from .layers import LayerProbe, batches, evaluating, split_inputs

__all__ = [
    "CONV_METHODS",
    "RULES",
    "Covariance",
    "Saturation",
    "intrinsic_dimensionality",
    "rows_of",
    "saturation",
]

CONV_METHODS = ("channelwise", "mean", "max", "flatten")
RULES = ("textbook", "delve")
COLUMNS = ["layer", "dim", "k", "saturation", "trace"]


def check_options(delta: Any, conv_method: Any, rule: Any) -> None:
    """A ``ValueError`` naming the bad option, if any."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta <= 1:
        raise ValueError(f"delta must be a number in (0, 1], got {delta!r}")
    if conv_method not in CONV_METHODS:
        raise ValueError(
            f"conv_method must be one of {', '.join(CONV_METHODS)}, got {conv_method!r}"
        )
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")


def rows_of(out: torch.Tensor, conv_method: str = "channelwise") -> torch.Tensor:
    """The samples (rows) a layer output contributes to its covariance, in float64."""
    out = out.detach().to(torch.float64)  # pool in float64 too: the sums are exact to 1e-15
    if out.dim() == 4:
        if conv_method == "channelwise":
            return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
        if conv_method == "mean":
            return out.mean((2, 3))
        if conv_method == "max":
            return out.amax((2, 3))
        if conv_method == "flatten":
            return out.reshape(out.shape[0], -1)
        raise ValueError(f"unknown conv_method {conv_method!r}")
    if out.dim() == 1:
        return out[:, None]
    return out.reshape(-1, out.shape[-1])


class Covariance:
    """Streaming float64 sums of ``X^T X``, ``sum x`` and ``n`` over batches of rows."""

    def __init__(self) -> None:
        self.xtx: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.n = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        if self.xtx is None:
            d = x.shape[1]
            self.xtx = torch.zeros(d, d, dtype=torch.float64, device=x.device)
            self.sum = torch.zeros(d, dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.xtx.shape[0]:
            raise ValueError(
                f"rows of {x.shape[1]} values after rows of {self.xtx.shape[0]}: a layer's"
                " output changed size within a pass"
            )
        self.xtx.addmm_(x.T, x)
        self.sum += x.sum(0)
        self.n += x.shape[0]

    def update_columns(self, x: torch.Tensor) -> None:
        """Add the rows of ``x.T`` for float64 columns ``x`` of shape ``(d, n)``."""
        if self.xtx is None:
            d = x.shape[0]
            self.xtx = torch.zeros(d, d, dtype=torch.float64, device=x.device)
            self.sum = torch.zeros(d, dtype=torch.float64, device=x.device)
        elif x.shape[0] != self.xtx.shape[0]:
            self.update(x.new_zeros(0, x.shape[0]))  # the size error
        self.xtx.addmm_(x, x.T)
        self.sum += x.sum(1)
        self.n += x.shape[1]

    def update_maps(self, out: torch.Tensor) -> None:
        """Add the channelwise rows of conv maps ``(batch, C, H, W)``: every position
        is a row, without building the rows (a transposing copy that cost more than
        the product)."""
        x = out.detach().to(torch.float64)
        b, c = x.shape[:2]
        if self.xtx is None:
            self.update(x.new_zeros(0, c))
        elif c != self.xtx.shape[0]:
            self.update(x.new_zeros(0, c))  # the same error as for rows
        maps = x.reshape(b, c, -1)
        self.xtx += torch.bmm(maps, maps.transpose(1, 2)).sum(0)
        self.sum += maps.sum((0, 2))
        self.n += b * maps.shape[2]

    def add(self, out: torch.Tensor, conv_method: str = "channelwise") -> None:
        """Add a layer output's rows (see ``rows_of``)."""
        if out.dim() == 4 and conv_method == "channelwise":
            self.update_maps(out)
        else:
            self.update(rows_of(out, conv_method))

    @property
    def dim(self) -> int:
        return 0 if self.xtx is None else self.xtx.shape[0]

    def matrix(self) -> torch.Tensor:
        """The centered covariance, divided by ``n``."""
        if self.n == 0:
            raise ValueError("no rows: the layer produced no output in this pass")
        mean = self.sum / self.n
        cov = self.xtx / self.n - torch.outer(mean, mean)
        return (cov + cov.T) / 2  # exactly symmetric for eigvalsh

    def eigenvalues(self) -> torch.Tensor:
        """Descending, negatives (rounding) clamped to 0, on the CPU."""
        values = torch.linalg.eigvalsh(self.matrix().cpu())
        return values.flip(0).clamp(min=0)

    def result(self, delta: float = 0.99, rule: str = "textbook") -> dict[str, Any]:
        """``dim, k, saturation, trace`` of the rows seen so far."""
        matrix = self.matrix()
        values = torch.linalg.eigvalsh(matrix.cpu()).flip(0).clamp(min=0)
        k = intrinsic_dimensionality(values, delta, rule)
        trace = float(matrix.diagonal().sum())
        return {"dim": self.dim, "k": k, "saturation": k / self.dim, "trace": trace}


def intrinsic_dimensionality(
    eigenvalues: torch.Tensor, delta: float = 0.99, rule: str = "textbook"
) -> int:
    """``k`` from eigenvalues sorted descending (see the module's docstring for the rules)."""
    check_options(delta, "channelwise", rule)
    values = torch.as_tensor(eigenvalues, dtype=torch.float64)
    total = values.sum()
    if total <= 0:
        return 0 if rule == "textbook" else 1
    below = int((values.cumsum(0) / total < delta).sum())
    if rule == "textbook":
        return min(below + 1, len(values))  # rounding can leave cum_D a hair under 1
    return max(1, below)


def _rows(covs: dict[str, Covariance], order: list[str], delta: float, rule: str) -> list[dict]:
    return [{"layer": name, **covs[name].result(delta, rule)} for name in order if name in covs]


def saturation(
    model: torch.nn.Module,
    data: Any,
    delta: float = 0.99,
    layers: Iterable[str] | None = None,
    conv_method: str = "channelwise",
    rule: str = "textbook",
    batch_size: int = 256,
    split: str = "eval",
) -> Any:
    """One pass over ``data`` (Dataset or DataLoader) in eval mode: a DataFrame
    ``split, layer, dim, k, saturation, trace``, one row per layer."""
    import pandas as pd

    check_options(delta, conv_method, rule)
    covs: dict[str, Covariance] = {}

    def record(name: str, out: torch.Tensor) -> None:
        if name not in covs:
            covs[name] = Covariance()
        covs[name].add(out, conv_method)

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = LayerProbe(model, layers, record)
    with evaluating(model), probe:
        for batch in batches(data, batch_size):
            x, _ = split_inputs(batch)
            model(x.to(device))
    rows = [{"split": split, **r} for r in _rows(covs, probe.order, delta, rule)]
    return pd.DataFrame(rows, columns=["split", *COLUMNS])


class Saturation(Callback):
    """Learner callback: saturation, intrinsic dimensionality and trace per layer,
    per epoch, train and eval apart, collected by probes (no hook, no edit).

    ``history`` is a DataFrame ``epoch, split, layer, dim, k, saturation, trace``;
    ``to_csv(path)`` writes it, ``plot(folder)`` writes ``lsat_epochN.png`` files.
    """

    order = 5
    buffer_elements = 1 << 16  # per layer: float64 outputs held (512 KiB) before one product

    def __init__(
        self,
        delta: float = 0.99,
        layers: Iterable[str] | None = None,
        conv_method: str = "channelwise",
        rule: str = "textbook",
    ):
        check_options(delta, conv_method, rule)
        self.delta, self.conv_method, self.rule = delta, conv_method, rule
        self.layers = None if layers is None else list(layers)
        self.rows: list[dict] = []
        self._covs: dict[str, Covariance] | None = None
        self._buffers: dict[str, _Pending] = {}
        self._probe: LayerProbe | None = None

    def before_fit(self, learn) -> None:
        self.rows, self._buffers = [], {}
        self._probe = LayerProbe(learn.model, self.layers, self._record)
        self._probe.__enter__()

    def before_epoch(self, learn) -> None:
        self._covs = {}  # the buffers stay allocated from one pass to the next

    def _record(self, name: str, out: torch.Tensor) -> None:
        if self._covs is None:  # only inside the Learner's epochs
            return
        if name not in self._covs:
            self._covs[name] = Covariance()
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._buffers[name] = _Pending(self.conv_method, self.buffer_elements)
        buffer.add(out, self._covs[name])

    def after_epoch(self, learn) -> None:
        for name, buffer in self._buffers.items():
            buffer.flush(self._covs[name])
        covs, self._covs = self._covs, None
        if not covs:
            return
        split = "train" if learn.training else "eval"
        for row in _rows(covs, self._probe.order, self.delta, self.rule):
            self.rows.append({"epoch": learn.epoch, "split": split, **row})

    def cleanup_fit(self, learn) -> None:
        self._covs, self._buffers = None, {}
        if self._probe is not None:
            probe, self._probe = self._probe, None
            probe.__exit__(None, None, None)

    @property
    def history(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["epoch", "split", *COLUMNS])

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write ``history`` as CSV."""
        self.history.to_csv(path, index=False)

    def plot(self, folder: str | os.PathLike = ".", prefix: str = "") -> list[str]:
        """One PNG per epoch, ``{prefix}lsat_epoch{N}.png``: saturation per layer."""
        return plot_saturation(self.history, folder, prefix)


class _Pending:
    """One layer's outputs waiting, in float64, for one product into its ``Covariance``.

    Rows are copied (converted to float64 by the copy itself) into a buffer
    allocated once per fit; channelwise conv maps land as columns of a ``(C, N)``
    buffer, so the whole buffer is one ``X^T X`` product with no transposing copy.
    """

    def __init__(self, conv_method: str, elements: int):
        self.conv_method, self.elements = conv_method, elements
        self.data: torch.Tensor | None = None  # (C, capacity) columns or (capacity, d) rows
        self.columns = False
        self.used = 0

    def add(self, out: torch.Tensor, cov: Covariance) -> None:
        columns = out.dim() == 4 and self.conv_method == "channelwise"
        if columns:
            b, d = out.shape[:2]
            n = b * out.shape[2] * out.shape[3]
        else:
            # A float64 copy: a later in-place op (ReLU(inplace=True)) cannot change it.
            out = rows_of(out, self.conv_method) if out.dim() != 2 else out
            n, d = out.shape
        data = self.data
        if data is None or self.columns != columns or data.shape[int(not columns)] != d:
            self.flush(cov)
            capacity = max(self.elements // max(d, 1), 1)
            shape = (d, capacity) if columns else (capacity, d)
            data = self.data = torch.empty(shape, dtype=torch.float64, device=out.device)
            self.columns = columns
        capacity = data.shape[1] if columns else data.shape[0]
        if self.used + n > capacity:
            self.flush(cov)
            if n > capacity:  # larger than the buffer: straight into the sums
                cov.add(out.detach().to(torch.float64, copy=True), self.conv_method)
                return
        if columns:
            maps = out.detach().reshape(b, d, -1).transpose(0, 1)
            data[:, self.used : self.used + n].view(d, b, -1).copy_(maps)
        else:
            data[self.used : self.used + n].copy_(out.detach())
        self.used += n
        if self.used + n > capacity:  # the next batch would not fit: add this one now, in cache
            self.flush(cov)

    def flush(self, cov: Covariance) -> None:
        if self.used:
            if self.columns:
                cov.update_columns(self.data[:, : self.used])
            else:
                cov.update(self.data[: self.used])
            self.used = 0


def plot_saturation(history: Any, folder: str | os.PathLike, prefix: str = "") -> list[str]:
    """One bar chart of saturation per layer (train and eval) for each epoch of ``history``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(history) == 0:
        raise ValueError("no saturation recorded: fit with the Saturation callback first")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for epoch, frame in history.groupby("epoch", sort=True):
        layers = list(dict.fromkeys(frame["layer"]))
        splits = list(dict.fromkeys(frame["split"]))
        fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(layers) + 2), 3.5))
        width = 0.8 / len(splits)
        for i, split in enumerate(splits):
            part = frame[frame["split"] == split].set_index("layer").reindex(layers)
            xs = [j + (i - (len(splits) - 1) / 2) * width for j in range(len(layers))]
            bars = ax.bar(xs, part["saturation"], width, label=split)
            ax.bar_label(bars, labels=[f"{int(k)}" for k in part["k"].fillna(0)], fontsize=7)
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("saturation (k / D)")
        ax.set_title(f"epoch {epoch}: saturation per layer (bars labelled with k)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = os.path.join(folder, f"{prefix}lsat_epoch{epoch}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
