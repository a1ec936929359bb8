"""Checkpoints of a workbench: numbered files of tensors and plain data, written atomically.

Decisions:

* A checkpoint holds only tensors, numbers, strings, lists and dicts, so it is read
  with ``torch.load(..., weights_only=True)``; the architecture is data too (each
  module's size attributes and each tensor's shape), never a pickled module.
* Each file is written to a temporary name and renamed; an ``index.json`` (also
  renamed into place) lists id, step and architecture for ``print``.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from torch import nn

__all__ = ["CheckpointStore", "architecture", "reshape_to"]

_SIZE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "num_features")


class CheckpointStore:
    """Checkpoints ``0, 1, ...`` in ``root`` (a new temporary folder, made at the first
    save, when ``root`` is ``None``); ``print(store)`` lists them."""

    def __init__(self, root: str | os.PathLike | None, prefix: str = "ptera-workbench-"):
        self.root = os.fspath(root) if root is not None else None
        self.prefix = prefix
        self.index: dict[str, dict] = {}
        path = os.path.join(self.root, "index.json") if self.root else None
        if path and os.path.exists(path):
            with open(path) as f:
                self.index = json.load(f)

    @property
    def ids(self) -> list[int]:
        """The ids of the checkpoints saved so far."""
        return sorted(int(i) for i in self.index)

    def path(self, checkpoint_id: int) -> str:
        """The file of checkpoint ``checkpoint_id``."""
        return os.path.join(self.root, f"checkpoint-{checkpoint_id:04d}.pt")

    def save(self, payload: dict, summary: dict) -> int:
        """Write ``payload`` as a new checkpoint; returns its id."""
        if self.root is None:
            self.root = tempfile.mkdtemp(prefix=self.prefix)
        os.makedirs(self.root, exist_ok=True)
        checkpoint_id = max(self.ids, default=-1) + 1
        _atomic(self.path(checkpoint_id), lambda tmp: torch.save(payload, tmp))
        self.index[str(checkpoint_id)] = summary
        _atomic(os.path.join(self.root, "index.json"), lambda tmp: _write_json(tmp, self.index))
        return checkpoint_id

    def load(self, checkpoint_id: int) -> dict:
        """The payload of checkpoint ``checkpoint_id`` (read with ``weights_only=True``)."""
        if str(checkpoint_id) not in self.index:
            where = f" in {self.root}" if self.root else ""
            raise LookupError(f"no checkpoint {checkpoint_id!r}{where}; checkpoints: {self.ids}")
        return torch.load(self.path(checkpoint_id), weights_only=True)

    def __repr__(self) -> str:
        if not self.index:
            return "no checkpoints" + (f" in {self.root}" if self.root else "")
        lines = [f"checkpoints in {self.root}:"]
        for i in self.ids:
            s = self.index[str(i)]
            layers = " ".join(f"{name}:{size}" for name, size in s["layers"].items())
            lines.append(f"  {i:4d}  step {s['step']:6d}  seen {s['seen']:8d}  layers {layers}")
        return "\n".join(lines)


def _write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def _atomic(path: str, write) -> None:
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def architecture(model: nn.Module) -> dict:
    """Size attributes of every module and the shape of every parameter and buffer."""
    sizes = {}
    for name, module in model.named_modules():
        attrs = {
            a: getattr(module, a) for a in _SIZE_ATTRS if isinstance(getattr(module, a, None), int)
        }
        if attrs:
            sizes[name] = attrs
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"sizes": sizes, "shapes": shapes}


def reshape_to(model: nn.Module, arch: dict) -> None:
    """Give ``model``'s modules the sizes and tensor shapes of ``arch`` (values are loaded after)."""
    modules = dict(model.named_modules())
    missing = sorted(set(arch["sizes"]) - set(modules))
    if missing:
        raise ValueError(f"the checkpoint's architecture has modules the model lacks: {missing}")
    for name, shape in arch["shapes"].items():
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        current = getattr(module, attr, None) if module is not None else None
        if not isinstance(current, torch.Tensor):
            raise ValueError(f"the checkpoint has a tensor {name!r} that the model lacks")
        if list(current.shape) != shape:
            empty = current.new_empty(shape)
            if isinstance(current, nn.Parameter):
                setattr(module, attr, nn.Parameter(empty, requires_grad=current.requires_grad))
            else:
                setattr(module, attr, empty)
    for name, attrs in arch["sizes"].items():
        for attr, value in attrs.items():
            setattr(modules[name], attr, value)
