"""Per-trial Learner callbacks of an experiment: numbers per epoch in the store, resumable."""

import sqlite3
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from ptera.lab import Callback
from ptera.lab.experiments import BatchedExecutor, Experiment, Store, import_object

from .callbacks_program import (
    BatchStats,
    Net,
    experiment,
    replay,
    small_digits,
    stats_and_session,
)
from .kill_program import kill_when_committed


def numbers(store, trial, epoch):
    return {(s, n): v for t, e, s, n, v in store.metrics([trial]) if e == epoch}


class Recorder(BatchStats):
    """``BatchStats`` that also keeps every epoch's numbers (for the one-off Learner)."""

    def __init__(self):
        super().__init__()
        self.history = []

    def after_epoch(self, learn):
        super().after_epoch(learn)
        if not learn.training:
            self.history.append(self.epoch_metrics())


def test_callback_numbers_per_epoch_equal_a_one_off_learner_with_the_same_callback(tmp_path):
    exp = experiment(tmp_path / "x.db", factory=BatchStats, lrs=(0.1, 0.3))
    exp.run(3, verbose=False)
    for plan in exp.trials:
        assert ("train", "batches") not in numbers(exp.store, plan.id, 0)  # no training yet
        recorder = Recorder()
        replay(exp, plan, [recorder], 3)
        for epoch, expected in enumerate(recorder.history, start=1):
            stored = numbers(exp.store, plan.id, epoch)
            for key, value in expected.items():
                key = key if isinstance(key, tuple) else ("", key)
                assert stored[key] == pytest.approx(value, rel=1e-12), (plan.label, epoch, key)
    frame = exp.results()
    assert set(frame.metric) >= {"batches", "mean_batch_loss", "fc1_norm"}  # results shows them


@pytest.mark.parametrize(
    "factory, same",
    [
        (BatchStats, True),
        (partial(BatchStats, scale=1.0), False),  # another factory: another identity
        (partial(BatchStats, scale=2.0), False),
        (None, False),
    ],
)
def test_the_factory_is_part_of_the_trial_identity(tmp_path, factory, same):
    base = experiment(tmp_path / "a.db", factory=BatchStats).trials[0]
    other = experiment(tmp_path / "a.db", factory=factory).trials[0]
    assert (base.id == other.id) is same
    if factory is None:
        assert "callbacks" not in other.config  # trials without callbacks keep their ids


def test_a_trial_resumed_after_kill_9_keeps_the_numbers_of_its_finished_epochs(tmp_path):
    store = tmp_path / "k.db"
    committed = kill_when_committed(
        "callbacks_program.py", store, ["4"], lambda c: max(c.values(), default=-1) >= 2
    )
    ((trial, done),) = committed.items()
    assert 2 <= done < 4
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    killed = Store(store)
    before = {e: numbers(killed, trial, e) for e in range(1, done + 1)}
    pid = before[1][("", "pid")]
    exp = experiment(store)
    assert exp.trials[0].id == trial
    exp.run(4, verbose=False)
    for epoch, stored in before.items():  # committed numbers are kept, not recomputed
        assert numbers(exp.store, trial, epoch) == stored
    assert numbers(exp.store, trial, 4)[("", "pid")] != pid  # trained by this process
    clean = experiment(tmp_path / "clean.db")
    clean.run(4, verbose=False)
    for epoch in range(5):
        a, b = numbers(exp.store, trial, epoch), numbers(clean.store, trial, epoch)
        a.pop(("", "pid"), None), b.pop(("", "pid"), None)
        assert a == b  # every epoch seeded: the resumed run equals one that never stopped


def test_processes_run_a_factory_in_their_workers(tmp_path):
    serial = experiment(tmp_path / "a.db", factory=BatchStats, lrs=(0.1, 0.3))
    serial.run(2, verbose=False)
    parallel = experiment(tmp_path / "b.db", factory=BatchStats, lrs=(0.1, 0.3))
    parallel.run(2, processes=2, verbose=False)
    assert parallel.results()["value"].tolist() == serial.results()["value"].tolist()
    assert "batches" in set(parallel.results().metric)


def test_batched_runs_trials_with_callbacks_one_by_one_and_says_so(tmp_path, capfd):
    serial = experiment(tmp_path / "a.db", factory=BatchStats, lrs=(0.1, 0.3))
    serial.run(2, verbose=False)
    batched = experiment(tmp_path / "b.db", factory=BatchStats, lrs=(0.1, 0.3))
    batched.run(2, executor=BatchedExecutor(), verbose=False)
    err = capfd.readouterr().err
    assert "BatchedExecutor: 2 trials run one by one" in err and "callbacks" in err
    assert batched.results()["value"].tolist() == serial.results()["value"].tolist()


class Clash(Callback):
    def after_epoch(self, learn):
        pass

    def epoch_metrics(self):
        return {("test", "loss"): 0.0}


class Late(BatchStats):
    order = 1_000_000


class Bad(Callback):
    def after_epoch(self, learn):
        pass

    def epoch_metrics(self):
        return {("test",): 1.0}


@pytest.mark.parametrize(
    "factory, error, message",
    [
        (lambda: 3, TypeError, "returned a bad callback"),
        (lambda: [BatchStats(), object()], TypeError, "returned a bad callback"),
        (BatchStats(), TypeError, "callbacks must be a function"),
        (Late, ValueError, "Late with order 1000000: .* must come before its commit"),
    ],
)
def test_a_bad_factory_fails_when_the_experiment_is_built(tmp_path, factory, error, message):
    with pytest.raises(error, match=message):
        experiment(tmp_path / "x.db", factory=factory)


