"""ptera.lab.Workbench: training across calls, NeuronStats, per-neuron rates, freezing."""

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from ptera.lab import DataLoaders, Learner, NeuronStats, Workbench

from .workbench_models import MODELS, SeedNet, digits

# Checkpoints of a Workbench without root go to a new temporary folder: keep it in tmp_path.
pytestmark = pytest.mark.usefixtures("tmp_tempdir")


def bench(name="seed", optimizer=torch.optim.Adam, batch_size=20, **kwargs):
    torch.manual_seed(0)
    train, valid = digits(60, 30, image=name != "mlp")
    return Workbench(MODELS[name](), optimizer, train, valid, batch_size=batch_size, **kwargs)


class HookCounts:
    """The reference: trigger counts from forward hooks (the test's own, not the library's)."""

    def __init__(self, model):
        self.counts = {}
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.register_forward_hook(self.hook(name))

    def hook(self, name):
        def record(module, args, out):
            split = "train" if module.training else "eval"
            positive = (out > 0).long()
            per_sample = positive.sum((2, 3)) if out.dim() == 4 else positive
            c = self.counts.setdefault((name, split), [0, 0, 0])
            c[0] = c[0] + per_sample.sum(0)
            c[1] = c[1] + (per_sample > 0).sum(0)
            c[2] += len(out)

        return record


@pytest.mark.parametrize("model", ["seed", "mlp", "bn_cnn"])
def test_trigger_counts_equal_forward_hooks(model):
    torch.manual_seed(0)
    net = MODELS[model]()
    hooks = HookCounts(net)
    stats = NeuronStats()
    train, valid = digits(100, 40, image=model != "mlp")
    dls = DataLoaders.from_datasets(train, valid, batch_size=32)
    Learner(net, dls, nn.functional.cross_entropy, lr=0.05, cbs=[stats]).fit(2)
    frame = stats.dataframe()
    assert set(frame.split) == {"train", "eval"}
    for (name, split), (triggers, active, seen) in hooks.counts.items():
        rows = frame[(frame.layer == name) & (frame.split == split)]
        assert rows.triggers.tolist() == triggers.tolist()
        assert rows.active.tolist() == active.tolist()
        assert set(rows.seen) == {seen}
        assert rows.rate.tolist() == pytest.approx((triggers / seen).tolist())
    assert len(hooks.counts) == 2 * len(frame.layer.unique())


def test_neuron_stats_on_chosen_layers_and_sequence_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    stats = NeuronStats(layers=["2"])
    xs = torch.randn(10, 5, 4)  # (batch, positions, features): every position counts
    dls = DataLoaders([(xs, torch.randn(10, 5, 3))], [])
    Learner(net, dls, nn.functional.mse_loss, lr=0.0, cbs=[stats]).fit(1, valid=False)
    frame = stats.dataframe()
    assert set(frame.layer) == {"2"} and set(frame.seen) == {10}
    with torch.no_grad():
        positive = net(xs) > 0
    assert frame.triggers.tolist() == positive.sum((0, 1)).tolist()
    assert frame.active.tolist() == positive.any(1).sum(0).tolist()


def test_stats_follow_surgery():
    wb = bench()
    wb.train_n_steps(3)
    frame = wb.neuron_stats()
    old = frame[(frame.layer == "layer1") & (frame.split == "train")].triggers.tolist()
    wb.prune(1, [0, 5])
    wb.add_neurons(1, 2)
    frame = wb.neuron_stats()
    new = frame[(frame.layer == "layer1") & (frame.split == "train")].triggers.tolist()
    assert new == [t for i, t in enumerate(old) if i not in (0, 5)] + [0, 0]
    wb.reinit_neurons(1, [1])
    frame = wb.neuron_stats()
    assert frame[(frame.layer == "layer1") & (frame.split == "train")].triggers.tolist()[1] == 0
    wb.train_n_steps(1)  # counting goes on with the new sizes


def test_display_stats_flags_dead_neurons():
    wb = bench("mlp")
    with torch.no_grad():
        wb.model[0].bias[2] = -100.0  # neuron 2 of layer 0 never triggers
    wb.train_n_steps(2)
    wb.eval_n_steps(1)
    assert wb.dead_neurons(0) == [2]
    out = io.StringIO()
    wb.display_stats(Console(file=out, width=120))
    text = out.getvalue()
    assert "00002" in text and "dead" in text
    assert text.count("dead") == 1 + sum(len(wb.dead_neurons(i)) for i in range(1, 3))


