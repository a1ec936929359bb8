"""Per-neuron learning-rate factors, applied as a transform of the gradients.

``NeuronRates`` is a Learner callback. A layer may carry a factor per neuron
(its weight rows and bias entries) and per incoming neuron (its weight columns:
input features, or input channels of a ``Conv2d``). After ``backward`` each
gradient is multiplied by its factors; the model is not touched.

Decisions:

* A gradient factor is exactly a learning-rate factor for plain SGD; optimizers
  that normalise the gradient's scale (Adam) follow it only in direction and at 0.
* Factor 0 freezes exactly, whatever the optimizer: momentum and weight decay act
  outside the gradient, so the entries at 0 are saved before ``step`` and written
  back after it.
* Factors follow surgery: pruned rows go, new rows come with factor 1.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..callbacks import Callback

__all__ = ["NeuronRates"]


class NeuronRates(Callback):
    """Per-neuron and per-incoming-neuron gradient factors of the layers of ``model``."""

    order = -5

    def __init__(self, model: nn.Module):
        self.model = model
        self.factors: dict[str, dict[str, torch.Tensor]] = {}
        self._saved: list = []

    def set(self, layer: str, axis: str, neurons: Iterable[int] | torch.Tensor, lr: float) -> None:
        """Set factor ``lr`` of ``neurons`` on ``axis`` (``"out"``: rows, ``"in"``: columns)."""
        module = self.model.get_submodule(layer)
        dim = 0 if axis == "out" else 1
        size = module.weight.shape[dim]
        factors = self.factors.setdefault(layer, {})
        if axis not in factors:
            factors[axis] = torch.ones(size, device=module.weight.device)
        idx = torch.as_tensor(
            list(neurons) if not isinstance(neurons, torch.Tensor) else neurons, dtype=torch.long
        )
        factors[axis][idx.to(factors[axis].device)] = float(lr)

    def _weights(self, layer: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None]:
        """The module, the weight's factor (broadcast to its shape) and the bias's factor."""
        module = self.model.get_submodule(layer)
        w = module.weight
        factor = torch.ones((), device=w.device)
        out, inp = self.factors[layer].get("out"), self.factors[layer].get("in")
        shape = [1] * w.dim()
        if out is not None:
            factor = factor * out.view(-1, *shape[1:])
        if inp is not None:
            factor = factor * inp.view(1, -1, *shape[2:])
        return module, factor, out

    def after_backward(self, learn) -> None:
        for layer in self.factors:
            module, wf, bf = self._weights(layer)
            if module.weight.grad is not None:
                module.weight.grad.mul_(wf)
            if bf is not None and module.bias is not None and module.bias.grad is not None:
                module.bias.grad.mul_(bf)

    def before_step(self, learn) -> None:
        self._saved = []
        for layer in self.factors:
            module, wf, bf = self._weights(layer)
            for param, f in ((module.weight, wf), (module.bias, bf)):
                if param is not None and f is not None and bool((f == 0).any()):
                    mask = (f == 0).expand_as(param)
                    self._saved.append((param, mask, param.detach().clone()))

    def after_step(self, learn) -> None:
        with torch.no_grad():
            for param, mask, old in self._saved:
                param.copy_(torch.where(mask, old, param))
        self._saved = []

    def follow(self, change) -> None:
        """Replay a surgery ``Change`` on the factors (new neurons get factor 1)."""
        out = self.factors.get(change.layer, {}).get("out")
        if out is not None:
            self.factors[change.layer]["out"] = change.apply(out, 0, 1, fill=1.0)
        for consumer, factor in change.consumers:
            inp = self.factors.get(consumer, {}).get("in")
            if inp is not None:
                self.factors[consumer]["in"] = change.apply(inp, 0, factor, fill=1.0)

    def state_dict(self) -> dict:
        """The factors, on the CPU (for checkpoints)."""
        return {
            layer: {axis: f.cpu() for axis, f in fs.items()} for layer, fs in self.factors.items()
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore factors saved by ``state_dict``."""
        self.factors = {}
        for layer, fs in state.items():
            device = self.model.get_submodule(layer).weight.device
            self.factors[layer] = {axis: f.to(device) for axis, f in fs.items()}