@pytest.mark.parametrize(
    "factory, message",
    [
        (Clash, "records 'test/loss', which the trial also records"),
        (lambda: [BatchStats(), BatchStats()], "which BatchStats also records"),
        (Bad, r"returned the key \('test',\)"),
    ],
)
def test_bad_epoch_metrics_fail_the_trial_naming_them(tmp_path, factory, message):
    exp = experiment(tmp_path / "x.db", factory=factory)
    with pytest.raises(Exception, match=message):
        exp.run(1, verbose=False)
    assert [r["state"] for r in exp.status(1)] == ["failed"]


@pytest.mark.parametrize("processes", [None, 2])
def test_progress_reports_every_committed_epoch_in_this_process(tmp_path, processes):
    seen = []
    exp = experiment(tmp_path / "x.db", factory=stats_and_session, lrs=(0.1, 0.3))
    exp.run(2, processes=processes, verbose=False, progress=lambda *a: seen.append(a))
    for plan in exp.trials:
        mine = [(epoch, n) for trial, epoch, n in seen if trial == plan.id]
        assert [epoch for epoch, _ in mine] == [0, 1, 2]
        assert ("train", "batches") in mine[-1][1] and ("test", "loss") in mine[-1][1]
    seen.clear()
    exp.run(3, verbose=False, progress=lambda *a: seen.append(a))
    assert sorted((t, e) for t, e, _ in seen) == sorted((p.id, 3) for p in exp.trials)


def test_an_error_in_progress_is_raised_after_the_run(tmp_path):
    def broken(trial, epoch, numbers):
        raise RuntimeError("progress broke")

    exp = experiment(tmp_path / "x.db", factory=None)
    with pytest.raises(RuntimeError, match="progress broke"):
        exp.run(1, verbose=False, progress=broken)
    assert exp.store.epochs()[exp.trials[0].id] == 1  # the training went on


@pytest.mark.parametrize(
    "path, expected",
    [
        ("torch.optim:SGD", torch.optim.SGD),
        ("torch.utils.data:TensorDataset", TensorDataset),
        ("tests.callbacks_program:Net.forward", Net.forward),
        ("torch.optim.SGD", "write an import path 'package.module:attr'"),
        ("torch.optim:", "write an import path"),
        (":SGD", "write an import path"),
        ("no_such_module_here:x", "cannot import 'no_such_module_here:x': No module named"),
        ("torch.optim:Nope", "torch.optim has no attribute 'Nope'"),
        ("torch:optim.Nope", "torch.optim has no attribute 'Nope'"),
        (3, "expected an import path"),
    ],
)
def test_import_object_names_code_by_an_explicit_path(path, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            import_object(path)
    else:
        assert import_object(path) is expected


def test_import_object_takes_known_names():
    assert import_object("sgd", {"sgd": torch.optim.SGD}) is torch.optim.SGD
    with pytest.raises(ValueError, match=r"a known name \(sgd, \.\.\.\)"):
        import_object("adam", {"sgd": torch.optim.SGD})


def test_the_small_digits_are_flat():
    train, _ = small_digits()
    assert train.tensors[0].shape[1:] == (64,)
    assert isinstance(Experiment, type) and callable(Net)


CALLBACKS_CONFIG = """
model = "tests.callbacks_program:Net"
datasets = "tests.callbacks_program:small_digits"
store = "cb.db"
n_epochs = 1
batch_size = 50
callbacks = "tests.callbacks_program:BatchStats"
callbacks_args = {scale = 2.0}
"""


def test_a_config_file_names_the_callbacks_factory(tmp_path, capsys, monkeypatch):
    from ptera.lab.experiments.cli import main as cli_main

    monkeypatch.chdir(Path(__file__).parent.parent)
    config = tmp_path / "exp.toml"
    config.write_text(CALLBACKS_CONFIG)
    cli_main(["run", str(config)])
    assert "1 done" in capsys.readouterr().out
    rows = Store(tmp_path / "cb.db").metrics(Store(tmp_path / "cb.db").epochs())
    got = {(s, n): v for _, e, s, n, v in rows if e == 1}
    assert got[("train", "mean_batch_loss")] == pytest.approx(2 * got[("train", "loss")])
    config.write_text(
        CALLBACKS_CONFIG.replace('callbacks = "tests.callbacks_program:BatchStats"\n', "")
    )
    with pytest.raises(SystemExit) as exit:
        cli_main(["run", str(config)])
    assert exit.value.code == 2
    assert "'callbacks_args' without 'callbacks'" in capsys.readouterr().err


def test_a_relayed_worker_sends_the_callbacks_numbers_to_the_driver(tmp_path):
    """The path of ``RayExecutor(shared_filesystem=False)``, without Ray: a worker's
    store relays each epoch, callbacks' numbers included."""
    import dataclasses

    from ptera.lab.experiments.relay import RelayStore
    from ptera.lab.experiments.trial import run_trial

    exp = experiment(tmp_path / "x.db", factory=BatchStats)
    sent = []
    queue = type("Q", (), {"put": staticmethod(sent.append)})()
    setup = dataclasses.replace(exp.setup, store=RelayStore({}, {}, queue))
    assert run_trial(setup, exp.trials[0].id, 2) == 2  # epoch 0 is evaluated, not trained
    commits = {item[2]: item[3] for item in sent if item[0] == "commit"}
    assert sorted(commits) == [0, 1, 2]
    assert ("train", "batches") not in commits[0] and commits[2][("train", "batches")] == 4
