"""W3: one SGD step through a Grad listener vs a hand-written backward + SGD step.

The seed's MLP (`layer`, `sequential`, `step` with declared parameters, 64-256-256-10,
batch 64), 200 steps per run. Both cases run the same forward code; one updates the
parameters from `@model.on(Grad("step{!!loss} >> $param:Parameter"))`, the other
calls `loss.backward()` and subtracts `lr * p.grad` itself; a third asks
`torch.autograd.grad` by hand (what Grad does underneath), to separate the engine's
cost from the difference between the two torch calls.

Times are CPU time of this process (``time.process_time``; every case is single-threaded),
steadier than wall time on a shared machine. A second table runs narrow MLPs of 2, 4, 8
and 16 layers (width 32, batch 8) where the engine's cost is exposed, and fits the extra
time per step of the Grad listener over ``backward()`` as fixed + per-layer cost.

``BENCH_PARTS=1`` runs, instead, the per-part profile on the seed MLP: each row adds one
part of the Grad listener's work (the object call, the overlay and the root, the
``$param`` captures, ``Grad``), every case on the same parameters, and prints the extra
us per step over ``backward()`` by hand.

``BENCH_ENGINE=1`` times the engine alone: the same three functions on floats (each
layer's ``W`` and ``b`` are parameters it never multiplies), ``Grad``'s backward pass
replaced by a stub that returns ready tensors, so that what is left is ptera's Python;
minimum over interleaved rounds of 5,000 calls, us per call.
"""

import os
import random
import statistics
import time

import torch
from timing import interleave, report

from ptera import Recurrence, ptera
from ptera.plugin import collecting_rule
from ptera.torch import Grad

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "11"))
STEPS = 200
LR = 0.01


@ptera
def layer(inp):
    W: torch.nn.Parameter
    b: torch.nn.Parameter
    actfn: object

    act = inp @ W + b
    return actfn(act)


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


def make_network(*sizes):
    layers = [
        layer.new(
            W=torch.nn.Parameter((torch.rand(nin, nout) * 2 - 1) / nin**0.5),
            b=torch.nn.Parameter((torch.rand(1, nout) * 2 - 1) / nin**0.5),
            actfn=torch.relu,
        )
        for nin, nout in zip(sizes[:-1], sizes[1:])
    ]
    layers[-1].state.actfn = torch.nn.LogSoftmax(dim=1)
    return step.new(lossfn=torch.nn.NLLLoss(), model=sequential.new(layers=layers))


def cases(network, xs, ys):
    """The three ways to run ``len(xs)`` SGD steps of ``network``, by name."""
    params = [lay.state[n] for lay in network.state.model.state.layers for n in ("W", "b")]
    steps = len(xs)

    model = network.clone(return_object=True)

    @model.on(Grad("step{!!loss} >> $param:Parameter"))
    def update(param):
        value, grad = param
        value.data.sub_(LR * grad)

    def by_hand():
        for i in range(steps):
            loss = network(xs[i], ys[i])
            loss.backward()
            for p in params:
                p.data.sub_(LR * p.grad)
                p.grad = None

    def by_hand_autograd():
        for i in range(steps):
            loss = network(xs[i], ys[i])
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.data.sub_(LR * g)

    def with_grad():
        for i in range(steps):
            model(xs[i], ys[i])

    return {
        "backward + SGD by hand": by_hand,
        "autograd.grad + SGD by hand": by_hand_autograd,
        "Grad listener": with_grad,
    }


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = make_network(64, 256, 256, 10)
    xs, ys = torch.randn(STEPS, 64, 64), torch.randint(0, 10, (STEPS, 64))
    times = interleave(cases(network, xs, ys), ROUNDS, clock=time.process_time)
    report(
        f"W3: seed MLP 64-256-256-10, {STEPS} SGD steps, 1 thread, {ROUNDS} interleaved rounds,"
        " CPU time",
        times,
        "backward + SGD by hand",
        {"Grad listener": "<=1.05"},
    )
    depths()


def depths():
    """Extra us per step of the Grad listener over backward(), by depth, fitted as a line."""
    print(f"\nW3 by depth: width 32, batch 8, {STEPS} steps, {ROUNDS} rounds, CPU time")
    print(f"{'layers':>6} {'backward us':>12} {'Grad us':>9} {'extra us':>9} {'ratio':>7}")
    extras = {}
    for n in (2, 4, 8, 16):
        network = make_network(32, *[32] * (n - 1), 10)
        xs, ys = torch.randn(STEPS, 8, 32), torch.randint(0, 10, (STEPS, 8))
        run = cases(network, xs, ys)
        del run["autograd.grad + SGD by hand"]
        times = interleave(run, ROUNDS, clock=time.process_time)
        base = statistics.median(times["backward + SGD by hand"]) / STEPS * 1e6
        grad = statistics.median(times["Grad listener"]) / STEPS * 1e6
        extras[n] = grad - base
        print(f"{n:6} {base:12.1f} {grad:9.1f} {grad - base:9.1f} {grad / base:7.3f}")
    per_layer, fixed = statistics.linear_regression(list(extras), list(extras.values()))
    print(f"extra cost: {fixed:.1f} us fixed + {per_layer:.1f} us per layer")


class _ByHand:
    """A plugin whose rule calls ``step(captures)`` at the root's exit: the engine's work
    up to the point where ``Grad`` would start, with backward + SGD done by hand."""

    def __init__(self, selector: str, step):
        self.selector, self.step = selector, step

    def __ptera_rules__(self, emit, env):
        return (collecting_rule(self.selector, env, self.step),)


