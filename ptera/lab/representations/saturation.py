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
* ``rule="delve"`` is what delve 0.1.50's code returns, checked against the package:
  its step back up when ``cum`` falls more than 0.02 short of ``delta`` slices an
  already cut eigenbasis (``[:, :m + 1]`` of ``m`` columns), so it never adds one.
* The ``Saturation`` callback measures the train and eval passes of each epoch
  apart, from the activations the Learner computes anyway (no extra forward
  pass); its history restarts at each fit, and the LR finder's run is not
  measured. Nothing is read back per batch (no ``.item()``, no sync).
* Each batch is copied at once (the copy converts to float64, and a later
  in-place op such as ``ReLU(inplace=True)`` cannot change it) into a workspace
  kept per layer and batch shape. Channelwise conv maps (many rows of few
  values) are added at once, as columns beside a row of ones: one ``addmm_``
  adds ``X^T [X 1]``, ``X^T X`` and ``sum x`` together (a separate sum cost more
  than the extra column). Other rows (Linear outputs: few rows of many values)
  stay contiguous and are added by one product and one ``addmv_`` for the sums
  (here a column of ones, 121 columns for 120 values, made the product dearer
  than the ``addmv_``).
* Layers of 120 values or more add only the upper block triangle of ``X^T X``
  (blocks of about 60 rows; mirrored when read): 12-34% less product time.
* Measured on LeNet-5 and digits (2026-11-25) and not kept: holding batches for
  one larger product (Linear rows: 4 or 16 batches a product moved the time to
  the pass's end without saving any; conv maps: slower, the workspace leaves the
  cache between batches), holding the pass's
  float32 outputs for one product per pass (no faster), and half the product
  through scipy's BLAS ``syrk`` for Linear layers (a few % faster, but its
  OpenBLAS thread pool is not torch's and spins on larger batches).
