"""The same digits experiment with a stock `nn.Sequential`, probed by class name.

Run with `python examples/mlp_module.py`. The network and its training loop are
ordinary PyTorch: nothing is decorated. Afterwards, selectors that name torch's
own classes (`Linear`, `ReLU`) look inside it: activations, dead units, the
gradient of the loss with respect to every layer's output (one backward pass),
and a rewrite of every ReLU into a leaky one, all without a hook or an edit.
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

from ptera import probing, rewriting
from ptera.torch import Grad


def digits(seed=0):
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def train(net, x, y, epochs=25, batch_size=32):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def evaluate(net, x, y):
    logits = net(x)
    loss = nn.functional.cross_entropy(logits, y)
    accuracy = (logits.argmax(dim=1) == y).float().mean()
    return loss, accuracy


def main():
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = digits()
    net = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    train(net, x_train, y_train)
    loss, acc = evaluate(net, x_test, y_test)
    print(f"test loss {loss.item():.4f}, accuracy {acc.item():.1%}")

    # Every Linear layer's output, by class name: no hook, no edit.
    with probing("Linear > #value as out").values() as outs:
        evaluate(net, x_test, y_test)
    for i, o in enumerate(outs):
        print(
            f"Linear #{i}: output {tuple(o['out'].shape)}, mean |out| {o['out'].abs().mean():.3f}"
        )

    with probing("ReLU > #value as act") as probe:
        acts = probe["act"].accum()
        evaluate(net, x_test, y_test)
    for i, a in enumerate(acts):
        dead = (a.amax(dim=0) == 0).float().mean().item()
        print(f"ReLU #{i}: {dead:.1%} of units never fire on the test set")

    # d loss / d output of every Linear, all from one backward pass.
    with probing(Grad("evaluate{!!loss} >> Linear > #value as out")) as probe:
        probe["out"].map(lambda pair: pair[1].norm().item()).print("|dloss/dout| = {:.4f}")
        evaluate(net, x_test, y_test)

    with rewriting({"ReLU(input) > #value": lambda input: nn.functional.leaky_relu(input, 0.1)}):
        leaky_loss, leaky_acc = evaluate(net, x_test, y_test)
    print(f"with leaky ReLUs: test loss {leaky_loss.item():.4f}, accuracy {leaky_acc.item():.1%}")
    print(f"afterwards, unchanged: accuracy {evaluate(net, x_test, y_test)[1].item():.1%}")


if __name__ == "__main__":
    main()
