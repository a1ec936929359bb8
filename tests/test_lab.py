"""ptera.lab: the Learner's stages, callbacks, listeners, metrics, stats and LR finder."""

import importlib
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset, random_split
from torchmetrics.classification import MulticlassAccuracy

from ptera import SelectorError, probing
from ptera.lab import (
    STAGES,
    ActivationStats,
    Callback,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CheckpointCB,
    DataLoaders,
    Learner,
    LRFinder,
    MetricsCB,
    ProgressCB,
    load_checkpoint,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: a second intra-op thread only adds contention on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sine():
    # The seed's synthetic regression.
    torch.manual_seed(0)
    X = np.linspace(-1, 1, num=1000)
    y = np.sin(X)
    ds = TensorDataset(
        torch.tensor(X, dtype=torch.float32)[:, None], torch.tensor(y, dtype=torch.float32)[:, None]
    )
    train, val = random_split(ds, [0.9, 0.1], generator=torch.Generator().manual_seed(0))
    return DataLoaders.from_datasets(train, val, batch_size=50)


@pytest.fixture
def digits():
    return make_digits()


def make_digits():
    torch.manual_seed(0)
    d = load_digits()
    ds = TensorDataset(torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target))
    train, val = random_split(ds, [0.8, 0.2], generator=torch.Generator().manual_seed(0))
    return DataLoaders.from_datasets(train, val, batch_size=64)


def mlp(n_in=64, hidden=32, n_out=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def test_regression_loss_falls(sine):
    metrics = MetricsCB(print_epochs=False)
    Learner(mlp(1, 16, 1), sine, nn.functional.mse_loss, lr=0.1, cbs=[metrics]).fit(30)
    valid = [row["loss"] for row in metrics.history if not row["train"]]
    assert valid[-1] < 0.2 * valid[0]


def test_metrics_match_a_hand_computed_epoch(digits):
    metrics = MetricsCB(MulticlassAccuracy(num_classes=10, average="micro"), print_epochs=False)
    learn = Learner(mlp(), digits, nn.functional.cross_entropy, lr=0.5, cbs=[metrics])
    learn.fit(4)
    with torch.no_grad():
        learn.model.eval()
        total = correct = loss = 0.0
        for xb, yb in digits.valid:
            out = learn.model(xb)
            loss += nn.functional.cross_entropy(out, yb).item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            total += len(yb)
    row = metrics.history[-1]
    assert row["train"] is False and row["epoch"] == 3
    assert row["loss"] == pytest.approx(loss / total, abs=1e-6)
    assert row["multiclassaccuracy"] == pytest.approx(correct / total, abs=1e-6)
    assert row["multiclassaccuracy"] > 0.8


@pytest.mark.parametrize("fold", [1, 2, 1024])
def test_metrics_loss_is_the_batch_size_weighted_mean_of_the_batch_losses(monkeypatch, fold):
    # Losses are summed by the 1024 (here `fold`): any grouping gives the same mean.
    from ptera.lab import callbacks

    monkeypatch.setattr(callbacks, "_FOLD", fold)
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(10, 2), torch.randn(10, 1))
    dls = DataLoaders(DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))  # 4, 4, 2
    metrics = MetricsCB(print_epochs=False)
    learn = Learner(nn.Linear(2, 1), dls, cbs=[metrics])

    @learn.on("one_batch(learn) > loss")
    def weighted(learn, loss):
        return loss.item(), len(learn.batch[1])

    learn.fit(1, valid=False)
    pairs = learn.results.weighted
    assert [n for _, n in pairs] == [4, 4, 2]
    expected = sum(loss * n for loss, n in pairs) / 10
    assert metrics.history == [{"epoch": 0, "train": True, "loss": pytest.approx(expected)}]


class Recorder:
    def __init__(self, name, log, order=0, cancel=None):
        self.name, self.log, self.order, self.cancel = name, log, order, cancel

    def __getattr__(self, stage):
        if not stage.startswith(("before_", "after_", "cleanup_")):
            raise AttributeError(stage)

        def method(learn):
            self.log.append(f"{self.name}.{stage}")
            if self.cancel and self.cancel[0] == stage and self.cancel[2](learn):
                raise self.cancel[1]()

        return method


