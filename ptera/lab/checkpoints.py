"""What a Learner's checkpoint holds, and how it is written and read.

A checkpoint is a dict of tensors and plain values: the model's and the optimizer's
state dicts, the epoch, and the random states that decide what comes next
(torch's, CUDA's, Python's, NumPy's, and the generator of each loader's sampler),
so that training resumed from it continues exactly as if it had never stopped.

Decisions:

* Files are written to a temporary name and renamed: a crash never leaves half a
  checkpoint.
* Files are read with ``weights_only=True``: no arbitrary pickle. NumPy's state is
  stored as a tensor for that reason.
* A loader's generators are found where ``DataLoader`` keeps them (``generator``,
  ``sampler.generator``); a loader without one is shuffled from torch's global
  state, which is saved anyway.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import torch

__all__ = ["random_states", "read_checkpoint", "set_random_states", "write_checkpoint"]


def write_checkpoint(path: str | os.PathLike, state: dict) -> str:
    """Save ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True``; a clear error if it is not one."""
    state = torch.load(os.fspath(path), weights_only=True, map_location="cpu")
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{os.fspath(path)} is not a Learner checkpoint (no 'model' entry)")
    return state


def _generators(loader: Any) -> list[torch.Generator]:
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def random_states(loaders: dict[str, Any]) -> dict:
    """Every random state that decides the rest of a training run, as tensors and values."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "loaders": {
            name: [g.get_state() for g in _generators(loader)] for name, loader in loaders.items()
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        states["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return states


def set_random_states(states: dict, loaders: dict[str, Any]) -> None:
    """Restore what ``random_states`` saved (loaders by name; a mismatch is an error)."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy

        kind, keys, pos, has_gauss, cached = states["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    for name, saved in states["loaders"].items():
        gens = _generators(loaders.get(name))
        if len(gens) != len(saved):
            raise ValueError(
                f"the checkpoint has {len(saved)} random generator(s) for the {name} loader,"
                f" but this learner's {name} loader has {len(gens)}: build the loaders as"
                " the checkpointed run did"
            )
        for gen, state in zip(gens, saved):
            gen.set_state(state)
