"""ptera.lab.Workbench: per-sample tables, deny lists, and checkpoints."""

import copy
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ptera.lab import Workbench

from .workbench_models import MODELS, digits

# Checkpoints of a Workbench without root go to a new temporary folder: keep it in tmp_path.
pytestmark = pytest.mark.usefixtures("tmp_tempdir")


def bench(name="mlp", batch_size=16, n_train=60, id_feature=False, **kwargs):
    torch.manual_seed(0)
    train, valid = digits(n_train, 30, image=name != "mlp", id_feature=id_feature)
    return Workbench(
        MODELS[name](), torch.optim.Adam, train, valid, batch_size=batch_size, **kwargs
    )


class SeenIds:
    """Records the sample ids of every training batch (the last pixel holds the id)."""

    def __init__(self):
        self.ids = []

    def before_batch(self, learn):
        if learn.training:
            self.ids += learn.batch[0][:, -1].long().tolist()


def test_one_epoch_exposes_every_sample_once():
    wb = bench()
    wb.train_n_steps(len(wb.train_loader))
    frame = wb.train_samples.get_dataframe()
    assert frame.index.name == "sample_id" and len(frame) == 60
    assert list(frame.columns) == [
        "prediction_age",
        "prediction_loss",
        "exposure_amount",
        "deny_listed",
        "prediction",
        "label",
    ]
    assert (frame.exposure_amount == 1).all()
    assert sorted(set(frame.prediction_age)) == [0, 16, 32, 48]
    assert (frame.label == wb.train_samples.dataset.tensors[1].numpy()).all()
    assert (wb.eval_samples.get_dataframe().exposure_amount == 0).all()
    wb.eval_full()
    eval_frame = wb.eval_samples.get_dataframe()
    assert (eval_frame.exposure_amount == 1).all() and (eval_frame.prediction_age == 60).all()


def test_per_sample_losses_are_the_model_s_losses():
    wb = bench()
    wb.train_n_steps(2)
    wb.eval_full()
    x, y = wb.eval_samples.dataset.tensors
    wb.model.eval()
    with torch.no_grad():
        out = wb.model(x)
    frame = wb.eval_samples.get_dataframe()
    torch.testing.assert_close(
        torch.tensor(frame.prediction_loss.values), F.cross_entropy(out, y, reduction="none")
    )
    assert (frame.prediction.values == out.argmax(1).numpy()).all()


def test_denied_samples_never_train_but_are_evaluated():
    seen = SeenIds()
    wb = bench(id_feature=True, cbs=[seen])
    wb.train_n_steps(1)  # deny in the middle of an epoch
    wb.train_samples.deny_samples_with_predicate(
        lambda id, age, loss, times, denied, pred, label: id % 3 == 0
    )
    denied = set(range(0, 60, 3))
    seen.ids.clear()
    wb.train_n_steps(3 * len(wb.train_loader))
    assert seen.ids and not denied & set(seen.ids)
    assert set(seen.ids) == set(range(60)) - denied
    assert len(wb.train_loader) == 3  # 40 allowed samples, batches of 16
    wb.eval_samples.denylist_samples([0, 1])
    wb.eval_full()
    assert wb.eval_samples.get_dataframe().exposure_amount.tolist()[:2] == [1, 1]
    wb.train_samples.allowlist_samples(None)
    wb.train_samples.denylist_samples(range(60))
    with pytest.raises(RuntimeError, match="every training sample is deny-listed"):
        wb.train_n_steps(len(wb.train_loader) + 1)


