"""ptera.lab.workbench surgery: prune, add, reinit on any layer, with the optimizer following."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ptera.lab import SurgeryError, Workbench

from .workbench_models import MODELS, digits, inputs_for

# Checkpoints of a Workbench without root go to a new temporary folder: keep it in tmp_path.
pytestmark = pytest.mark.usefixtures("tmp_tempdir")

# (model, layer index, consumer module, features per neuron in the consumer)
CASES = [
    ("seed", 0, "layer1", 1),
    ("seed", 1, "layer2", 1),
    ("seed", 2, "out", 4),  # conv -> max_pool -> view -> linear
    ("mlp", 0, "2", 1),
    ("mlp", 1, "4", 1),
    ("bn_cnn", 0, "3", 1),  # conv -> BatchNorm2d -> relu -> conv
    ("bn_cnn", 1, "7", 16),  # conv -> flatten -> BatchNorm1d -> linear
    ("pooled", 0, "hidden", 1),  # conv -> adaptive pool -> torch.flatten -> linear
    ("pooled", 1, "head", 1),
]
IDS = [f"{m}-{i}" for m, i, _, _ in CASES]


def bench(name, optimizer=torch.optim.Adam, **kwargs):
    torch.manual_seed(0)
    train, valid = digits(60, 20, image=name != "mlp")
    return Workbench(MODELS[name](), optimizer, train, valid, batch_size=20, **kwargs)


def zeroing(model, consumer, neurons, factor):
    """A copy of ``model`` whose ``consumer`` reads zeros from ``neurons`` (a forward pre-hook)."""
    ref = copy.deepcopy(model)
    features = [n * factor + j for n in neurons for j in range(factor)]

    def zero(module, args):
        x = args[0].clone()
        x[:, features] = 0
        return (x,)

    ref.get_submodule(consumer).register_forward_pre_hook(zero)
    return ref


@pytest.mark.parametrize("model, layer, consumer, factor", CASES, ids=IDS)
def test_pruning_equals_zeroing_the_activation(model, layer, consumer, factor):
    wb = bench(model)
    wb.train_n_steps(2)
    wb.model.eval()
    x = inputs_for(model)
    size = wb.layers[layer].size
    ref = zeroing(wb.model, consumer, [0, size - 1], factor)
    wb.prune(layer, {0, size - 1})
    assert wb.layers[layer].size == size - 2
    torch.testing.assert_close(wb.model(x), ref(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("model, layer, consumer, factor", CASES, ids=IDS)
def test_add_neurons_preserve_keeps_outputs_and_new_neurons_learn(model, layer, consumer, factor):
    wb = bench(model)
    wb.train_n_steps(2)
    x = inputs_for(model)
    wb.model.eval()
    before = wb.model(x).detach()
    size = wb.layers[layer].size
    wb.add_neurons(layer, 3)
    assert wb.layers[layer].size == size + 3
    torch.testing.assert_close(wb.model(x), before, atol=1e-6, rtol=0)
    # The new outgoing columns get gradients at once; after one step, so do the new rows.
    wb.model.train()
    F.cross_entropy(wb.model(x), torch.arange(len(x)) % 10).backward()
    cols = wb.model.get_submodule(consumer).weight.grad[:, size * factor :]
    assert cols.abs().sum() > 0
    wb.train_n_steps(1)
    F.cross_entropy(wb.model(x), torch.arange(len(x)) % 10).backward()
    rows = wb.layers[layer].module.weight.grad[size:]
    assert rows.abs().sum() > 0


def test_add_neurons_xavier_changes_the_function():
    wb = bench("mlp")
    x = inputs_for("mlp")
    before = wb.model(x).detach()
    wb.add_neurons(0, 4, init="xavier")
    assert not torch.allclose(wb.model(x), before)
    assert wb.model[2].weight[:, 16:].abs().sum() > 0


@pytest.mark.parametrize("model, layer, consumer, factor", CASES, ids=IDS)
def test_adam_moments_follow_prune_and_add(model, layer, consumer, factor):
    wb = bench(model)
    wb.train_n_steps(3)
    opt = wb.optimizer
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    producer = wb.layers[layer].module
    user = wb.model.get_submodule(consumer)
    old_rows = {k: opt.state[producer.weight][k].clone() for k in ("exp_avg", "exp_avg_sq")}
    old_bias = opt.state[producer.bias]["exp_avg"].clone()
    old_cols = opt.state[user.weight]["exp_avg"].clone()
    size = producer.weight.shape[0]
    keep = torch.tensor([i for i in range(size) if i not in (1, 2)])
    wb.prune(layer, [1, 2])
    assert wb.optimizer is opt
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[producer.weight][k], old_rows[k][keep])
    assert torch.equal(opt.state[producer.bias]["exp_avg"], old_bias[keep])
    cols = (keep[:, None] * factor + torch.arange(factor)).flatten()
    assert torch.equal(opt.state[user.weight]["exp_avg"], old_cols[:, cols])
    kept = opt.state[producer.weight]["exp_avg"].clone()
    wb.add_neurons(layer, 2)
    state = opt.state[producer.weight]["exp_avg"]
    assert torch.equal(state[: size - 2], kept)
    assert torch.equal(state[size - 2 :], torch.zeros_like(state[size - 2 :]))
    assert not opt.state[user.weight]["exp_avg_sq"][:, (size - 2) * factor :].any()
    # The optimizer holds exactly the model's parameters, hyperparameters unchanged.
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in wb.model.parameters()
    }
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == hyper
    loss, _ = wb.train_n_steps(2)
    assert loss == loss  # a finite step after surgery


def test_sgd_momentum_follows_prune():
    wb = bench("mlp", lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9))
    wb.train_n_steps(2)
    buf = wb.optimizer.state[wb.model[0].weight]["momentum_buffer"].clone()
    wb.prune(0, [3])
    keep = [i for i in range(16) if i != 3]
    assert torch.equal(wb.optimizer.state[wb.model[0].weight]["momentum_buffer"], buf[keep])
    wb.train_n_steps(1)


@pytest.mark.parametrize(
    "model, shapes",
    [
        ("seed", {"layer2.weight": (7, 8, 3, 3), "out.weight": (10, 28)}),
        (
            "bn_cnn",
            {
                "1.weight": (6,),
                "3.weight": (2, 6, 3, 3),
                "6.running_mean": (32,),
                "7.weight": (10, 32),
            },
        ),
    ],
)
def test_conv_flatten_linear_and_batchnorm_shapes(model, shapes):
    wb = bench(model)
    last_conv = 2 if model == "seed" else 1
    wb.prune(last_conv, range(wb.layers[last_conv].size - (7 if model == "seed" else 2)))
    got = {k: tuple(v.shape) for k, v in wb.model.state_dict().items() if k in shapes}
    assert got == shapes
    wb.train_n_steps(1)
    assert wb.model(inputs_for(model)).shape == (32, 10)


def test_layers_by_name_and_index():
    wb = bench("seed")
    assert [(layer.index, layer.name, layer.size) for layer in wb.layers] == [
        (0, "layer0", 4),
        (1, "layer1", 8),
        (2, "layer2", 10),
        (3, "out", 10),
    ]
    wb.prune("layer1", [0])
    assert wb.layers[1].size == 7


@pytest.mark.parametrize("ratio", [None, 0.1])
def test_reinit_neurons(ratio):
    wb = bench("mlp")
    wb.train_n_steps(2)
    before = {k: v.clone() for k, v in wb.model.state_dict().items()}
    wb.reinit_neurons(0, {5, 6}, perturbation_ratio=ratio)
    after = wb.model.state_dict()
    rows = after["0.weight"][[5, 6]]
    assert not torch.equal(rows, before["0.weight"][[5, 6]])
    if ratio is not None:  # a relative perturbation stays close
        assert (rows - before["0.weight"][[5, 6]]).abs().max() <= 1.0 * before["0.weight"][
            [5, 6]
        ].abs().max()
    others = [i for i in range(16) if i not in (5, 6)]
    assert torch.equal(after["0.weight"][others], before["0.weight"][others])
    assert torch.equal(after["2.weight"], before["2.weight"])  # outgoing weights kept
    assert not wb.optimizer.state[wb.model[0].weight]["exp_avg"][[5, 6]].any()
    wb.train_n_steps(1)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 8), nn.Linear(8, 10)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.b(F.relu(self.a(x)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 8), nn.Linear(8, 8), nn.Linear(8, 10)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.c(h + F.relu(self.b(h)))


def plain(model):
    def make():
        torch.manual_seed(0)
        train, valid = digits(40, 20, image=False)
        return Workbench(model(), torch.optim.Adam, train, valid, batch_size=20)

    return make


@pytest.mark.parametrize(
    "make, action, error, message",
    [
        (
            lambda: bench("seed"),
            lambda wb: wb.prune(7, [0]),
            IndexError,
            "layer index 7 is out of range",
        ),
        (
            lambda: bench("seed"),
            lambda wb: wb.prune(1, [8]),
            SurgeryError,
            r"neurons \[8\] out of range",
        ),
        (lambda: bench("seed"), lambda wb: wb.prune(1, [-1]), SurgeryError, "out of range"),
        (
            lambda: bench("seed"),
            lambda wb: wb.prune(1, range(8)),
            SurgeryError,
            "would leave it empty",
        ),
        (
            lambda: bench("seed"),
            lambda wb: wb.prune("nope", [0]),
            LookupError,
            "no layer named 'nope'",
        ),
        (lambda: bench("bn_cnn"), lambda wb: wb.prune("1", [0]), TypeError, "is a BatchNorm2d"),
        (
            lambda: bench("seed"),
            lambda wb: wb.add_neurons(3, 2),
            SurgeryError,
            "feeds the model's output",
        ),
        (lambda: bench("seed"), lambda wb: wb.add_neurons(0, 0), SurgeryError, "positive integer"),
        (
            lambda: bench("seed"),
            lambda wb: wb.add_neurons(0, 1, init="he"),
            SurgeryError,
            "init must be",
        ),
        (lambda: bench("seed"), lambda wb: wb.reinit_neurons(0, [9]), SurgeryError, "out of range"),
        (plain(Untraceable), lambda wb: wb.prune(0, [0]), SurgeryError, "cannot trace Untraceable"),
        (plain(Residual), lambda wb: wb.prune(1, [0]), SurgeryError, "'add'"),
        (plain(Residual), lambda wb: wb.prune(0, [0]), SurgeryError, "'add'"),
        (
            lambda: bench("seed"),
            lambda wb: wb.set_per_neuron_learning_rate(0, [4], 0.0),
            SurgeryError,
            "out of range",
        ),
        (
            lambda: bench("seed"),
            lambda wb: wb.set_per_neuron_learning_rate(0, [1], -1),
            ValueError,
            ">= 0",
        ),
    ],
)
def test_bad_input_is_an_error_and_changes_nothing(make, action, error, message):
    wb = make()
    wb.train_n_steps(1)
    model = copy.deepcopy(wb.model.state_dict())
    opt = copy.deepcopy(wb.optimizer.state_dict())
    params = [p for g in wb.optimizer.param_groups for p in g["params"]]
    with pytest.raises(error, match=message):
        action(wb)
    assert all(torch.equal(v, model[k]) for k, v in wb.model.state_dict().items())
    assert [p for g in wb.optimizer.param_groups for p in g["params"]] == params
    state = wb.optimizer.state_dict()
    assert state["param_groups"] == opt["param_groups"]
    for i, s in opt["state"].items():
        assert all(torch.equal(v, state["state"][i][k]) for k, v in s.items())


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pruned=st.sets(st.integers(0, 9), min_size=1, max_size=9),
    added=st.integers(1, 4),
)
def test_any_prune_then_add_is_zeroing_then_the_same_function(pruned, added):
    """Property: pruning any proper subset of conv channels equals zeroing them; adding keeps it."""
    wb = bench("seed")
    wb.model.eval()
    x = inputs_for("seed", 8)
    ref = zeroing(wb.model, "out", sorted(pruned), 4)
    wb.prune(2, pruned)
    wb.add_neurons(2, added)
    torch.testing.assert_close(wb.model(x), ref(x), atol=1e-6, rtol=0)
    assert wb.model.out.in_features == 4 * (10 - len(pruned) + added)


@pytest.mark.parametrize(
    "make, layer",
    [
        (lambda: bench("seed"), 3),  # the output layer: reinit needs no consumer
        (lambda: bench("seed"), "out"),
        (plain(Untraceable), 0),  # nor a traceable forward
        (plain(Residual), 1),  # nor a route surgery could follow
    ],
)
def test_reinit_works_on_any_layer_and_changes_only_its_rows(make, layer):
    wb = make()
    wb.train_n_steps(1)
    target = wb.layers[layer] if isinstance(layer, int) else wb.layers[-1]
    before = {k: v.clone() for k, v in wb.model.state_dict().items()}
    wb.reinit_neurons(layer, {1, 2})
    after = wb.model.state_dict()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"{target.name}.weight", f"{target.name}.bias"}
    rows = after[f"{target.name}.weight"]
    assert not torch.equal(rows[[1, 2]], before[f"{target.name}.weight"][[1, 2]])
    assert torch.equal(rows[3:], before[f"{target.name}.weight"][3:])
    assert not wb.optimizer.state[target.module.weight]["exp_avg"][[1, 2]].any()
    wb.train_n_steps(1)


def test_the_seeds_operations_run_on_the_workbench():
    """Seed 001's "Architecture operations" and freezing, ``exp.model.`` read as ``wb.``."""
    wb = bench("mlp")
    wb.train_n_steps(1)
    wb.add_neurons(layer_index=0, neuron_count=4)
    wb.prune(layer_index=0, neuron_indices={0, 2, 4})
    wb.reinit_neurons(layer_index=0, neuron_indices={5, 6})
    wb.reinit_neurons(layer_index=0, neuron_indices={5, 6}, perturbation_ratio=0.2)
    wb.layers[0].set_per_neuron_learning_rate(set(range(0, 2)), lr=0.0)
    wb.layers[0].set_per_incoming_neuron_learning_rate(set(range(0, 2)), lr=0.0)
    wb.freeze_layers_up_to_idx(1)
    wb.unfreeze_layers_from_idx(1)
    assert wb.layers[0].size == 16 + 4 - 3 and wb.frozen_layers == ["0"]
    wb.unfreeze_layers_from_idx(0)
    held = wb.model[0].weight.clone()
    wb.train_n_steps(3)
    after = wb.model[0].weight
    assert torch.equal(after[:2], held[:2])  # neurons 0 and 1: factor 0
    assert torch.equal(after[:, :2], held[:, :2])  # the weights reading inputs 0 and 1
    assert not torch.equal(after[2:, 2:], held[2:, 2:])


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda wb: wb.set_per_neuron_learning_rate(set(range(0, 2)), lr=0.0),
            r"takes the layer first: .*wb.layers\[i\].set_per_neuron_learning_rate\(neurons",
        ),
        (
            lambda wb: wb.set_per_incoming_neuron_learning_rate({0}, lr=0.0),
            r"wb.layers\[i\].set_per_incoming_neuron_learning_rate\(neurons, lr=...\)",
        ),
        (lambda wb: wb.set_per_neuron_learning_rate(0, {0}), "needs lr="),
    ],
)
def test_the_seeds_layer_form_on_the_workbench_says_what_to_call(call, message):
    wb = bench("seed")
    with pytest.raises(TypeError, match=message):
        call(wb)
    assert wb.rates.factors == {}