def tiny():
    ds = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    return DataLoaders.from_datasets(ds, ds, batch_size=4)


def stages_of(log, name="a"):
    return [entry.split(".", 1)[1] for entry in log if entry.startswith(name + ".")]


def test_callbacks_run_in_order_around_each_stage():
    log = []
    cbs = [Recorder("b", log, order=2), Recorder("a", log, order=1)]
    Learner(nn.Linear(2, 1), tiny(), cbs=cbs).fit(1, valid=False)
    assert log[:2] == ["a.before_fit", "b.before_fit"]
    stages = [s for s in stages_of(log) if "backward" not in s and "step" not in s]
    assert stages[:5] == [
        "before_fit",
        "before_epoch",
        "before_batch",
        "after_batch",
        "cleanup_batch",
    ]
    assert stages[-4:] == ["after_epoch", "cleanup_epoch", "after_fit", "cleanup_fit"]
    assert stages.count("before_batch") == 2


@pytest.mark.parametrize(
    "stage, exc, ran, skipped",
    [
        (
            "before_fit",
            CancelFitException,
            ["after_cancel_fit", "after_fit", "cleanup_fit"],
            ["before_epoch"],
        ),
        (
            "before_epoch",
            CancelEpochException,
            ["after_cancel_epoch", "after_epoch", "before_fit"],
            ["before_batch"],
        ),
        (
            "before_batch",
            CancelBatchException,
            ["after_cancel_batch", "after_batch"],
            ["before_backward"],
        ),
        ("after_batch", CancelFitException, ["after_cancel_fit", "after_fit"], []),
    ],
)
def test_cancel_exceptions_skip_the_rest_of_their_stage(stage, exc, ran, skipped):
    log = []
    cb = Recorder("a", log, cancel=(stage, exc, lambda learn: True))
    Learner(nn.Linear(2, 1), tiny(), cbs=[cb]).fit(2, valid=False)
    stages = stages_of(log)
    for s in ran:
        assert s in stages, s
    for s in skipped:
        assert s not in stages, s
    if exc is CancelFitException and stage == "after_batch":
        assert stages.count("before_batch") == 1  # the fit ended after the first batch


def test_after_and_cleanup_run_when_an_error_propagates():
    log = []

    class Boom(Exception):
        pass

    cb = Recorder("a", log, cancel=("before_batch", Boom, lambda learn: learn.iter == 1))
    with pytest.raises(Boom):
        Learner(nn.Linear(2, 1), tiny(), cbs=[cb]).fit(1)
    assert stages_of(log)[-6:] == [
        "after_batch",
        "cleanup_batch",
        "after_epoch",
        "cleanup_epoch",
        "after_fit",
        "cleanup_fit",
    ]


def test_selector_listeners_next_to_classic_callbacks():
    log = []
    learn = Learner(
        nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), tiny(), cbs=[Recorder("a", log)]
    )

    @learn.on("Linear > input")
    def shapes(input):
        return tuple(input.shape)

    @learn.on("one_epoch(train=False) > loss")
    def valid_loss(loss):
        return loss.item()

    @learn.on("fit > epoch")
    def epochs(epoch):
        return epoch

    learn.fit(2)
    assert shapes_count(learn.results.shapes) == {(4, 2): 4, (4, 3): 4, (8, 2): 2, (8, 3): 2}
    assert len(learn.results.valid_loss) == 2 and learn.results.epochs == [0, 1]
    assert "a.after_fit" in log
    with probing("one_batch > loss").values() as losses:
        learn.fit(1, valid=False)
    assert len(losses) == 2


def shapes_count(shapes):
    out = {}
    for s in shapes:
        out[s] = out.get(s, 0) + 1
    return out


