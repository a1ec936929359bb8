"""The Learner's training conveniences: default loss, one-cycle, predictions, saving,
gradient clipping and mixed precision."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ptera.lab import DataLoaders, GradClip, Learner, MetricsCB, MixedPrecision

from .test_lab import make_digits, mlp, one_thread, tiny  # noqa: F401 -- one_thread: autouse


def classes():
    torch.manual_seed(0)
    xs = torch.randn(96, 4)
    ys = (xs[:, 0] > 0).long()
    ds = TensorDataset(xs, ys)
    return DataLoaders.from_datasets(ds, ds, batch_size=32)


@pytest.mark.parametrize(
    "dls, model, expected",
    [
        (classes, lambda: nn.Linear(4, 2), nn.functional.cross_entropy),
        (tiny, lambda: nn.Linear(2, 1), nn.functional.mse_loss),
    ],
)
def test_without_loss_fn_the_targets_dtype_chooses_the_loss(dls, model, expected):
    torch.manual_seed(0)
    learn = Learner(model(), dls())
    losses = []
    learn.on("one_batch(xb, yb) > preds")(lambda xb, yb, preds: losses.append((preds, yb)))
    learn.fit(1, valid=False)
    preds, yb = losses[0]
    assert learn.loss is not None
    assert torch.equal(learn.loss_fn(preds, yb), expected(preds, yb))


@pytest.mark.parametrize(
    "targets, error, message",
    [
        (torch.zeros(8, 3), ValueError, "float targets mean mse_loss, but the predictions have"),
        (torch.zeros(8, dtype=torch.bool), TypeError, "targets of dtype torch.bool"),
    ],
)
def test_without_loss_fn_unfit_targets_get_a_clear_error(targets, error, message):
    ds = TensorDataset(torch.randn(8, 2), targets)
    with pytest.raises(error, match=message):
        Learner(nn.Linear(2, 1), DataLoaders.from_datasets(ds, ds, batch_size=4)).fit(1)


def test_fit_one_cycle_follows_torchs_schedule():
    learn = Learner(mlp(), make_digits(), lr=0.5)
    lrs = []
    seen = type("LR", (), {"before_step": lambda self, learn: lrs.append(lr_of(learn))})()
    learn.add_cb(seen).fit_one_cycle(2, lr_max=0.5)
    steps = 2 * len(learn.dls.train)
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.OneCycleLR(reference, 0.5, total_steps=steps)
    expected = []
    for _ in range(steps):
        expected.append(lr_of_opt(reference))
        reference.step()
        sched.step()
    assert lrs == pytest.approx(expected)
    assert lr_of(learn) == pytest.approx(expected[-1])  # the schedule's end, not a step past it
    assert max(lrs) == pytest.approx(0.5, rel=1e-3) and lrs[0] == pytest.approx(0.5 / 25)
    assert learn.opt.param_groups[0]["momentum"] == 0  # plain SGD: momentum not cycled on
    assert not any(cb.__class__.__name__ == "OneCycle" for cb in learn.cbs)


def lr_of(learn):
    return lr_of_opt(learn.opt)


def lr_of_opt(opt):
    return opt.param_groups[0]["lr"]


def test_get_preds_and_predict_match_the_model_in_eval_mode():
    learn = Learner(nn.Sequential(nn.Linear(64, 10), nn.Dropout(0.5)), make_digits())
    learn.fit(1)
    learn.model.train()
    preds, targets = learn.get_preds()
    xs = torch.cat([xb for xb, _ in learn.dls.valid])
    ys = torch.cat([yb for _, yb in learn.dls.valid])
    learn.model.eval()
    with torch.no_grad():
        assert torch.equal(preds, learn.model(xs))
    assert torch.equal(targets, ys) and learn.model.training is False
    learn.model.train()
    assert torch.equal(learn.predict(xs[:5]), preds[:5])
    assert learn.model.training  # predict restores the mode it found
    loader = DataLoader(TensorDataset(xs[:10], ys[:10]), batch_size=4)
    assert torch.equal(learn.get_preds(loader)[0], preds[:10])


def test_save_and_load_round_trip_weights_and_optimizer(tmp_path):
    learn = Learner(mlp(), make_digits(), opt_func=torch.optim.Adam, lr=1e-3)
    learn.fit(1, valid=False)
    path = learn.save(tmp_path / "sub" / "model.pt")
    other = Learner(mlp(), make_digits(), opt_func=torch.optim.Adam, lr=1e-3).load(path)
    for a, b in zip(learn.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)
    assert other.opt.state_dict()["state"][0]["step"] == len(learn.dls.train)
    other.lr_find(num_it=5)  # a throwaway fit: the loaded state still starts the next one
    other.fit(1, valid=False)
    assert other.opt.state_dict()["state"][0]["step"] == 2 * len(learn.dls.train)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a Learner checkpoint"):
        other.load(tmp_path / "other.pt")


@pytest.mark.parametrize("scaled", [False, True], ids=["float32", "float16 with GradScaler"])
def test_grad_clip_bounds_the_gradient_norm(scaled):
    norms = []

    class Norm:
        order = 100

        def after_backward(self, learn):
            grads = [p.grad.norm() for p in learn.model.parameters()]
            norms.append(torch.stack(grads).norm().item())

    clip = GradClip(max_norm=0.01)
    cbs = [clip, Norm(), *([MixedPrecision(torch.float16)] if scaled else [])]
    Learner(mlp(), make_digits(), cbs=cbs).fit(1, valid=False)
    assert max(norms) <= 0.01 * (1 + 1e-5)
    assert clip.last_norm is not None and clip.last_norm > 0.01  # it did clip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_runs_the_forward_pass_in_low_precision_on_the_cpu(dtype):
    metrics = MetricsCB(print_epochs=False)
    learn = Learner(mlp(), make_digits(), lr=0.5, cbs=[MixedPrecision(dtype), metrics])
    dtypes = []
    learn.on("one_batch > preds")(lambda preds: dtypes.append(preds.dtype))
    learn.fit(2)
    assert set(dtypes) == {dtype}
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    losses = [row["loss"] for row in metrics.history if not row["train"]]
    assert losses[-1] < 0.7 * losses[0]
    assert learn.grad_scaler is None  # the float16 scaler lives for one fit
    assert not torch.is_autocast_enabled("cpu")


def test_training_callbacks_reject_bad_settings():
    with pytest.raises(ValueError, match="max_norm > 0"):
        GradClip(0)
    with pytest.raises(ValueError, match="bfloat16 or torch.float16, got torch.float32"):
        MixedPrecision(torch.float32)


class SeedMetrics:
    """Seed 004's ``Metrics`` callback, as written there (reads ``l.xb``, ``l.yb``)."""

    order = 0

    def after_batch(self, l):  # noqa: E741 -- the seed's name
        with torch.no_grad():
            n = len(l.xb)
            acc = (l.preds.argmax(dim=1) == l.yb).float().sum()
            self.accs.append(acc)
            self.losses.append(l.loss * n)
            self.ns.append(n)

    def before_epoch(self, l):  # noqa: E741
        self.accs, self.losses, self.ns = [], [], []

    def after_epoch(self, l):  # noqa: E741
        n = sum(self.ns)
        self.rows.append((l.epoch, l.model.training, sum(self.losses).item() / n,
                          sum(self.accs).item() / n))  # fmt: skip


