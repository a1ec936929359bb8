"""ptera.lab.experiments.vectorized_optim: one step for stacked trials equals torch's per trial."""

import pytest
import torch

from ptera.lab.experiments.vectorized_optim import StackedOptimizer, supports

CASES = [
    (torch.optim.SGD, [{"lr": 0.1}, {"lr": 0.01}]),
    (
        torch.optim.SGD,
        [
            {"lr": 0.1, "momentum": 0.9},
            {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.01},
            {"lr": 0.05, "momentum": 0.0},  # no buffer, no dampening: the same update
        ],
    ),
    (torch.optim.SGD, [{"lr": 0.1, "momentum": 0.9, "nesterov": True, "dampening": 0}] * 2),
    (
        torch.optim.SGD,
        [{"lr": 0.1, "momentum": 0.9, "dampening": 0.3}, {"lr": 0.2, "momentum": 0.5}],
    ),
    (torch.optim.Adam, [{"lr": 0.01}, {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 0.1}]),
    (torch.optim.AdamW, [{"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.003, "eps": 1e-6}]),
]


def full(optimizer, hyper):
    return dict(optimizer([torch.zeros(1, requires_grad=True)], **hyper).defaults)


@pytest.mark.parametrize("optimizer, hypers", CASES)
def test_stacked_step_equals_torch_per_trial(optimizer, hypers):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (4,)]
    start = [torch.randn(len(hypers), *s, generator=gen) for s in shapes]
    grads = [[torch.randn(len(hypers), *s, generator=gen) for s in shapes] for _ in range(5)]
    stacked = [p.clone().requires_grad_() for p in start]
    opt = StackedOptimizer(optimizer, stacked, [full(optimizer, h) for h in hypers])
    for step in grads:
        for p, g in zip(stacked, step):
            p.grad = g.clone()
        opt.step()
    for i, hyper in enumerate(hypers):
        params = [p[i].clone().requires_grad_() for p in start]
        reference = optimizer(params, **hyper)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g[i].clone()
            reference.step()
        for p, q in zip(params, stacked):
            torch.testing.assert_close(q[i].detach(), p.detach(), rtol=1e-5, atol=1e-6)
        # The trial's state in torch's format, and back.
        mine = opt.state_dict(i, [p.detach().clone() for p in params])
        theirs = reference.state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        assert mine["state"].keys() == theirs["state"].keys()
        for k, state in theirs["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(mine["state"][k][name], value, rtol=1e-5, atol=1e-6)
        other = StackedOptimizer(optimizer, stacked, [full(optimizer, hypers[0])] * len(hypers))
        other.load_state_dict(i, [p.detach().clone() for p in params], theirs)
        assert other.hyperparameters(i) == opt.hyperparameters(i)


def test_windows_change_one_trial():
    params = [torch.zeros(2, 3, requires_grad=True)]
    opt = StackedOptimizer(torch.optim.SGD, params, [full(torch.optim.SGD, {"lr": 0.1})] * 2)
    opt.set(1, {"lr": 0.0})
    params[0].grad = torch.ones(2, 3)
    opt.step()
    assert params[0][0].tolist() == pytest.approx([-0.1] * 3) and params[0][1].tolist() == [0.0] * 3


@pytest.mark.parametrize(
    "optimizer, hyper, reason",
    [
        (torch.optim.RMSprop, {}, "RMSprop has no stacked step"),
        (torch.optim.Adam, {"amsgrad": True}, "amsgrad=True"),
        (torch.optim.SGD, {"maximize": True}, "maximize=True"),
    ],
)
def test_what_is_not_stacked_says_why(optimizer, hyper, reason):
    assert reason in supports(optimizer, full(optimizer, {"lr": 0.1, **hyper}))
    with pytest.raises(ValueError, match=reason):
        StackedOptimizer(optimizer, [torch.zeros(1, 1)], [full(optimizer, {"lr": 0.1, **hyper})])