def test_training_continues_across_calls():
    wb = bench(batch_size=16)  # 60 samples: 4 batches an epoch
    assert len(wb.train_loader) == 4
    loss, accuracy = wb.train_n_steps(3)
    assert 0 <= accuracy <= 1 and loss > 0
    wb.train_n_steps(3)
    assert (wb.step, wb.seen, wb.epoch) == (6, 16 * 3 + 12 + 16 * 2, 1)
    losses = []
    wb.learner.on("one_batch > loss")(lambda loss: losses.append(loss.item()))
    wb.train_n_steps(2)
    assert len(losses) == 2  # the Learner's selectors work inside the workbench
    loss, accuracy = wb.eval_full()
    assert int(wb.eval_samples.get_dataframe().exposure_amount.sum()) == 30
    wb.eval_n_steps(1)
    assert wb.eval_loader.pos == 16
    assert wb.train_n_steps_with_eval_full(4, eval_every=2) == wb.eval_full()


def rows_and_bias(layer):
    return layer.weight.detach().clone(), layer.bias.detach().clone()


@pytest.mark.parametrize(
    "optimizer",
    [
        torch.optim.Adam,
        lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.1),
        lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0.01),
    ],
    ids=["adam", "adamw", "sgd-momentum"],
)
def test_per_neuron_lr_zero_freezes_rows_and_biases_exactly(optimizer):
    wb = bench("mlp", optimizer)
    wb.train_n_steps(3)  # moments are not zero any more
    wb.set_per_neuron_learning_rate(0, {0, 1}, lr=0.0)
    wb.set_per_incoming_neuron_learning_rate(1, {2}, lr=0.0)
    w0, b0 = rows_and_bias(wb.model[0])
    w1, _ = rows_and_bias(wb.model[2])
    wb.train_n_steps(3)
    w0n, b0n = rows_and_bias(wb.model[0])
    assert torch.equal(w0n[:2], w0[:2]) and torch.equal(b0n[:2], b0[:2])
    assert not torch.equal(w0n[2:], w0[2:]) and not torch.equal(b0n[2:], b0[2:])
    w1n = wb.model[2].weight.detach()
    assert torch.equal(w1n[:, 2], w1[:, 2])
    assert not torch.equal(w1n[:, 3:], w1[:, 3:])


def test_per_neuron_lr_factors_survive_surgery():
    wb = bench("mlp")
    wb.set_per_neuron_learning_rate(0, {1}, lr=0.0)
    wb.set_per_incoming_neuron_learning_rate(1, {2}, lr=0.0)
    wb.prune(0, [0])  # old neuron 1 is now 0; layer 1's input 2 is now 1
    wb.add_neurons(0, 2)  # new neurons train (factor 1)
    w0, b0 = rows_and_bias(wb.model[0])
    w1 = wb.model[2].weight.detach().clone()
    wb.train_n_steps(3)
    w0n, b0n = rows_and_bias(wb.model[0])
    assert torch.equal(w0n[0], w0[0]) and torch.equal(b0n[0], b0[0])
    assert not torch.equal(w0n[-2:], w0[-2:])
    assert torch.equal(wb.model[2].weight[:, 1], w1[:, 1])
    assert wb.rates.factors["0"]["out"].tolist() == [0.0] + [1.0] * 16
    assert wb.rates.factors["2"]["in"].tolist() == [1.0, 0.0] + [1.0] * 15


def test_per_neuron_lr_scales_the_sgd_step():
    def step(factor):
        wb = bench("mlp", torch.optim.SGD)
        before = wb.model[0].weight.detach().clone()
        if factor is not None:
            wb.set_per_neuron_learning_rate(0, [3], factor)
        wb.train_n_steps(1)
        return wb.model[0].weight.detach() - before

    plain, half = step(None), step(0.5)
    torch.testing.assert_close(half[3], 0.5 * plain[3])
    torch.testing.assert_close(half[4:], plain[4:])


def test_freeze_and_unfreeze():
    wb = bench()
    wb.freeze_layers_up_to_idx(1)
    assert wb.frozen_layers == ["layer0", "layer1"]
    before = {k: v.clone() for k, v in wb.model.state_dict().items()}
    wb.train_n_steps(2)
    after = wb.model.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"layer2", "out"}
    wb.unfreeze_layers_from_idx(1)
    assert wb.frozen_layers == ["layer0"]
    before = {k: v.clone() for k, v in wb.model.state_dict().items()}
    wb.train_n_steps(2)
    after = wb.model.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"layer1", "layer2", "out"}
    wb.prune(0, [0])  # surgery keeps a frozen layer frozen
    assert wb.frozen_layers == ["layer0"]


def test_workbench_takes_the_seed_model_unchanged():
    code = SeedNet.forward.__code__
    wb = bench()
    wb.train_n_steps(1)
    wb.prune(1, [0])
    assert type(wb.model) is SeedNet and SeedNet.forward.__code__ is code
    assert not any(m._forward_hooks for m in wb.model.modules())


def test_tensorboard_logging(tmp_path):
    pytest.importorskip("tensorboard")
    wb = bench(log_dir=tmp_path)
    wb.train_n_steps(1)
    wb.eval_full()
    assert any((tmp_path / "x0").iterdir())


def test_tensorboard_missing_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tensorboard"):
            bench(log_dir=tmp_path)
    else:
        pytest.skip("tensorboard is installed")
