"""A trial's identity: its configuration, normalized to JSON, and the hash of it.

Decisions:

* Values normalize to JSON: classes and functions by import path, functions also
  by a hash of their bytecode and constants (an edited lambda is a new trial),
  tensors by a hash of their bytes, tuples as lists.
* The model is identified by its class, its ``repr`` (the layer sizes) and a hash
  of the source file defining the class, so editing the model file starts new
  trials. Data are identified by a hash of their tensors when a dataset exposes
  them (``TensorDataset``, ``.data``/``.targets``), else by type, length and a
  sample of items.
* Seeds are derived from names and values by SHA-256, never from Python's ``hash``
  (which changes between processes).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import types
from typing import Any

import torch

__all__ = ["data_fingerprint", "derive_seed", "model_identity", "normalize", "trial_hash"]


def normalize(value: Any) -> Any:
    """A JSON value standing for ``value`` (stable across processes and runs)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, (list, tuple, range)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, torch.Tensor):
        return {"tensor": _tensor_hash(value), "shape": list(value.shape)}
    if isinstance(value, type):
        return f"{value.__module__}:{value.__qualname__}"
    if isinstance(value, (types.FunctionType, types.MethodType)):
        fn = getattr(value, "__func__", value)
        return f"{fn.__module__}:{fn.__qualname__}#{_code_hash(fn.__code__)}"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    if isinstance(value, torch.dtype):
        return str(value)
    raise TypeError(
        f"cannot identify {value!r} ({type(value).__name__}) in a trial's configuration:"
        " use numbers, strings, tuples, classes or functions"
    )


def _code_hash(code: types.CodeType) -> str:
    h = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        h.update((_code_hash(const) if isinstance(const, types.CodeType) else repr(const)).encode())
    h.update(repr(code.co_names).encode())
    return h.hexdigest()[:12]


def _tensor_hash(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def trial_hash(config: dict) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from names and values (the same in every process)."""
    text = json.dumps([normalize(p) for p in parts], sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def model_identity(model: Any) -> dict:
    """Class, layer sizes and a hash of the source file of the model (instance or factory)."""
    cls = model if isinstance(model, type) else type(model)
    try:
        source = inspect.getsourcefile(cls)
        with open(source, "rb") as f:
            code = hashlib.sha256(f.read()).hexdigest()[:16]
    except (TypeError, OSError):
        code = None
    shown = repr(model) if isinstance(model, torch.nn.Module) else normalize(model)
    return {"class": normalize(cls), "repr": shown, "code": code}


def data_fingerprint(dataset: Any) -> dict:
    """A hash of a dataset's contents (its tensors when it exposes them)."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is None and hasattr(dataset, "data"):
        tensors = tuple(
            t for t in (getattr(dataset, "data", None), getattr(dataset, "targets", None))
        )
    tensors = [torch.as_tensor(t) for t in tensors or () if t is not None]
    out = {"type": normalize(type(dataset)), "length": len(dataset)}
    if tensors:
        out["tensors"] = [_tensor_hash(t) for t in tensors]
    else:
        n = len(dataset)
        sample = [dataset[i] for i in sorted({0, n // 2, n - 1}) if n]
        out["sample"] = hashlib.sha256(repr(_flatten(sample)).encode()).hexdigest()[:16]
    return out


def _flatten(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return _tensor_hash(item)
    if isinstance(item, (list, tuple)):
        return [_flatten(x) for x in item]
    return repr(item)
