"""Callbacks that change how the Learner trains: one-cycle schedule, clipping, mixed precision.

Decisions:

* ``OneCycle`` is torch's ``OneCycleLR``, built on the optimizer of the fit it
  runs in and stepped after each optimizer step. Momentum is cycled only when the
  optimizer has some (``betas``, or ``momentum`` > 0): cycling it on plain SGD
  would silently turn momentum on.
* ``MixedPrecision`` runs each batch's forward pass and loss under
  ``torch.autocast`` and leaves it before the backward pass (autocast is for the
  forward). ``float16`` adds a ``GradScaler`` (the learner's ``grad_scaler``,
  which its backward and step use); ``bfloat16`` needs none, on the CPU too.
* ``GradClip`` unscales the gradients first when a ``GradScaler`` is active, so
  ``max_norm`` is in the units of the true gradients. It keeps the last total norm
  as a tensor (``last_norm``): reading it as a number would sync the device.
"""

from __future__ import annotations

from typing import Any

import torch

from .callbacks import Callback

__all__ = ["GradClip", "MixedPrecision", "OneCycle"]


class OneCycle(Callback):
    """torch's ``OneCycleLR`` over ``total_steps`` optimizer steps, peaking at ``lr_max``."""

    def __init__(self, lr_max: float, total_steps: int, **kwargs: Any):
        if total_steps < 1:
            raise ValueError(f"OneCycle needs at least one step, got total_steps={total_steps}")
        self.lr_max, self.total_steps, self.kwargs = lr_max, total_steps, kwargs

    def before_fit(self, learn) -> None:
        kwargs = dict(self.kwargs)
        if "cycle_momentum" not in kwargs:
            group = learn.opt.param_groups[0]
            kwargs["cycle_momentum"] = "betas" in group or group.get("momentum", 0) > 0
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            learn.opt, self.lr_max, total_steps=self.total_steps, **kwargs
        )

    def after_step(self, learn) -> None:
        # Not past the last step: the optimizer keeps the schedule's final rate.
        if self.scheduler.last_epoch + 1 < self.total_steps:
            self.scheduler.step()


class GradClip(Callback):
    """Clip the gradients' total norm to ``max_norm`` after each backward pass."""

    order = 50  # after callbacks that edit gradients, whatever their order

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        if not max_norm > 0:
            raise ValueError(f"GradClip needs max_norm > 0, got {max_norm}")
        self.max_norm, self.norm_type = max_norm, norm_type
        self.last_norm: torch.Tensor | None = None

    def after_backward(self, learn) -> None:
        if learn.grad_scaler is not None:
            learn.grad_scaler.unscale_(learn.opt)
        self.last_norm = torch.nn.utils.clip_grad_norm_(
            learn.model.parameters(), self.max_norm, self.norm_type
        )


class MixedPrecision(Callback):
    """Forward passes under ``torch.autocast(dtype)``; a ``GradScaler`` for ``float16``."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"MixedPrecision needs torch.bfloat16 or torch.float16, got {dtype}")
        self.dtype = dtype
        self.autocast: Any = None

    def before_fit(self, learn) -> None:
        self.device_type = None  # known at the first batch, after DeviceCB moved the model

    def before_batch(self, learn) -> None:
        if self.device_type is None:
            param = next(learn.model.parameters(), None)
            self.device_type = param.device.type if param is not None else "cpu"
            if self.dtype is torch.float16:
                learn.grad_scaler = torch.amp.GradScaler(self.device_type)
        self.autocast = torch.autocast(self.device_type, dtype=self.dtype)
        self.autocast.__enter__()

    def _leave(self) -> None:
        if self.autocast is not None:
            autocast, self.autocast = self.autocast, None
            autocast.__exit__(None, None, None)

    def before_backward(self, learn) -> None:
        self._leave()

    def cleanup_batch(self, learn) -> None:
        self._leave()

    def cleanup_fit(self, learn) -> None:
        learn.grad_scaler = None