def test_the_seed_s_predicates_run_as_written():
    wb = bench(n_train=120, batch_size=16)
    wb.train_n_steps(len(wb.train_loader) * 4)
    table = wb.train_samples
    frame = table.get_dataframe()
    denylist_fn = lambda id, age, loss, times, denied, pred, label: loss <= 1.5  # noqa: E731
    table.deny_samples_with_predicate(denylist_fn)
    assert table.get_dataframe().deny_listed.tolist() == (frame.prediction_loss <= 1.5).tolist()
    table.allowlist_samples({1, 2, 3})
    assert not table.get_dataframe().deny_listed[[1, 2, 3]].any()
    table.allowlist_samples(None)
    assert not table.get_dataframe().deny_listed.any()
    # Denied samples are drawn among the matches, but allowed >= 3 * denied; the draw
    # comes from the table's generator, seeded from the workbench's seed.
    before = table.state_dict()
    count = table.deny_samples_and_sample_allowed_with_predicate(
        denylist_fn, allow_to_denied_factor=3
    )
    after = table.get_dataframe()
    assert count == after.deny_listed.sum() == min(120 // 4, (frame.prediction_loss <= 1.5).sum())
    assert 0 < count < (frame.prediction_loss <= 1.5).sum()  # some matches, not all
    assert (after.prediction_loss[after.deny_listed] <= 1.5).all()
    table.load_state_dict(before)
    table.deny_samples_and_sample_allowed_with_predicate(denylist_fn, allow_to_denied_factor=3)
    assert (table.get_dataframe().deny_listed == after.deny_listed).all()
    with pytest.raises(IndexError, match="out of range"):
        table.allowlist_samples({500})


def snapshot(wb):
    return {
        "model": copy.deepcopy(wb.model.state_dict()),
        "optimizer": copy.deepcopy(wb.optimizer.state_dict()),
        "stats": wb.neuron_stats(),
        "train": wb.train_samples.get_dataframe(),
        "eval": wb.eval_samples.get_dataframe(),
        "rates": wb.rates.state_dict(),
        "frozen": wb.frozen_layers,
        "progress": (wb.step, wb.seen, wb.epoch),
    }


def assert_same(a, b):
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert v.shape == b["model"][k].shape and torch.equal(v, b["model"][k]), k
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)
    assert a["stats"].equals(b["stats"])
    assert a["train"].equals(b["train"]) and a["eval"].equals(b["eval"])
    assert a["rates"].keys() == b["rates"].keys()
    assert a["frozen"] == b["frozen"] and a["progress"] == b["progress"]


@pytest.mark.parametrize("model", ["seed", "mlp"])
def test_dump_prune_load_restores_everything(model, tmp_path):
    wb = bench(model, root=tmp_path)
    wb.train_n_steps(3)
    wb.eval_full()
    wb.set_per_neuron_learning_rate(0, [1], 0.0)
    wb.freeze_layers_up_to_idx(0)
    wb.train_samples.denylist_samples([4, 5])
    saved = snapshot(wb)
    first = wb.dump()
    then = wb.train_n_steps(2)
    wb.prune(1, [0, 1, 2])
    wb.add_neurons(0, 3)
    wb.unfreeze_layers_from_idx(0)
    wb.train_n_steps(2)
    second = wb.dump()
    assert (first, second) == (0, 1)
    wb.load(first)
    assert_same(snapshot(wb), saved)
    assert wb.train_n_steps(2) == then  # the same data order and optimizer state: the same steps
    wb.load(second)
    assert [layer.size for layer in wb.layers][:2] == ([19, 9] if model == "mlp" else [7, 5])
    wb.train_n_steps(1)
    listing = str(wb.checkpoints)
    assert "step      3" in listing and "step      7" in listing
    assert wb.chkpt_manager is wb.checkpoints
    with pytest.raises(LookupError, match="no checkpoint 5"):
        wb.load(5)


def test_checkpoint_files_are_plain_data(tmp_path):
    wb = bench(root=tmp_path)
    wb.train_n_steps(1)
    wb.prune(0, [0])
    wb.dump()
    payload = torch.load(wb.checkpoints.path(0), weights_only=True)
    assert payload["architecture"]["sizes"]["0"] == {"in_features": 64, "out_features": 15}
    assert payload["architecture"]["shapes"]["2.weight"] == [12, 15]
    assert not list(tmp_path.glob("*.tmp"))
    # A new workbench on the same folder sees the checkpoint and loads it, shapes included.
    other = bench(root=tmp_path)
    other.load(0)
    assert other.model[0].weight.shape == (15, 64) and other.model[2].in_features == 15
    assert torch.equal(other.model[2].weight, wb.model[2].weight)


def test_checkpoint_folder_is_made_at_the_first_dump():
    wb = bench()
    assert wb.checkpoints.root is None and str(wb.checkpoints) == "no checkpoints"
    assert wb.dump() == 0
    assert (Path(wb.checkpoints.root) / "index.json").exists()
    shutil.rmtree(wb.checkpoints.root)
