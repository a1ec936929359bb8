"""A trial's identity: its configuration, normalized to JSON, and the hash of it.

Decisions:

* Values normalize to JSON: classes and functions by import path, functions also
  by a hash of their bytecode and constants (an edited lambda is a new trial)
  and by what they captured (closure cells, defaults, keyword defaults, a bound
  ``__self__``, a ``functools.partial``'s arguments), normalized recursively:
  ``lambda input: input * k`` with k=1 and k=0 are two trials. A captured value
  that cannot be identified is an error naming it, never ignored. Tensors and
  modules by a hash of their bytes, tuples as lists.
* The model is identified by its class, its ``repr`` (the layer sizes) and a hash
  of the source file defining the class, so editing the model file starts new
  trials. Data are identified by a hash of their tensors when a dataset exposes
  them (``TensorDataset``, ``.data``/``.targets``), else by type, length and a
  sample of items.
* Seeds are derived from names and values by SHA-256, never from Python's ``hash``
  (which changes between processes).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import types
from typing import Any

import torch

__all__ = ["data_fingerprint", "derive_seed", "model_identity", "normalize", "trial_hash"]


def normalize(value: Any) -> Any:
    """A JSON value standing for ``value`` (stable across processes and runs).

    A function stands for its code *and* what it captured (closure cells, default
    arguments, a bound ``__self__``, a ``functools.partial``'s arguments), each
    normalized the same way; state that cannot be identified is a ``TypeError``
    naming the cell or default, never a silent collision.
    """
    return _normalize(value, "the value", set())


def _normalize(value: Any, where: str, active: set[int]) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, (type, types.ModuleType, torch.dtype, torch.device)):
        return _named(value)
    if isinstance(value, torch.Tensor):
        return {"tensor": _tensor_hash(value), "shape": list(value.shape)}
    if type(value).__module__ == "numpy":
        if hasattr(value, "shape") and value.shape != ():
            return _normalize(torch.as_tensor(value), where, active)
        return _normalize(value.item(), where, active)
    if id(value) in active:  # a function that captures itself (recursion)
        return "<recursive>"
    active.add(id(value))
    try:
        return _composite(value, where, active)
    finally:
        active.discard(id(value))


def _composite(value: Any, where: str, active: set[int]) -> Any:
    if isinstance(value, (list, tuple, range)):
        return [_normalize(v, f"{where}[{i}]", active) for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [_normalize(v, f"an item of {where}", active) for v in value]
        return {"set": sorted(items, key=lambda x: json.dumps(x, sort_keys=True))}
    if isinstance(value, dict):
        return {
            str(k): _normalize(v, f"{where}[{k!r}]", active)
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        }
    if isinstance(value, functools.partial):
        name = f"functools.partial of {_named(value.func)}"
        return {
            "partial": _normalize(value.func, f"the function of {name}", active),
            "args": [
                _normalize(a, f"positional argument {i} of {name}", active)
                for i, a in enumerate(value.args)
            ],
            "keywords": {
                k: _normalize(v, f"keyword argument {k!r} of {name}", active)
                for k, v in sorted(value.keywords.items())
            },
        }
    if isinstance(value, types.MethodType):
        out = _function(value.__func__, active)
        out["self"] = _normalize(
            value.__self__, f"the bound object (__self__) of {_named(value.__func__)}", active
        )
        return out
    if isinstance(value, types.FunctionType):
        return _function(value, active)
    if isinstance(value, types.BuiltinFunctionType):
        owner = getattr(value, "__self__", None)
        if owner is None or isinstance(owner, (types.ModuleType, type)):
            return _named(value)
        return {
            "builtin": _named(value),
            "self": _normalize(owner, f"the bound object (__self__) of {_named(value)}", active),
        }
    if isinstance(value, torch.nn.Module):
        return {"module": _named(type(value)), "repr": repr(value), "state": _state(value)}
    if callable(value) and hasattr(value, "__qualname__"):
        return _named(value)
    raise TypeError(
        f"cannot identify {where}: {value!r} ({type(value).__name__}) in a trial's"
        " configuration: use numbers, strings, tuples, tensors, classes or functions"
        " (of such values)"
    )


def _function(fn: types.FunctionType, active: set[int]) -> dict:
    """Code, closure cells, defaults and keyword defaults of a plain function."""
    name = _named(fn)
    out: dict[str, Any] = {"function": f"{name}#{_code_hash(fn.__code__)}"}
    if fn.__closure__:
        cells = {}
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__):
            try:
                content = cell.cell_contents
            except ValueError:  # a cell not assigned yet
                cells[var] = "<empty>"
                continue
            cells[var] = _normalize(content, f"the closure cell {var!r} of {name}", active)
        out["closure"] = cells
    if fn.__defaults__:
        params = fn.__code__.co_varnames[: fn.__code__.co_argcount]
        named = params[len(params) - len(fn.__defaults__) :]
        out["defaults"] = [
            _normalize(v, f"the default of argument {p!r} of {name}", active)
            for p, v in zip(named, fn.__defaults__)
        ]
    if fn.__kwdefaults__:
        out["kwdefaults"] = {
            k: _normalize(v, f"the default of keyword argument {k!r} of {name}", active)
            for k, v in sorted(fn.__kwdefaults__.items())
        }
    return out


def _named(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}:{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _state(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(_tensor_hash(tensor).encode())
    return h.hexdigest()[:16]


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