def test_activation_stats_match_forward_hooks(digits, tmp_path):
    model = mlp()
    stats = ActivationStats()
    learn = Learner(model, digits, nn.functional.cross_entropy, lr=0.1, cbs=[stats])
    learn.fit(1, valid=False)
    # The seed's way, on the same batches, from the same starting weights.
    model2 = mlp()
    hooked = {name: {"mean": [], "std": []} for name in ("0", "1", "2")}

    def hook(name):
        def record(module, inputs, out):
            hooked[name]["mean"].append(out.mean().item())
            hooked[name]["std"].append(out.std().item())

        return record

    for name, m in model2.named_children():
        m.register_forward_hook(hook(name))
    Learner(model2, make_digits(), nn.functional.cross_entropy, lr=0.1).fit(1, valid=False)
    for name in ("0", "1", "2"):
        assert np.allclose(stats.stats["train"][name]["mean"], hooked[name]["mean"], atol=1e-6)
        assert np.allclose(stats.stats["train"][name]["std"], hooked[name]["std"], atol=1e-6)
    paths = stats.plot(tmp_path)
    assert all((tmp_path / p.split("/")[-1]).stat().st_size > 1000 for p in paths)
    assert "__ptera" not in str(nn.Linear.forward.__code__.co_names)


def test_activation_stats_equal_the_benchmarks_hook_baseline(monkeypatch):
    # bench_lab.py times ActivationStats against forward hooks computing the same
    # statistics the same way: a fair comparison only if the numbers are the same.
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    bench = importlib.import_module("bench_lab")
    probes, hooks = ActivationStats(), bench.HookStatsCB()
    for cb in (probes, hooks):
        Learner(mlp(), make_digits(), nn.functional.cross_entropy, cbs=[cb]).fit(2)
    hooked = hooks.stats.stats
    assert list(probes.stats) == list(hooked) == ["train", "eval"]
    for split, layers in probes.stats.items():
        assert list(layers) == list(hooked[split]) == ["0", "1", "2"]
        for name, series in layers.items():
            assert sorted(series) == sorted(hooked[split][name])
            for key, values in series.items():
                other = hooked[split][name][key]
                if key == "hist":
                    assert len(values) == len(other) and all(map(torch.equal, values, other))
                else:
                    assert values == other, (split, name, key)


def test_lr_finder_leaves_parameters_bit_identical(digits, tmp_path):
    learn = Learner(mlp(), digits, nn.functional.cross_entropy, lr=0.1)
    before = [p.detach().clone() for p in learn.model.parameters()]
    finder = learn.lr_find(num_it=40)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    assert 5 <= len(finder.losses) <= 40 and finder.lrs == sorted(finder.lrs)
    assert 1e-6 <= finder.suggestion <= 10
    assert (tmp_path / "lr.png").exists() is False
    finder.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 1000


def test_checkpoints_round_trip(digits, tmp_path):
    path = tmp_path / "ckpt.pt"
    learn = Learner(mlp(), digits, nn.functional.cross_entropy, cbs=[CheckpointCB(path)])
    learn.fit(2, valid=False)
    other = Learner(mlp(), digits, nn.functional.cross_entropy)
    assert load_checkpoint(other, path) == 1
    for a, b in zip(learn.model.parameters(), other.model.parameters()):
        assert torch.equal(a, b)
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_progress_prints_epoch_lines_without_a_terminal(digits, capsys):
    cbs = [MetricsCB(MulticlassAccuracy(num_classes=10)), ProgressCB()]
    Learner(mlp(), digits, nn.functional.cross_entropy, cbs=cbs).fit(1)
    out = capsys.readouterr().out
    assert "epoch 1  train  loss" in out and "epoch 1  valid" in out


def test_bad_input_names_the_culprit():
    with pytest.raises(TypeError, match="has no stage method"):
        Learner(nn.Linear(2, 1), tiny(), cbs=[object()])
    with pytest.raises(TypeError, match="is a class: pass an instance, MetricsCB"):
        Learner(nn.Linear(2, 1), tiny(), cbs=[MetricsCB])
    learn = Learner(nn.Linear(2, 1), tiny())
    with pytest.raises(ValueError, match="start_epoch=3 and n_epochs=2"):
        learn.fit(2, start_epoch=3)
    with pytest.raises(SelectorError, match="has no variable 'lossy'"):
        learn.on("one_batch > lossy")
    bad = DataLoaders([torch.randn(4, 2)], [])
    with pytest.raises(
        ValueError, match="the train loader yielded a Tensor at batch 0; the Learner expects"
    ):
        Learner(nn.Linear(2, 1), bad).fit(1)


