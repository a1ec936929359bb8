"""FLOPs per inference, counted by ``torch.utils.flop_counter`` (no hand-written counter).

Decisions:

* One sample (batch of 1) of zeros, in eval mode under ``no_grad``; the FLOPs
  are torch's count (a multiply-add is 2 FLOPs; elementwise operations are not
  counted).
* ``computational_info`` adds the parameter count and the FLOPs by module, the
  content of a run's ``computational_info.json``.
"""

from __future__ import annotations

from typing import Any

import torch

from .layers import evaluating

__all__ = ["computational_info", "flops"]


def _count(model: torch.nn.Module, input_shape: tuple[int, ...]) -> Any:
    from torch.utils.flop_counter import FlopCounterMode

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with evaluating(model), counter:
        model(torch.zeros(1, *input_shape, device=device))
    return counter


def flops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one ``input_shape`` sample (no batch dimension)."""
    return int(_count(model, input_shape).get_total_flops())


def computational_info(model: torch.nn.Module, input_shape: tuple[int, ...]) -> dict:
    """``flops_per_inference``, ``parameters``, ``input_shape`` and ``flops_by_module``."""
    counter = _count(model, input_shape)
    by_module = {
        name: int(sum(ops.values()))
        for name, ops in counter.get_flop_counts().items()
        if name != "Global"
    }
    return {
        "flops_per_inference": int(counter.get_total_flops()),
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_shape": list(input_shape),
        "flops_by_module": by_module,
    }
