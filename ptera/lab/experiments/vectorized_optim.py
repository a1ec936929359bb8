"""One optimizer step for a group of trials whose parameters are stacked.

The parameters of ``T`` trials are tensors of shape ``(T, *shape)``, one per
parameter of the model; each trial has its own numeric hyperparameters, held as
tensors of shape ``(T,)``. ``StackedOptimizer.step`` updates all trials with a
handful of whole-tensor operations per parameter (never a loop over trials), in
the order torch's own single-tensor ``SGD``/``Adam``/``AdamW`` do them.

Decisions:

* Supported: ``torch.optim.SGD`` (momentum, dampening, weight decay, nesterov)
  and ``torch.optim.Adam``/``AdamW`` (betas, eps, weight decay), without
  ``maximize`` or ``amsgrad``. ``supports`` says why anything else is not, and
  such trials run one by one.
* Per-trial state is read from and written to torch's own ``state_dict`` format
  (built with a real optimizer over one trial's parameters), so a checkpoint
  written here resumes in the serial path and the other way round.
* The results equal torch's within float tolerance, not bit for bit: a
  hyperparameter that torch passes as a Python scalar is a tensor here.
* SGD with momentum 0 keeps no buffer, as torch does; a group mixes trials with
  and without momentum only if dampening is 0 (then the two updates coincide).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["StackedOptimizer", "supports"]

NUMERIC = {
    torch.optim.SGD: ("lr", "momentum", "dampening", "weight_decay"),
    torch.optim.Adam: ("lr", "beta1", "beta2", "eps", "weight_decay"),
    torch.optim.AdamW: ("lr", "beta1", "beta2", "eps", "weight_decay"),
}
# Settings that must be left at these values (they change the code path).
FIXED = {"maximize": False, "amsgrad": False, "capturable": False, "differentiable": False}
IGNORED = {"foreach", "fused", "decoupled_weight_decay"}  # how torch runs it, not what


def supports(optimizer: Any, hyperparameters: Mapping[str, Any]) -> str | None:
    """``None`` if ``optimizer`` with these full hyperparameters can be stacked, else why not."""
    if optimizer not in NUMERIC:
        name = getattr(optimizer, "__name__", repr(optimizer))
        return f"optimizer {name} has no stacked step (SGD, Adam and AdamW do)"
    for key, value in hyperparameters.items():
        if key in FIXED and bool(value) != FIXED[key]:
            return f"{optimizer.__name__}({key}={value!r}) has no stacked step"
        if key in IGNORED or key in FIXED or key == "nesterov":
            continue
        if key == "betas":
            value = tuple(value)
            if len(value) != 2 or not all(_number(v) for v in value):
                return f"betas={value!r} are not two numbers"
        elif not _number(value):
            return f"{optimizer.__name__}({key}={value!r}) is not a number"
    return None


def code_path(optimizer: Any, hyperparameters: Mapping[str, Any]) -> tuple:
    """What must be equal for two trials to share one stacked step."""
    out: list = [optimizer.__module__ + "." + optimizer.__qualname__]
    if optimizer is torch.optim.SGD:
        out.append(bool(hyperparameters.get("nesterov", False)))
        # Without dampening, "no momentum" and "momentum 0" are the same update.
        if hyperparameters.get("dampening", 0) != 0:
            out.append(hyperparameters.get("momentum", 0) != 0)
    return tuple(out)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flat(hyper: Mapping[str, Any]) -> dict[str, float]:
    out = {k: v for k, v in hyper.items() if _number(v)}
    if "betas" in hyper:
        out["beta1"], out["beta2"] = (float(b) for b in hyper["betas"])
    return out


class StackedOptimizer:
    """``optimizer`` over stacked parameters, one set of hyperparameters per trial."""

    def __init__(
        self, optimizer: Any, params: Sequence[torch.Tensor], hyperparameters: Sequence[Mapping]
    ):
        why = supports(optimizer, hyperparameters[0]) if hyperparameters else "no trials"
        if why:
            raise ValueError(why)
        self.optimizer, self.params = optimizer, list(params)
        self.n = len(hyperparameters)
        self.nesterov = bool(hyperparameters[0].get("nesterov", False))
        self.decoupled = optimizer is torch.optim.AdamW
        # What is not a per-trial number is the same for the whole group.
        accepted = inspect.signature(optimizer).parameters  # defaults may hold more
        self.fixed = {
            k: v
            for k, v in hyperparameters[0].items()
            if k in accepted and k not in _flat(hyperparameters[0]) and k != "betas"
        }
        self.hyper: dict[str, torch.Tensor] = {}
        for name in NUMERIC[optimizer]:
            values = [float(_flat(h)[name]) for h in hyperparameters]
            self.hyper[name] = torch.tensor(values, dtype=torch.float64)
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        self._cache: dict[tuple, torch.Tensor] = {}
        self.steps = 0

    # -- hyperparameters --------------------------------------------------------------
    def set(self, trial: int, values: Mapping[str, Any]) -> None:
        """Change trial ``trial``'s hyperparameters (a ``ChangeOptimizer`` window)."""
        self._cache.clear()
        for name, value in _flat(values).items():
            if name not in self.hyper:
                raise ValueError(f"{self.optimizer.__name__} has no stacked {name}")
            self.hyper[name][trial] = float(value)

    def hyperparameters(self, trial: int) -> dict[str, Any]:
        """Trial ``trial``'s hyperparameters as torch names them (``betas``)."""
        out = {**self.fixed, **{k: float(v[trial]) for k, v in self.hyper.items()}}
        if "beta1" in out:
            out["betas"] = (out.pop("beta1"), out.pop("beta2"))
        return out

    def _h(self, name: str, like: torch.Tensor) -> torch.Tensor:
        # (T,) -> (T, 1, ..., 1) in the parameter's dtype and device, to broadcast over it;
        # kept until a window changes a value (no copy to the device per step).
        key = (name, like.dtype, like.device, like.dim())
        got = self._cache.get(key)
        if got is None:
            got = self.hyper[name].to(like.dtype).to(like.device)
            got = self._cache[key] = got.view(-1, *[1] * (like.dim() - 1))
        return got

    # -- the step ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter from its ``.grad`` (all trials at once)."""
        self.steps += 1
        if self.optimizer is torch.optim.SGD:
            self._sgd()
        else:
            self._adam()

    def _sgd(self) -> None:
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            grad = p.grad.add(p * self._h("weight_decay", p))
            momentum = self._h("momentum", p)
            if bool((self.hyper["momentum"] != 0).any()):
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(momentum).add_(grad * (1 - self._h("dampening", p)))
                grad = grad.add(buf * momentum) if self.nesterov else buf
            p.sub_(grad * self._h("lr", p))

    def _adam(self) -> None:
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            if not state:
                state["step"] = torch.zeros(self.n, dtype=torch.float64)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            lr, wd = self._h("lr", p), self._h("weight_decay", p)
            grad = p.grad
            if self.decoupled:
                p.mul_(1 - lr * wd)
            else:
                grad = grad.add(p * wd)
            beta1, beta2 = self._h("beta1", p), self._h("beta2", p)
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad * (1 - beta2), grad)
            step = state["step"]
            shape = (-1, *[1] * (p.dim() - 1))
            bc1 = (1 - self.hyper["beta1"] ** step).view(shape)
            bc2 = (1 - self.hyper["beta2"] ** step).sqrt().view(shape)
            # Bias corrections in float64 on the CPU (as torch's Python floats), then moved.
            step_size = (self.hyper["lr"].view(shape) / bc1).to(p.dtype).to(p.device)
            bc2 = bc2.to(p.dtype).to(p.device)
            denom = (state["exp_avg_sq"].sqrt() / bc2).add_(self._h("eps", p))
            p.sub_(state["exp_avg"] / denom * step_size)

    # -- per-trial state in torch's format ---------------------------------------------
    def state_dict(self, trial: int, params: Sequence[torch.Tensor]) -> dict:
        """Trial ``trial``'s state as ``optimizer(params).state_dict()`` would hold it."""
        opt = self.optimizer(list(params), **self.hyperparameters(trial))
        for p, state in zip(params, self.state):
            if not state:
                continue
            one = {}
            for k, v in state.items():
                if k == "momentum_buffer" and float(self.hyper["momentum"][trial]) == 0:
                    continue  # torch keeps no buffer without momentum
                if k == "step":
                    one[k] = torch.tensor(float(v[trial]), dtype=torch.float32)
                else:
                    one[k] = v[trial].detach().clone()  # a copy, not a view of the whole stack
            if one:  # torch keeps no entry for a parameter without state
                opt.state[p] = one
        return opt.state_dict()

    def load_state_dict(self, trial: int, params: Sequence[torch.Tensor], saved: dict) -> None:
        """Take trial ``trial``'s state (and hyperparameters) from a torch ``state_dict``."""
        opt = self.optimizer(list(params), **self.hyperparameters(trial))
        opt.load_state_dict(saved)
        group = _flat({k: v for k, v in opt.param_groups[0].items() if k != "params"})
        self.set(trial, {k: v for k, v in group.items() if k in self.hyper})
        for i, p in enumerate(params):
            one = opt.state.get(p, {})
            for k, v in one.items():
                if k == "step":
                    steps = self.state[i].setdefault(
                        "step", torch.zeros(self.n, dtype=torch.float64)
                    )
                    steps[trial] = float(v)
                    continue
                if k not in self.state[i]:
                    self.state[i][k] = torch.zeros_like(self.params[i])
                self.state[i][k][trial] = v.to(self.params[i].device)