def test_device_callback_moves_model_and_batches():
    from ptera.lab import DeviceCB

    seen = []
    learn = Learner(nn.Linear(2, 1), tiny(), cbs=[DeviceCB("cpu")])

    @learn.on("one_batch > loss")
    def device(loss):
        seen.append(loss.device.type)

    learn.fit(1)
    assert seen == ["cpu"] * 3 and next(learn.model.parameters()).device.type == "cpu"
    with pytest.raises(SelectorError, match="cannot find function 'no_such_stage'"):
        learn.on("no_such_stage > loss")


def test_every_after_batch_runs_when_an_earlier_callback_cancels():
    log = []
    first = Recorder(
        "a", log, order=-1, cancel=("after_batch", CancelFitException, lambda learn: True)
    )
    Learner(nn.Linear(2, 1), tiny(), cbs=[first, Recorder("b", log)]).fit(2)
    assert "b.after_batch" in log and log.count("a.before_batch") == 1  # b closed its batch too


CANCELS = {
    "fit": CancelFitException,
    "epoch": CancelEpochException,
    "batch": CancelBatchException,
    "backward": CancelBackwardException,
    "step": CancelStepException,
}


def test_every_listed_event_fires_in_a_plain_fit():
    log = []
    Learner(nn.Linear(2, 1), tiny(), cbs=[Recorder("a", log)]).fit(1)
    assert set(stages_of(log)) == {e for e in STAGES if not e.startswith("after_cancel_")}


@pytest.mark.parametrize("stage", list(CANCELS))
def test_each_stage_fires_its_cancel_after_and_cleanup_events(stage):
    log = []
    cb = Recorder("a", log, cancel=(f"before_{stage}", CANCELS[stage], lambda learn: True))
    learn = Learner(nn.Linear(2, 1), tiny(), cbs=[cb])
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1)
    events = stages_of(log)
    assert {f"after_cancel_{stage}", f"after_{stage}", f"cleanup_{stage}"} <= set(events)
    # Each of these stages leads to the update: cancelling it always skips the update.
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


def test_a_misspelled_stage_method_is_an_error_naming_the_known_ones():
    class Typo(Callback):
        def after_batch(self, learn):
            pass

        def after_bach(self, learn):
            pass

    with pytest.raises(TypeError, match="has after_bach, which no stage fires; the stage methods"):
        Learner(nn.Linear(2, 1), tiny(), cbs=[Typo()])
    with pytest.raises(TypeError, match="before_fit, after_cancel_fit, after_fit, cleanup_fit"):
        Learner(nn.Linear(2, 1), tiny()).add_cb(Typo())


class Raises:
    """A callback raising ``make()`` at each event listed in ``raises``."""

    def __init__(self, raises):
        self.raises = raises

    def __getattr__(self, event):
        if event not in STAGES:
            raise AttributeError(event)

        def method(learn):
            if event in self.raises:
                raise self.raises[event]()

        return method


class Boom(Exception):
    pass


def closing_error():
    return ValueError("closing went wrong")


@pytest.mark.parametrize(
    "closing", ["after_batch", "cleanup_batch", "after_epoch", "cleanup_epoch", "after_fit"]
)
def test_a_closing_callback_error_does_not_hide_the_body_error(closing):
    cb = Raises({"before_batch": Boom, closing: closing_error})
    with pytest.raises(Boom) as info:
        Learner(nn.Linear(2, 1), tiny(), cbs=[cb]).fit(1)
    assert any("closing went wrong" in note for note in info.value.__notes__)


def test_a_closing_callback_error_is_raised_when_the_body_succeeded():
    with pytest.raises(ValueError, match="closing went wrong"):
        Learner(nn.Linear(2, 1), tiny(), cbs=[Raises({"after_fit": closing_error})]).fit(1)