* Channelwise conv rows are never built as rows: the copy lays each batch's
  maps out as columns of a ``(C + 1, N)`` workspace, so the product reads them
  as they are (the batched product on the maps, ``sum_b M M^T``, measured
  1.2-2.5x slower at LeNet-5's sizes).
* Exact means float64 throughout: products in float32 added to float64 sums
  (measured 1.16-1.17x instead of 1.24-1.34x) no longer equal the float64
  reference (the trace to 1e-9), so they are not offered.
* Eigenvalues come from ``torch.linalg.eigvalsh`` (LAPACK on torch's threads);
  the small matrix arithmetic around it is numpy's, far cheaper per call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
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
    """Streaming float64 sums of ``X^T X``, ``sum x`` and ``n`` over batches of rows.

    Each batch is copied (converted to float64 by the copy) into a workspace kept
    for its shape and added at once: columns (conv maps, ``update_columns``)
    beside a row of ones by one product ``X^T [X 1]``; rows (``update``, Linear
    outputs) by one product and one ``addmv_`` for the sums (see the module's
    decisions). A workspace holds at most ``max_elements`` values (a larger batch
    goes in parts), and at most ``max_shapes`` of them are kept.
    """

    max_shapes = 4  # a pass has two batch shapes (full, last); train and eval may differ

    def __init__(self, max_elements: int = 1 << 18):
        self.n = 0
        self.max_elements = max_elements
        self._acc: torch.Tensor | None = None  # (d, d + 1): X^T X beside sum x
        self._layouts: dict = {}

    @property
    def dim(self) -> int:
        return 0 if self._acc is None else self._acc.shape[0]

    @property
    def xtx(self) -> torch.Tensor | None:
        if self._acc is None:
            return None
        upper = self._acc[:, :-1].triu()  # the blocks below the diagonal are not computed
        return upper + upper.triu(1).T

    @property
    def sum(self) -> torch.Tensor | None:
        return None if self._acc is None else self._acc[:, -1]

    def reset(self) -> None:
        """Forget the rows seen (the workspaces stay for the next pass)."""
        if self._acc is not None:
            self._acc.zero_()
        self.n = 0

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of ``x``, shape ``(n, d)``."""
        if x.dim() != 2:
            raise ValueError(f"rows must be a 2-d tensor (n, d), got shape {tuple(x.shape)}")
        self._add(x, False)

    def update_columns(self, x: torch.Tensor) -> None:
        """Add the rows of ``x.T`` for columns ``x`` of shape ``(d, n)``."""
        if x.dim() != 2:
            raise ValueError(f"columns must be a 2-d tensor (d, n), got shape {tuple(x.shape)}")
        self._add(x, True)

    def update_maps(self, out: torch.Tensor) -> None:
        """Add the channelwise rows of conv maps ``(batch, C, H, W)``: every position
        is a row, without building the rows (the copy lays the maps out as columns)."""
        if out.dim() != 4:
            raise ValueError(
                f"conv maps must be 4-d (batch, C, H, W), got shape {tuple(out.shape)}"
            )
        self._add(out, True)

    def add(self, out: torch.Tensor, conv_method: str = "channelwise") -> None:
        """Add a layer output's rows (see ``rows_of``)."""
        if out.dim() == 4:
            if conv_method == "channelwise":
                self._add(out, True)
                return
            if conv_method == "flatten":
                out = out.reshape(out.shape[0], -1)  # the copy converts: no float64 pass first
            else:
                out = rows_of(out, conv_method)  # pooled in float64
        elif out.dim() == 1:
            out = out[:, None]
        elif out.dim() > 2:
            out = out.reshape(-1, out.shape[-1])
        self._add(out, False)

    def _add(self, x: torch.Tensor, columns: bool) -> None:
        """Add rows ``(n, d)``, columns ``(d, n)`` or maps ``(b, d, ...)`` (columns)."""
        layout = self._layouts.get((x.shape, columns, x.device))
        if layout is None:
            parts = self._parts(x, columns)
            if parts is not None:
                for part in parts:
                    self._add(part, columns)
                return
            layout = self._layout(x, columns)
        if x.requires_grad:
            x = x.detach()
        layout.dest.copy_(x.transpose(0, 1) if layout.maps else x)
        for out, left, right in layout.products:
            if right.dim() == 2:
                out.addmm_(left, right)
            else:
                out.addmv_(left, right)
        self.n += layout.rows

    def _parts(self, x: torch.Tensor, columns: bool) -> Any:
        """``x`` split along its samples into parts whose workspace fits, or ``None``."""
        axis = 1 if columns and x.dim() == 2 else 0
        d = x.shape[0 if axis else 1]
        per_sample = (d + 1) * (math.prod(x.shape[2:]) if columns else 1)
        if x.shape[axis] > 1 and x.shape[axis] * per_sample > self.max_elements:
            return x.split(max(self.max_elements // per_sample, 1), dim=axis)
        return None

    def _layout(self, x: torch.Tensor, columns: bool) -> _Layout:
        if len(self._layouts) >= self.max_shapes:  # shapes that vary: keep the latest few
            del self._layouts[next(iter(self._layouts))]
        maps = columns and x.dim() > 2
        d = (x.shape[1] if maps else x.shape[0]) if columns else x.shape[1]
        acc = self._acc
        if acc is None or (self.n == 0 and (acc.shape[0] != d or acc.device != x.device)):
            acc = self._acc = torch.zeros(d, d + 1, dtype=torch.float64, device=x.device)
            self._layouts = {}  # their products write views of the old sums
        elif acc.shape[0] != d:
            raise ValueError(
                f"rows of {d} values after rows of {acc.shape[0]}: a layer's"
                " output changed size within a pass"
            )
        rows = x.numel() // d if columns else x.shape[0]
        blocks = _cuts(d) or [(0, d)]  # one block: the whole product
        if columns:  # (d + 1, rows), the last row ones; maps (b, C, ...) land as (C, b, ...)
            work = torch.empty(d + 1, rows, dtype=torch.float64, device=x.device)
            dest = work[:d].view(d, x.shape[0], *x.shape[2:]) if maps else work[:d]
            products = [(acc[a:b, a:], work[a:b], work[a:].T) for a, b in blocks]
            work[d] = 1
        else:  # (rows, d); the sums by a product with ones (cheaper here than a column)
            work = dest = torch.empty(rows, d, dtype=torch.float64, device=x.device)
            ones = torch.ones(rows, dtype=torch.float64, device=x.device)
            products = [(acc[a:b, a:d], work[:, a:b].T, work[:, a:]) for a, b in blocks]
            products.append((acc[:, d], work.T, ones))
        layout = _Layout(rows, dest, products, maps)
        self._layouts[(x.shape, columns, x.device)] = layout
        return layout

    def matrix(self) -> torch.Tensor:
        """The centered covariance, divided by ``n`` (float64, on the CPU)."""
        upper = np.triu(self._upper())  # mirrored: exactly symmetric
        return torch.from_numpy(upper + np.triu(upper, 1).T)

    def _upper(self) -> Any:
        """The covariance, right in its upper triangle only (the blocks below the
        diagonal are not computed): all that ``eigvalsh(..., UPLO="U")`` reads."""
        if self.n == 0:
            raise ValueError("no rows: the layer produced no output in this pass")
        sums = self._acc.cpu().numpy()  # numpy: a few small ops, each far cheaper than in torch
        mean = sums[:, -1] / self.n
        return sums[:, :-1] / self.n - np.outer(mean, mean)

    def eigenvalues(self) -> torch.Tensor:
        """Descending, negatives (rounding) clamped to 0, on the CPU."""
        return torch.linalg.eigvalsh(self.matrix()).flip(0).clamp(min=0)

    def result(self, delta: float = 0.99, rule: str = "textbook") -> dict[str, Any]:
        """``dim, k, saturation, trace`` of the rows seen so far."""
        upper = self._upper()
        # torch's eigvalsh: LAPACK on torch's threads (numpy's may start its own pool)
        values = torch.linalg.eigvalsh(torch.from_numpy(upper), UPLO="U").numpy()
        k = _k(values[::-1].clip(min=0), delta, rule)
        return {"dim": self.dim, "k": k, "saturation": k / self.dim, "trace": float(upper.trace())}


class _Layout:
    """A ``Covariance`` workspace for one batch shape: where the batch is copied,
    and the products (one per block, ``addmv_`` for sums of rows) that add it."""

    __slots__ = ("dest", "maps", "products", "rows")

    def __init__(self, rows: int, dest: torch.Tensor, products: list, maps: bool):
        self.rows, self.dest, self.products, self.maps = rows, dest, products, maps


def _cuts(d: int, block: int = 60) -> list[tuple[int, int]]:
    """Row blocks of ``X^T X`` for a product of the upper block triangle only, for
    ``d`` over ``block`` (``[]``: one product). Measured on 64 rows, one thread:
    120 values, 2 blocks 12% faster than one product; 512 values, 8 blocks 34%."""
    k = d // block  # blocks narrower than about 60 were slower
    if k < 2:
        return []
    cuts = [round(i * d / k) for i in range(k + 1)]
    return list(zip(cuts, cuts[1:]))


def intrinsic_dimensionality(
    eigenvalues: torch.Tensor, delta: float = 0.99, rule: str = "textbook"
) -> int:
    """``k`` from eigenvalues sorted descending (see the module's docstring for the rules)."""
    check_options(delta, "channelwise", rule)
    return _k(torch.as_tensor(eigenvalues, dtype=torch.float64).cpu().numpy(), delta, rule)


def _k(values: Any, delta: float, rule: str) -> int:
    """``k`` from a float64 numpy array of eigenvalues sorted descending."""
    cum = values.cumsum()
    total = cum[-1] if len(cum) else 0.0  # the last cum: cum_D is then exactly 1
    if total <= 0:
        return 0 if rule == "textbook" else 1
    below = int((cum / total < delta).sum())
    if rule == "textbook":
        return min(below + 1, len(values))
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
    runs_in_lr_find = False
    buffer_elements = 1 << 18  # float64 values (2 MiB) a workspace holds; larger batches in parts

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
        self._covs: dict[str, Covariance] = {}  # kept from pass to pass: their workspaces
        self._active = False
        self._probe: LayerProbe | None = None

    def before_fit(self, learn) -> None:
        self.rows, self._covs = [], {}
        self._probe = LayerProbe(learn.model, self.layers, self._record)
        self._probe.__enter__()

    def before_epoch(self, learn) -> None:
        for cov in self._covs.values():
            cov.reset()
        self._active = True

    def _record(self, name: str, out: torch.Tensor) -> None:
        if not self._active:  # only inside the Learner's epochs
            return
        cov = self._covs.get(name)
        if cov is None:
            cov = self._covs[name] = Covariance(self.buffer_elements)
        cov.add(out, self.conv_method)

    def after_epoch(self, learn) -> None:
        self._active = False
        covs = {name: cov for name, cov in self._covs.items() if cov.n}
        if not covs:
            return
        split = "train" if learn.training else "eval"
        for row in _rows(covs, self._probe.order, self.delta, self.rule):
            self.rows.append({"epoch": learn.epoch, "split": split, **row})

    def cleanup_fit(self, learn) -> None:
        self._covs, self._active = {}, False
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
