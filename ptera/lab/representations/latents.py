"""Latent representations: every chosen layer's output over a dataset, streamed to disk.

``extract_latents(model, data, folder, split="train")`` runs one pass in eval mode
and writes ``{split}-{layer}.npy`` per layer, ``{split}-labels.npy`` and a
``manifest.json`` (layers in model order, shapes, the checkpoint and configuration
the model came from). Load with ``numpy.load(path, allow_pickle=False)``.

Decisions:

* Plain ``.npy`` files, filled through ``numpy.lib.format.open_memmap``: the
  array is allocated on disk when a layer's first batch gives its shape and each
  batch is written into its rows, so memory stays bounded by one batch per layer
  (safetensors writes a whole tensor from memory at once). No pickle anywhere.
* Files are written under a temporary name and renamed when the pass ends: a
  crash never leaves a latent file that looks complete.
* Conv maps are reduced by adaptive average pooling to ``downsampling x
  downsampling`` (never enlarged: a smaller map keeps its size) and flattened;
  ``downsampling=None`` keeps the whole map; ``"pixelwise"`` makes every position
  a sample of ``C`` values (the manifest records the positions per sample, the
  labels stay one per sample). Other outputs are flattened per sample.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .layers import LayerProbe, batches, evaluating, split_inputs

__all__ = ["MANIFEST", "extract_latents", "latent_file", "load_manifest"]

MANIFEST = "manifest.json"


def latent_file(split: str, layer: str) -> str:
    """The file name of a layer's latents: ``{split}-{layer}.npy``, layer made path-safe."""
    return f"{split}-{re.sub(r'[^A-Za-z0-9_-]+', '-', layer).strip('-')}.npy"


def load_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an extraction folder (an empty one if none yet)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {"splits": {}}
    return json.loads(path.read_text())


def reduce(out: torch.Tensor, downsampling: int | str | None) -> tuple[torch.Tensor, int]:
    """``(rows, positions per sample)`` of one layer output, as written to disk."""
    out = out.detach()
    if out.dim() == 4:
        if downsampling == "pixelwise":
            return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]), out.shape[2] * out.shape[3]
        if downsampling is not None:
            size = (min(downsampling, out.shape[2]), min(downsampling, out.shape[3]))
            out = F.adaptive_avg_pool2d(out, size)
    return out.reshape(out.shape[0], -1), 1


def _check_downsampling(downsampling: Any) -> None:
    if downsampling is None or downsampling == "pixelwise":
        return
    if isinstance(downsampling, bool) or not isinstance(downsampling, int) or downsampling < 1:
        raise ValueError(
            f"downsampling must be a positive int, 'pixelwise' or None, got {downsampling!r}"
        )


def _length(data: Any) -> int:
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    return len(dataset)


class _Writer:
    """One ``.npy`` file filled batch by batch through a memory map."""

    def __init__(self, path: Path, n_rows: int, first: np.ndarray):
        self.path, self.tmp = path, path.with_name(path.name + ".partial")
        self.array = np.lib.format.open_memmap(
            self.tmp, mode="w+", dtype=first.dtype, shape=(n_rows, *first.shape[1:])
        )
        self.at = 0

    def write(self, rows: np.ndarray) -> None:
        end = self.at + len(rows)
        if end > len(self.array) or rows.shape[1:] != self.array.shape[1:]:
            raise ValueError(
                f"{self.path.name}: rows of shape {rows.shape} do not fit the"
                f" {self.array.shape} array the first batch announced"
            )
        self.array[self.at : end] = rows
        self.at = end

    def close(self) -> list[int]:
        if self.at != len(self.array):
            raise ValueError(f"{self.path.name}: {self.at} rows written of {len(self.array)}")
        shape = list(self.array.shape)
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.path)
        return shape

    def discard(self) -> None:
        self.array = None
        self.tmp.unlink(missing_ok=True)


def extract_latents(
    model: torch.nn.Module,
    data: Any,
    folder: str | os.PathLike,
    layers: Iterable[str] | None = None,
    downsampling: int | str | None = 4,
    split: str = "train",
    batch_size: int = 256,
    checkpoint: str | os.PathLike | None = None,
    config: dict | None = None,
) -> dict:
    """One pass over ``data``: each layer's output to ``folder/{split}-{layer}.npy``.

    Returns the split's manifest entry (``n``, ``labels``, and per layer ``file``,
    ``shape``, ``positions``); ``checkpoint`` and ``config`` are recorded in the
    manifest to say which model the latents came from.
    """
    _check_downsampling(downsampling)
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split must be a word (letters, digits, _), got {split!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = _length(data)
    writers: dict[str, _Writer] = {}
    positions: dict[str, int] = {}

    def record(name: str, out: torch.Tensor) -> None:
        rows, per = reduce(out, downsampling)
        rows = rows.float().cpu().numpy()
        writer = writers.get(name)
        if writer is None:
            writer = writers[name] = _Writer(folder / latent_file(split, name), n * per, rows)
            positions[name] = per
        writer.write(rows)

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = LayerProbe(model, layers, record)
    labels: _Writer | None = None
    try:
        with evaluating(model), probe:
            for batch in batches(data, batch_size):
                x, y = split_inputs(batch)
                model(x.to(device))
                if y is not None:
                    y = torch.as_tensor(y).cpu().numpy()
                    if labels is None:
                        labels = _Writer(folder / f"{split}-labels.npy", n, y)
                    labels.write(y)
        entry: dict[str, Any] = {"n": n, "downsampling": downsampling, "layers": {}}
        for name in probe.order:
            if name in writers:
                entry["layers"][name] = {
                    "file": writers[name].path.name,
                    "shape": writers[name].close(),
                    "positions": positions[name],
                }
        if labels is not None:
            labels.close()
            entry["labels"] = labels.path.name
    except BaseException:
        for w in [*writers.values(), *([labels] if labels else [])]:
            if w.tmp.exists():
                w.discard()
        raise
    manifest = load_manifest(folder)
    manifest["splits"][split] = entry
    manifest["model"] = type(model).__name__
    if checkpoint is not None:
        manifest["checkpoint"] = os.fspath(checkpoint)
    if config is not None:
        manifest["config"] = config
    tmp = folder / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(tmp, folder / MANIFEST)
    return entry