@pytest.mark.parametrize(
    "event, cancel",
    [
        ("after_batch", CancelBatchException),
        ("cleanup_batch", CancelBatchException),
        ("after_epoch", CancelEpochException),
        ("cleanup_epoch", CancelBatchException),
        ("after_step", CancelStepException),
        ("cleanup_backward", CancelBackwardException),
        ("after_fit", CancelFitException),
        ("cleanup_fit", CancelFitException),
        ("after_cancel_fit", CancelFitException),
    ],
)
def test_a_cancel_raised_while_closing_does_not_escape_fit(event, cancel):
    raises = {event: cancel}
    if event.startswith("after_cancel_"):
        raises["before_fit"] = CancelFitException
    log = []
    Learner(nn.Linear(2, 1), tiny(), cbs=[Raises(raises), Recorder("a", log)]).fit(2)
    assert stages_of(log)[-1] == "cleanup_fit"


def test_a_cancel_of_an_enclosing_stage_raised_while_closing_still_cancels_it():
    log = []
    cb = Raises({"after_batch": CancelEpochException})
    Learner(nn.Linear(2, 1), tiny(), cbs=[cb, Recorder("a", log)]).fit(2)
    assert stages_of(log).count("before_batch") == 4  # one per epoch, train and valid


def dropout_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))


def adam_learner(cbs=()):
    model, digits = dropout_mlp(), make_digits()
    train, valid = (Subset(d.dataset, range(256)) for d in (digits.train, digits.valid))
    dls = DataLoaders.from_datasets(train, valid, batch_size=32)
    return Learner(
        model, dls, nn.functional.cross_entropy, lr=1e-3, opt_func=torch.optim.Adam, cbs=cbs
    )


@pytest.mark.parametrize("valid", [True, False])
def test_two_plus_two_epochs_from_a_checkpoint_equal_four(tmp_path, valid):
    # Dropout draws from torch's state, shuffling from the loader's generator,
    # validation's loader from torch's state, Adam keeps moments: all must resume.
    straight = adam_learner()
    straight.fit(4, valid=valid)
    after = torch.get_rng_state()
    path = tmp_path / "ckpt.pt"
    adam_learner(cbs=[CheckpointCB(path)]).fit(2, valid=valid)
    torch.manual_seed(123)  # whatever happened in between
    metrics = MetricsCB(print_epochs=False)
    resumed = adam_learner(cbs=[metrics, CheckpointCB(path)])
    epoch = load_checkpoint(resumed, path)
    assert epoch == 1
    resumed.fit(4, valid=valid, start_epoch=epoch + 1)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), after)
    assert sorted({row["epoch"] for row in metrics.history}) == [2, 3]
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_lr_find_leaves_records_output_and_checkpoints_alone(digits, tmp_path, capsys):
    metrics = MetricsCB(MulticlassAccuracy(num_classes=10))
    path = tmp_path / "ckpt.pt"
    cbs = [metrics, ProgressCB(), ActivationStats(), CheckpointCB(path)]
    learn = Learner(mlp(), digits, nn.functional.cross_entropy, cbs=cbs)
    learn.fit(1, train=False)
    capsys.readouterr()
    rows, results = list(metrics.history), learn.results
    learn.lr_find(num_it=30)
    assert capsys.readouterr().out == ""
    assert metrics.history == rows and learn.results is results
    assert not path.exists() and learn.cbs == cbs


def test_plots_create_their_folder(digits, tmp_path):
    stats = ActivationStats()
    learn = Learner(mlp(), digits, nn.functional.cross_entropy, cbs=[stats])
    finder = learn.lr_find(num_it=10)
    learn.fit(1, valid=False)
    assert finder.plot(tmp_path / "a" / "b" / "lr.png") == str(tmp_path / "a" / "b" / "lr.png")
    paths = stats.plot(tmp_path / "c" / "d")
    assert [os.path.dirname(p) for p in paths] == [str(tmp_path / "c" / "d")] * 2


