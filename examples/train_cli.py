"""Hyperparameters declared where they are used, in three modules, set from one command line.

    python examples/train_cli.py --help
    python examples/train_cli.py --lr 0.2 --epochs 5 --hidden 32
    PTERA_EPOCHS=3 python examples/train_cli.py --config my.toml --dump-config

`train` declares the learning rate and epochs, `hyper/data.py` the split,
`hyper/model.py` the hidden width and a temperature that lives inside every layer.
`auto_cli` finds them all by following the calls and builds the command line.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from hyper.data import load  # noqa: E402
from hyper.model import make_model  # noqa: E402

from ptera import auto_cli, default, ptera, tag  # noqa: E402
from ptera.torch import Grad  # noqa: E402


@ptera
def step(inp, target):
    model: object

    loss = torch.nn.functional.nll_loss(model(inp), target)
    return loss


@ptera
def train():
    """Train an MLP on scikit-learn's digits."""
    # Learning rate of plain SGD
    # [alias: -l]
    lr: tag.HyperParameter & float = default(0.1)
    # Passes over the training set
    epochs: tag.HyperParameter & int = default(10)
    # Print the loss after every epoch
    verbose: tag.HyperParameter & bool = default(False)

    torch.manual_seed(0)
    (x, y), (x_test, y_test) = load()
    fit = step.new(model=make_model(x.shape[1], 10)).clone(return_object=True)

    @fit.on(Grad("step{!!loss} >> $param:Parameter"))
    def sgd(param):
        value, grad = param
        value.data.sub_(lr * grad)

    for epoch in range(epochs):
        for start in range(0, len(x), 32):
            loss = fit(x[start : start + 32], y[start : start + 32]).value
        if verbose:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}")
    with torch.no_grad():
        accuracy = (fit.state.model(x_test).argmax(1) == y_test).float().mean().item()
    return f"test accuracy {accuracy:.1%} (lr={lr}, epochs={epochs})"


if __name__ == "__main__":
    print(auto_cli(train))
