"""The seed's MLP, trained with a Grad listener on scikit-learn's handwritten digits.

Run with `make demo` (or `python examples/mlp.py`). The model is three `@ptera`
functions whose parameters are declared, not passed; the training loop never calls
`backward`: an `on(Grad(...))` listener receives each parameter with its gradient.
Then the same, unchanged model is looked at and steered with queries: the gradient
of the first hidden layer, a weight penalty collected with `using`, and a
temperature tweaked in every layer or in the first one only.
"""

import time

import torch
from rich.progress import Progress
from sklearn.datasets import load_digits

from ptera import Recurrence, ptera
from ptera.torch import Grad


@ptera
def layer(inp):
    W: torch.nn.Parameter
    b: torch.nn.Parameter
    T: float  # temperature, 1.0 unless tweaked
    actfn: object

    act = inp @ W + b
    return actfn(act / T)


@ptera
def sequential(inp):
    layers: list

    h = Recurrence()
    h[0] = inp
    for i, layer in enumerate(layers):
        h[i + 1] = layer(h[i])
    return h[len(layers)]


@ptera
def step(inp, target):
    model: object
    lossfn: object

    output = model(inp)
    loss = lossfn(output, target)
    return loss


@ptera
def regularized_step(inp, target):
    model: object
    lossfn: object

    output = model.using(weights="$param:Parameter")(inp)
    reg = sum(output.weights.map(lambda param: param.abs().mean()))
    loss = lossfn(output.value, target) + reg
    return loss


def make_network(*layer_sizes):
    layers = [
        layer.new(
            W=torch.nn.Parameter((torch.rand(nin, nout) * 2 - 1) / (nin**0.5)),
            b=torch.nn.Parameter((torch.rand(1, nout) * 2 - 1) / (nin**0.5)),
            actfn=torch.relu,
            T=1.0,
        )
        for nin, nout in zip(layer_sizes[:-1], layer_sizes[1:])
    ]
    layers[-1].state.actfn = torch.nn.LogSoftmax(dim=1)
    return step.new(lossfn=torch.nn.NLLLoss(), model=sequential.new(layers=layers))


def digits(seed=0):
    """8x8 digits scaled to [0, 1], split 80/20 with a fixed permutation."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def accuracy(network, x, y):
    with torch.no_grad():
        out = network.state.model(x)
    return (out.argmax(dim=1) == y).float().mean().item()


def train(network, x, y, epochs=25, batch_size=32, lr=0.1):
    model = network.clone(return_object=True)

    @model.on(Grad("step{!!loss} >> $param:Parameter"))
    def update(param):
        param_value, param_grad = param
        param_value.data.sub_(lr * param_grad)

    @model.on(Grad("step{!!loss} >> h[1] as h"))
    def check_h(h):
        h_value, h_grad = h
        return h_grad.abs().mean().item()

    generator = torch.Generator().manual_seed(1)
    with Progress(transient=True) as progress:
        task = progress.add_task("training", total=epochs)
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            losses, grads = [], []
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                results = model(x[idx], y[idx])
                losses.append(results.value.item())
                grads.extend(results.check_h)
            progress.update(task, advance=1, description=f"loss {sum(losses) / len(losses):.4f}")
            if (epoch + 1) % 5 == 0:
                progress.console.print(
                    f"epoch {epoch + 1}: train loss {sum(losses) / len(losses):.4f},"
                    f" mean |dloss/dh[1]| {sum(grads) / len(grads):.2e}"
                )


def main():
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = digits()
    network = make_network(64, 128, 10)
    start = time.perf_counter()
    train(network, x_train, y_train)
    seconds = time.perf_counter() - start

    with torch.no_grad():
        print(f"test loss: {network(x_test, y_test).item():.4f}")
        penalty = regularized_step.new(**network.state)(x_test, y_test)
        print(f"test loss + weight penalty (collected with using): {penalty.item():.4f}")
        for query, temperature in [
            ("layer > T", 1.0),
            ("layer > T", 2.0),
            ("layer > T", 10.0),
            ("layer[1] > T", 10.0),
        ]:
            loss = network.tweak({query: temperature})(x_test, y_test)
            print(f"test loss with {query} = {temperature}: {loss.item():.4f}")
    acc = accuracy(network, x_test, y_test)
    print(f"test accuracy: {acc:.1%} ({len(x_test)} digits, trained in {seconds:.1f}s)")


if __name__ == "__main__":
    main()
