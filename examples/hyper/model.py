"""The model: a seed-style MLP whose layer declares a temperature."""

import torch

from ptera import Recurrence, default, ptera, tag


@ptera
def layer(inp):
    W: torch.nn.Parameter
    b: torch.nn.Parameter
    actfn: object
    # Temperature of every layer's activation
    T: tag.HyperParameter & float = default(1.0)

    return actfn((inp @ W + b) / T)


@ptera
def sequential(inp):
    layers: list

    h = Recurrence()
    h[0] = inp
    for i, layer in enumerate(layers):
        h[i + 1] = layer(h[i])
    return h[len(layers)]


@ptera
def make_model(n_in, n_out):
    # Width of the hidden layer
    hidden: tag.HyperParameter & int = default(64)

    sizes = [n_in, hidden, n_out]
    layers = [
        layer.new(
            W=torch.nn.Parameter((torch.rand(a, b) * 2 - 1) / a**0.5),
            b=torch.nn.Parameter(torch.zeros(1, b)),
            actfn=torch.relu,
        )
        for a, b in zip(sizes[:-1], sizes[1:])
    ]
    layers[-1].state.actfn = torch.nn.LogSoftmax(dim=1)
    return sequential.new(layers=layers)