def parts():
    """Extra us per step over backward + SGD by hand, adding one part per row.

    Every case runs on the same parameters (clones of one network). Each step is
    timed alone and the cases run in a fresh random order every step, so that other
    processes and drift hit all of them alike; a row is the trimmed mean (10% off each
    end) of its per-step differences to the first case. On a loaded machine this is
    much steadier than whole rounds, whose times move by 10-20%.
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = make_network(64, 256, 256, 10)
    xs, ys = torch.randn(STEPS, 64, 64), torch.randint(0, 10, (STEPS, 64))
    params = [lay.state[n] for lay in network.state.model.state.layers for n in ("W", "b")]

    def sgd(loss):
        loss.backward()
        for p in params:
            p.data.sub_(LR * p.grad)
            p.grad = None

    clone = network.clone(return_object=True)
    root = network.clone(return_object=True)
    root.on(_ByHand("step{!!loss}", lambda caps: sgd(caps["loss"].values[0])))(lambda loss: None)
    captured = network.clone(return_object=True)
    captured.on(
        _ByHand("step{!!loss} >> $param:Parameter", lambda caps: sgd(caps["loss"].values[0]))
    )(lambda loss: None)

    def autograd_sgd(caps):
        values = caps["param"].values
        for p, g in zip(values, torch.autograd.grad(caps["loss"].values[0], values)):
            p.data.sub_(LR * g)

    by_autograd = network.clone(return_object=True)
    by_autograd.on(_ByHand("step{!!loss} >> $param:Parameter", autograd_sgd))(lambda loss: None)
    model = network.clone(return_object=True)

    @model.on(Grad("step{!!loss} >> $param:Parameter"))
    def update(param):
        value, grad = param
        value.data.sub_(LR * grad)

    steps = {
        "backward + SGD by hand": lambda i: sgd(network(xs[i], ys[i])),
        "+ the object call (a clone)": lambda i: sgd(clone(xs[i], ys[i]).value),
        "+ overlay and root (step{!!loss})": lambda i: root(xs[i], ys[i]),
        "+ the $param captures": lambda i: captured(xs[i], ys[i]),
        "... with autograd.grad instead": lambda i: by_autograd(xs[i], ys[i]),
        "+ Grad (the listener)": lambda i: model(xs[i], ys[i]),
    }
    order = list(steps.items())
    times: dict[str, list[float]] = {name: [] for name in steps}
    shuffle = random.Random(0).shuffle
    for n in range(STEPS * (ROUNDS + 1)):
        shuffle(order)
        for name, step_once in order:
            start = time.process_time()
            step_once(n % STEPS)
            times[name].append(time.process_time() - start)
    base = times["backward + SGD by hand"]
    print(
        f"W3 per part: seed MLP, {STEPS * ROUNDS} steps per case (shuffled, each timed alone),"
        " CPU time; extra us per step over backward + SGD by hand, trimmed mean"
    )
    for name, ts in times.items():
        extra = sorted((t - b) * 1e6 for t, b in zip(ts[STEPS:], base[STEPS:]))  # warm-up off
        cut = len(extra) // 10
        print(f"{name:36} {statistics.mean(extra[cut:-cut]):7.1f}")


def engine():
    """us per call of the engine alone (see the module), adding one part per row."""
    from ptera import torch as ptorch

    @ptera
    def float_layer(inp):
        W: torch.nn.Parameter
        b: torch.nn.Parameter
        actfn: object

        act = inp + 1
        return actfn(act)

    layers = [
        float_layer.new(
            W=torch.nn.Parameter(torch.zeros(1)),
            b=torch.nn.Parameter(torch.zeros(1)),
            actfn=lambda x: x,
        )
        for _ in range(3)
    ]
    network = step.new(lossfn=lambda o, t: o - t, model=sequential.new(layers=layers))
    zeros = tuple(torch.zeros(1) for _ in range(6))
    ptorch._gradients = lambda target, xs, retain, create: zeros[: len(xs)]

    def with_rule(selector):
        obj = network.clone(return_object=True)
        obj.on(_ByHand(selector, lambda caps: None))(lambda loss: None)
        return obj

    model = network.clone(return_object=True)
    model.on(Grad("step{!!loss} >> $param:Parameter"))(lambda param: None)
    objects = {
        "the object (no overlay)": network.clone(return_object=True),
        "+ a rule on step{!!loss} (no-op)": with_rule("step{!!loss}"),
        "+ the three layers' $param captures": with_rule("step{!!loss} >> $param:Parameter"),
        "Grad and a no-op listener instead": model,
    }
    calls = 5000

    def repeat(obj):
        def run():
            for _ in range(calls):
                obj(1.0, 0.0)

        return run

    times = interleave({k: repeat(o) for k, o in objects.items()}, 3 * ROUNDS, time.process_time)
    print(f"W3's engine alone: us per call, minimum of {3 * ROUNDS} rounds of {calls} calls")
    previous = None
    for name, ts in times.items():
        us = min(ts) / calls * 1e6
        step_us = "" if previous is None else f"(+{us - previous:.2f})"
        print(f"{name:38} {us:6.2f} {step_us}")
        previous = us


if __name__ == "__main__":
    if os.environ.get("BENCH_ENGINE"):
        engine()
    elif os.environ.get("BENCH_PARTS"):
        parts()
    else:
        main()