def test_the_seeds_metrics_callback_reads_xb_and_yb():
    cb = SeedMetrics()
    cb.rows = []
    dls = classes()
    learn = Learner(nn.Linear(4, 2), dls, lr=0.5, cbs=[cb])
    seen = []
    learn.on("one_batch(xb, yb) > preds")(lambda xb, yb, preds: seen.append((xb, yb)))
    views = []
    spy = type(
        "Spy", (), {"after_batch": lambda self, learn: views.append((learn.xb, learn.yb, learn.i))}
    )()
    learn.add_cb(spy).fit(2)
    assert [(e, t) for e, t, _, _ in cb.rows] == [(0, True), (0, False), (1, True), (1, False)]
    assert cb.rows[-1][3] > 0.9  # validation accuracy
    assert len(views) == len(seen) == 2 * (len(dls.train) + len(dls.valid))
    for (xb, yb, _), (sxb, syb) in zip(views, seen):
        assert xb is sxb and yb is syb  # the very tensors the model and loss got
    assert [i for _, _, i in views[: len(dls.train)]] == list(range(len(dls.train)))


def test_xb_and_yb_follow_a_replaced_batch_and_are_read_only():
    learn = Learner(nn.Linear(4, 2), classes(), lr=0.1)
    assert learn.xb is None and learn.yb is None  # before any batch
    doubled = []

    class Double:
        def before_batch(self, l):  # noqa: E741
            l.batch = (l.batch[0] * 2, l.batch[1])
            doubled.append(l.xb)

    learn.on("one_batch(xb) > preds")(lambda xb, preds: doubled.append(xb))
    learn.add_cb(Double()).fit(1, valid=False)
    assert all(a is b for a, b in zip(doubled[::2], doubled[1::2]))
    for name in ("xb", "yb", "i"):
        with pytest.raises(AttributeError):
            setattr(learn, name, None)
    learn.loss_f = nn.functional.nll_loss  # the seed's name for loss_fn
    assert learn.loss_fn is nn.functional.nll_loss