def test_activation_stats_report_dead_units_of_activations_only(digits, monkeypatch, tmp_path):
    import matplotlib.figure

    stats = ActivationStats()
    Learner(mlp(), digits, nn.functional.cross_entropy, cbs=[stats]).fit(1)
    train = stats.stats["train"]
    assert {name: "dead" in s for name, s in train.items()} == {"0": False, "1": True, "2": False}
    n = len(digits.train)
    assert all(len(train[name][key]) == n for name in train for key in train[name])
    assert len(stats.stats["eval"]["0"]["mean"]) == len(digits.valid)
    assert 0 < min(train["1"]["dead"]) and max(train["1"]["dead"]) < 1
    assert [stats.label(name) for name in train] == ["0 (Linear)", "1 (ReLU)", "2 (Linear)"]
    axes = []
    original = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        axes.extend((ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    stats.plot(tmp_path)
    assert ("1 (ReLU)", "batch", "|activation|") in axes


def test_metrics_and_activation_stats_read_the_device_per_epoch_not_per_batch(monkeypatch):
    # On a GPU each .item(), .tolist() or .cpu() waits for the device: count ptera's.
    import sys

    lab = os.path.dirname(sys.modules["ptera.lab"].__file__)
    reads = []
    for name in ("item", "tolist", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(lab):
                reads.append(sys._getframe(1).f_code.co_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    digits = make_digits()
    dls = DataLoaders.from_datasets(digits.train.dataset, digits.valid.dataset, batch_size=16)
    stats = ActivationStats()
    cbs = [MetricsCB(print_epochs=False), stats]
    Learner(mlp(), dls, nn.functional.cross_entropy, cbs=cbs).fit(2)
    monkeypatch.undo()
    batches = 2 * (len(dls.train) + len(dls.valid))
    # Per epoch and split: the loss, and one read for all activation statistics.
    assert reads.count("after_epoch") == 4 and reads.count("_flush") == 4
    assert len(reads) == 4 * (1 + 1) < batches / 4
    assert len(stats.stats["train"]["1"]["dead"]) == 2 * len(dls.train)


ENCLOSING = {
    "fit": ["fit"],
    "epoch": ["fit", "epoch"],
    "batch": ["fit", "epoch", "batch"],
    "backward": ["fit", "epoch", "batch", "backward"],
    "step": ["fit", "epoch", "batch", "step"],
}


@st.composite
def cancels(draw):
    """Cancels of a stage or of one enclosing it, raised from any event of that stage."""
    out = {}
    for event in draw(st.lists(st.sampled_from(STAGES), min_size=1, max_size=3, unique=True)):
        stage = event.rsplit("_", 1)[1]
        out[event] = (CANCELS[draw(st.sampled_from(ENCLOSING[stage]))], draw(st.integers(0, 3)))
    return out


@settings(max_examples=40, deadline=None)
@given(cancels())
def test_whatever_is_cancelled_every_opened_stage_is_closed_once(plan):
    log = []

    class Canceller:
        def __getattr__(self, event):
            if event not in plan:
                raise AttributeError(event)
            exc, nth = plan[event]
            calls = []

            def method(learn):
                calls.append(1)
                if len(calls) == nth + 1:
                    raise exc()

            return method

    recorder = Recorder("a", log, order=-1)  # sees each before_ event before any cancel
    Learner(nn.Linear(2, 1), tiny(), cbs=[Canceller(), recorder]).fit(2)
    events = stages_of(log)
    for stage in CANCELS:
        opened = events.count(f"before_{stage}")
        assert events.count(f"after_{stage}") == events.count(f"cleanup_{stage}") == opened
        assert events.count(f"after_cancel_{stage}") <= opened
    assert events[-1] == "cleanup_fit"


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: LRFinder(num_it=1), ValueError, "num_it >= 2"),
        (lambda: LRFinder(start_lr=1.0, end_lr=0.1), ValueError, "start_lr < end_lr"),
        (
            lambda: DataLoaders.from_datasets(TensorDataset(torch.zeros(4, 2)), None, bs=64),
            TypeError,
            "batch_size=64, not bs=",
        ),
    ],
)
def test_bad_settings_are_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()
