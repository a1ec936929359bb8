"""W2: training an MLP (64-256-256-10, batch 64, 200 SGD steps) while capturing activations.

Cases, interleaved, as ratios to the plain loop of the same round:
plain; the step decorated with @tooled but nothing probed; every Linear output
captured by a probe (`Linear > #value`); the same captured with forward hooks.
"""

import os

import torch
from timing import interleave, report
from torch import nn

from ptera import probing, tooled

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "11"))
STEPS = 200


def make():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(STEPS, 64, 64), torch.randint(0, 10, (STEPS, 64))
    return net, opt, x, y


def plain_step(net, opt, x, y):
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


@tooled
def instrumented_step(net, opt, x, y):
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def main():
    torch.set_num_threads(1)
    net, opt, xs, ys = make()

    def loop(step):
        for i in range(STEPS):
            step(net, opt, xs[i], ys[i])

    def plain():
        loop(plain_step)

    def idle():
        loop(instrumented_step)

    def probe():
        outs = []
        with probing("Linear > #value as out") as p:
            p["out"].subscribe(outs.append)
            loop(plain_step)
        assert len(outs) == 3 * STEPS

    def hooks():
        outs = []
        handles = [
            m.register_forward_hook(lambda m, i, o: outs.append(o))
            for m in net
            if isinstance(m, nn.Linear)
        ]
        try:
            loop(plain_step)
        finally:
            for h in handles:
                h.remove()
        assert len(outs) == 3 * STEPS

    times = interleave(
        {
            "plain": plain,
            "@tooled, no probe": idle,
            "probe Linear > #value": probe,
            "forward hooks": hooks,
        },
        ROUNDS,
    )
    report(
        f"W2: MLP 64-256-256-10, {STEPS} SGD steps, 1 thread, {ROUNDS} interleaved rounds",
        times,
        "plain",
        {"@tooled, no probe": "<=1.02", "probe Linear > #value": "<=1.05"},
    )
    probe_vs_hooks = sorted(
        p / h for p, h in zip(times["probe Linear > #value"], times["forward hooks"])
    )
    print(
        f"probe / forward hooks, median: {probe_vs_hooks[len(probe_vs_hooks) // 2]:.3f} (target <=1.02)"
    )


if __name__ == "__main__":
    main()
