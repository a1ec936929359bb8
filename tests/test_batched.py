"""ptera.lab.experiments.batched: groups of trials trained as one vmapped model."""

import hashlib
import os
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptera.lab.experiments import (
    BatchedExecutor,
    ChangeOptimizer,
    ChangeTrainLoader,
    Experiment,
    PerturbWeights,
    ReinitWeights,
    TrialError,
    Tweak,
)
from ptera.lab.experiments.batched import _ready, plan_groups, why_alone

from .batched_program import eight_trials, small_images
from .experiment_program import TempNet, small_digits
from .kill_program import kill_when_committed

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def data():
    return small_digits()


def name(plan):
    shown = ",".join(f"{k}={v}" for k, v in plan.variation.items())
    return plan.label + (f" [{shown}]" if shown else "")


def groups(exp, max_trials=64, epochs=None):
    ids = list(exp.plans)
    epochs = epochs or dict.fromkeys(ids, -1)
    return [
        [name(exp.plans[t]) for t in g] for g in plan_groups(exp.setup, ids, epochs, max_trials)
    ]


def close(a, b):
    """Every metric of two experiments, row by row, within 1e-4 relative."""
    a, b = a.results(), b.results()
    assert a[["trial", "epoch", "split", "metric"]].equals(b[["trial", "epoch", "split", "metric"]])
    np.testing.assert_allclose(b["value"], a["value"], rtol=1e-4, atol=1e-6)


# -- grouping ----------------------------------------------------------------------------
S0, S1 = "[seed_shuffle=0]", "[seed_shuffle=1]"
GROUPS = [
    (
        "initial weights join",
        dict(
            interventions=[
                PerturbWeights.make_variations(epsilon=(0.01, 0.1)),
                ReinitWeights(seed_weights=1),
            ]
        ),
        [
            [
                "control",
                "PerturbWeights(epsilon=0.01, seed_weights=0)",
                "PerturbWeights(epsilon=0.1, seed_weights=0)",
                "ReinitWeights(seed_weights=1)",
            ]
        ],
    ),
    (
        "batch orders and numeric hyperparameters join",
        dict(
            variations=[ChangeTrainLoader.make_variations(seed_shuffle=(0, 1))],
            interventions=[ChangeOptimizer(lr=0.5, momentum=0.9, weight_decay=1e-4)],
        ),
        [
            [
                f"control {S0}",
                f"control {S1}",
                f"ChangeOptimizer(lr=0.5, momentum=0.9, weight_decay=0.0001) {S0}",
                f"ChangeOptimizer(lr=0.5, momentum=0.9, weight_decay=0.0001) {S1}",
            ]
        ],
    ),
    (
        "batch size, optimizer class and nesterov split",
        dict(
            interventions=[
                ChangeTrainLoader(batch_size=32),
                ChangeOptimizer(optimizer=torch.optim.Adam),
                ChangeOptimizer(optimizer=torch.optim.Adam, lr=0.1),
                ChangeOptimizer(momentum=0.9, nesterov=True),
            ]
        ),
        [
            ["control"],
            ["ChangeTrainLoader(batch_size=32)"],
            ["ChangeOptimizer(optimizer=Adam)", "ChangeOptimizer(optimizer=Adam, lr=0.1)"],
            ["ChangeOptimizer(momentum=0.9, nesterov=True)"],
        ],
    ),
    (
        "a tweak joins only trials with the same tweak",
        dict(
            variations=[ChangeTrainLoader.make_variations(seed_shuffle=(0, 1))],
            interventions=[Tweak({"head > T": 2.0}), Tweak({"head > T": 3.0})],
        ),
        [
            [f"control {S0}", f"control {S1}"],
            [f"Tweak(head > T: 2) {S0}", f"Tweak(head > T: 2) {S1}"],
            [f"Tweak(head > T: 3) {S0}", f"Tweak(head > T: 3) {S1}"],
        ],
    ),
    (
        "windowed optimizer changes and kicks join; a windowed tweak is other code",
        dict(
            interventions=[
                ChangeOptimizer(lr=0.0, when=((0, 5),)),
                PerturbWeights(epsilon=0.1, when=((3, 4),)),
                Tweak({"head > T": 2.0}, when=((0, 5),)),
            ]
        ),
        [
            [
                "control",
                "ChangeOptimizer(lr=0, when=0-5)",
                "PerturbWeights(epsilon=0.1, seed_weights=0, when=3-4)",
            ],
            ["Tweak(head > T: 2, when=0-5)"],
        ],
    ),
    (
        "another optimizer or a tweak of the loop runs alone",
        dict(
            optimizer=torch.optim.RMSprop,
            interventions=[
                PerturbWeights(epsilon=0.1),
                Tweak({"one_batch > loss": lambda loss: loss * 2}),
            ],
        ),
        [
            ["control"],
            ["PerturbWeights(epsilon=0.1, seed_weights=0)"],
            ["Tweak(one_batch > loss: <lambda>)"],
        ],
    ),
]


@pytest.mark.parametrize("case, grid, expected", GROUPS, ids=[g[0] for g in GROUPS])
def test_trials_are_grouped_by_the_code_they_run(case, grid, expected, data, tmp_path):
    exp = Experiment(TempNet(), data, store=tmp_path / "x.db", **grid)
    assert sorted(map(sorted, groups(exp))) == sorted(map(sorted, expected))


def test_groups_are_split_by_size_and_resume_point_with_controls_first(data, tmp_path):
    exp = Experiment(
        TempNet(),
        data,
        variations=[ChangeTrainLoader.make_variations(seed_shuffle=(0, 1))],
        interventions=[PerturbWeights.make_variations(epsilon=(0.01, 0.1))],
        store=tmp_path / "x.db",
    )
    for group in groups(exp, max_trials=3) + groups(exp):
        controls = [n.startswith("control") for n in group]
        assert controls == sorted(controls, reverse=True)  # controls first
    assert [len(g) for g in groups(exp, max_trials=4)] == [4, 2]
    ids = list(exp.plans)
    epochs = {t: (1 if i < 2 else 2) for i, t in enumerate(ids)}
    assert [len(g) for g in groups(exp, epochs=epochs)] == [2, 4]


@pytest.mark.parametrize(
    "grid, reason",
    [
        (dict(optimizer=torch.optim.RMSprop), "RMSprop has no stacked step"),
        (dict(hyperparameters={"momentum": 0.9, "maximize": True}), "maximize=True"),
        (
            dict(interventions=[Tweak({"one_batch > loss": lambda loss: loss})]),
            "may name the training loop",
        ),
        (
            dict(
                hyperparameters={"momentum": 0.9},
                interventions=[ChangeOptimizer(momentum=0.0, when=((0, 3),))],
            ),
            "turns momentum on or off",
        ),
    ],
)
def test_why_a_trial_runs_alone(grid, reason, data, tmp_path):
    exp = Experiment(TempNet(), data, store=tmp_path / "x.db", **grid)
    assert reason in why_alone(exp.setup, exp.grid[-1])


def test_a_training_set_without_tensors_runs_alone(data, tmp_path):
    train = [data[0][i] for i in range(len(data[0]))]  # a plain list of pairs
    exp = Experiment(TempNet(), (train, data[1]), store=tmp_path / "x.db")
    assert "not a TensorDataset" in why_alone(exp.setup, exp.grid[0])


# -- training --------------------------------------------------------------------------
# Adam on this plateau is chaotic in the serial path itself: nudging the weights by
# 1e-6 moves its losses by 1e-4 within two epochs. One epoch keeps float noise small.
@pytest.mark.parametrize("optimizer, epochs", [(torch.optim.SGD, 2), (torch.optim.Adam, 1)])
def test_eight_trials_batched_equal_serial(optimizer, epochs, tmp_path):
    serial = eight_trials(tmp_path / "s.db", optimizer)
    batched = eight_trials(tmp_path / "b.db", optimizer)
    assert len(batched) == 8 and len(groups(batched)) == 1
    serial.run(epochs, verbose=False)
    batched.run(epochs, executor=BatchedExecutor(), verbose=False)
    close(serial, batched)
    assert sorted(batched.trained) == sorted(serial.trained)
    assert batched.status(epochs) == serial.status(epochs)
    for plan in batched.grid:  # per trial checkpoints, unstacked, in torch's formats
        a = serial.store.load_checkpoint(plan.id, epochs)
        b = batched.store.load_checkpoint(plan.id, epochs)
        assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        assert {k: v.shape for k, v in a["model"].items()} == {
            k: v.shape for k, v in b["model"].items()
        }
        assert a["opt"]["param_groups"] == b["opt"]["param_groups"]
        assert a["opt"]["state"].keys() == b["opt"]["state"].keys()


def test_batched_and_serial_resume_each_other(tmp_path):
    serial = eight_trials(tmp_path / "s.db")
    serial.run(2, verbose=False)
    mixed = eight_trials(tmp_path / "m.db")
    mixed.run(1, executor="batched", verbose=False)
    mixed.run(2, verbose=False)  # serial from batched checkpoints
    close(serial, mixed)
    other = eight_trials(tmp_path / "o.db")
    other.run(1, verbose=False)
    other.run(2, executor=BatchedExecutor(max_trials=3), verbose=False)
    close(serial, other)


def test_mixed_grid_gives_the_serial_store(tmp_path):
    def build(store):
        return Experiment(
            model=eight_trials(store).model,
            datasets=small_images(),
            variations=[ChangeTrainLoader.make_variations(seed_shuffle=(0, 1))],
            interventions=[
                PerturbWeights(epsilon=0.01),
                ChangeTrainLoader(batch_size=32),  # another batch size: its own group
                Tweak({"one_batch > loss": lambda loss: loss * 2}),  # the loop: alone
                Tweak({"Linear > input": lambda input: input * 0.5}, when=((2, 6),)),
            ],
            store=store,
            lr=0.05,
            batch_size=16,
        )

    serial, batched = build(tmp_path / "s.db"), build(tmp_path / "b.db")
    assert sorted(len(g) for g in groups(batched)) == [1, 1, 2, 2, 4]
    serial.run(2, verbose=False)
    batched.run(2, executor=BatchedExecutor(), verbose=False)
    close(serial, batched)
    assert batched.store.epochs() == serial.store.epochs()
    loss = batched.results().query("epoch == 2 and split == 'test' and metric == 'loss'")
    windowed = loss[loss.condition.str.startswith("Tweak(Linear")].value.tolist()
    assert windowed != loss[loss.condition == "control"].value.tolist()


def test_a_window_freezes_one_trial_of_a_group(data, tmp_path):
    # 300 samples / 16 = 19 steps per epoch: lr 0 for the whole first epoch.
    exp = Experiment(
        TempNet(),
        data,
        interventions=[ChangeOptimizer(lr=0.0, when=((0, 19),))],
        hyperparameters={"momentum": 0.5},
        store=tmp_path / "x.db",
        batch_size=16,
    )
    assert len(groups(exp)) == 1
    exp.run(2, executor=BatchedExecutor(), verbose=False)
    df = exp.results().query("split == 'test' and metric == 'loss'")
    frozen = df[df.condition != "control"].set_index("epoch").value
    control = df[df.condition == "control"].set_index("epoch").value
    assert frozen[1] == pytest.approx(frozen[0], rel=1e-6) and control[1] < control[0]
    assert frozen[2] < frozen[1]  # learning resumed after the window
    state = exp.store.load_checkpoint(exp.grid[1].id, 2)
    assert state["opt"]["param_groups"][0]["lr"] == 0.01  # the control's value returned


def test_dropout_differs_per_trial_and_is_reproducible(data, tmp_path):
    # Three trials with the same weights and batches: only dropout tells them apart.
    runs = []
    for store in ("a.db", "b.db"):
        exp = Experiment(
            TempNet(),
            data,
            interventions=[PerturbWeights.make_variations(epsilon=0.0, seed_weights=(1, 2))],
            store=tmp_path / store,
        )
        exp.run(1, executor=BatchedExecutor(), verbose=False)
        df = exp.results().query("epoch == 1 and split == 'train' and metric == 'loss'")
        runs.append(df.value.tolist())
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 3


def test_resume_a_group_after_kill(tmp_path):
    store = tmp_path / "x.db"
    committed = kill_when_committed(
        "batched_program.py",
        store,
        ["2"],
        lambda committed: any(e >= 1 for e in committed.values()),
    )
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    after = dict(db.execute("SELECT id, epochs FROM trials").fetchall())
    assert all(after[t] >= e for t, e in committed.items())  # nothing committed was lost
    assert min(after.values()) < 2
    resumed = eight_trials(store, n_train=400, n_test=100)
    resumed.run(2, executor=BatchedExecutor(), verbose=False)
    clean = eight_trials(tmp_path / "clean.db", n_train=400, n_test=100)
    clean.run(2, executor=BatchedExecutor(), verbose=False)
    close(clean, resumed)


CONFIG = """
model = "ptera.lab.models:Lenet5"
model_args = {image_size = 8}
datasets = "tests.batched_program:small_images"
store = "cli.db"
lr = 0.05
batch_size = 16

[[interventions]]
type = "PerturbWeights"
epsilon = [0.01, 0.1]
"""


def test_cli_executor_batched(tmp_path, capsys, monkeypatch):
    from ptera.lab.experiments.cli import main

    monkeypatch.chdir(HERE.parent)
    for folder, extra in (("serial", []), ("batched", ["--executor", "batched"])):
        (tmp_path / folder).mkdir()
        config = tmp_path / folder / "exp.toml"
        config.write_text(CONFIG)
        main(["run", str(config), *extra])
        assert "3 done" in capsys.readouterr().out
    # The batched run's resolved config, dumped and run again, names the same trials.
    main(["run", str(tmp_path / "batched" / "exp.toml"), "--executor", "batched", "--dump-config"])
    dumped = capsys.readouterr().out
    assert 'executor = "batched"' in dumped
    (tmp_path / "batched" / "dumped.toml").write_text(dumped)
    main(["run", str(tmp_path / "batched" / "dumped.toml"), "--executor", "serial"])
    main(["status", str(tmp_path / "batched" / "dumped.toml")])
    out = capsys.readouterr().out
    assert "[1/3]" not in out and "3 done" in out  # nothing retrained
    serial, batched = (sqlite3.connect(tmp_path / f / "cli.db") for f in ("serial", "batched"))
    query = (
        "SELECT trial, epoch, split, name, value FROM metrics ORDER BY trial, epoch, split, name"
    )
    a, b = serial.execute(query).fetchall(), batched.execute(query).fetchall()
    assert [r[:4] for r in a] == [r[:4] for r in b]
    np.testing.assert_allclose([r[4] for r in b], [r[4] for r in a], rtol=1e-4)


class NormNet(torch.nn.Module):
    """An MLP with BatchNorm: running statistics are buffers, one set per trial."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 32)
        self.bn = torch.nn.BatchNorm1d(32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_batchnorm_statistics_are_per_trial(data, tmp_path):
    def build(store):
        return Experiment(
            NormNet,
            data,
            interventions=[PerturbWeights.make_variations(epsilon=(0.01, 0.1))],
            store=tmp_path / store,
            lr=0.05,
            batch_size=16,
        )

    serial, batched = build("s.db"), build("b.db")
    serial.run(2, verbose=False)
    batched.run(2, executor=BatchedExecutor(), verbose=False)
    close(serial, batched)
    means = []
    for plan in serial.grid:
        a = serial.store.load_checkpoint(plan.id, 2)["model"]
        b = batched.store.load_checkpoint(plan.id, 2)["model"]
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
        means.append(b["bn.running_mean"])
    assert not torch.equal(means[0], means[1])


# -- scheduling ----------------------------------------------------------------------------
@st.composite
def schedules(draw):
    """Controls c0..cn with interventions, dealt into units at random (cycles included)."""
    n = draw(st.integers(1, 4))
    after = {f"c{i}": None for i in range(n)}
    for i in range(draw(st.integers(0, 6))):
        after[f"i{i}"] = f"c{draw(st.integers(0, n - 1))}"
    slots = [draw(st.integers(0, 3)) for _ in after]
    units = [[t for t, s in zip(after, slots) if s == k] for k in range(4)]
    return [u for u in units if u], after


@given(schedules())
@settings(max_examples=200, deadline=None)
def test_every_trial_runs_after_its_control(schedule):
    units, after = schedule
    finished, ran = set(), []
    while units:
        unit = _ready(units, after, finished)
        units.remove(unit)
        assert unit and all(after[t] in finished or after[t] in unit or not after[t] for t in unit)
        finished.update(unit)
        ran += unit
    assert sorted(ran) == sorted(after)


def test_a_cycle_between_groups_runs_the_waiting_trials_alone():
    units = [["c1", "i2"], ["c2", "i1"]]
    after = {"c1": None, "c2": None, "i1": "c1", "i2": "c2"}
    order = []
    while units:
        unit = _ready(units, after, {t for u in order for t in u})
        units.remove(unit)
        order.append(unit)
    assert order == [["c1"], ["c2", "i1"], ["i2"]]


def broken(input):
    raise ArithmeticError("no")


def test_a_failing_group_is_named_and_recorded(data, tmp_path):
    exp = Experiment(
        TempNet(),
        data,
        variations=[ChangeTrainLoader.make_variations(seed_shuffle=(0, 1))],
        interventions=[Tweak({"Linear > input": broken}, when=((3, 4),))],
        store=tmp_path / "x.db",
    )
    with pytest.raises(TrialError, match=r"batched group of 2 trials \(Tweak\(Linear > input"):
        exp.run(1, executor=BatchedExecutor(), verbose=False)
    states = sorted((row["condition"], row["state"]) for row in exp.status(1))
    assert (
        states
        == [("Tweak(Linear > input: broken, when=3-4)", "failed")] * 2 + [("control", "done")] * 2
    )
    assert all("ArithmeticError" in e for e in exp.store.errors().values())


# -- leases, checksums, divergence: as in serial runs -------------------------------------
def mlp():
    """No dropout: a group's numbers are then its trials' serial numbers."""
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def three_trials(store, data, **kwargs):
    """A control and two perturbations: one group."""
    return Experiment(
        mlp,
        data,
        interventions=[PerturbWeights.make_variations(epsilon=(0.01, 0.1))],
        store=store,
        batch_size=16,
        **kwargs,
    )


def spy_groups(monkeypatch):
    """Each group trained, with the lease holders of its trials as it starts."""
    from ptera.lab.experiments import batched

    seen, real = [], batched.train_group

    def spy(setup, trials, n_epochs, randomness="different"):
        owners = dict(setup.store.db.execute("SELECT trial, owner FROM leases"))
        seen.append((list(trials), {owners.get(t) for t in trials}))
        return real(setup, trials, n_epochs, randomness)

    monkeypatch.setattr(batched, "train_group", spy)
    return seen


@pytest.mark.parametrize(
    "held, grouped",
    [
        (2, [0, 1]),  # an intervention held elsewhere runs alone, once free
        (0, []),  # the control held elsewhere: its interventions cannot go before it
    ],
)
def test_a_group_holds_its_leases_and_leaves_out_a_trial_held_elsewhere(
    held, grouped, data, tmp_path, monkeypatch
):
    seen = spy_groups(monkeypatch)
    exp = three_trials(tmp_path / "b.db", data)
    ids = [p.id for p in exp.grid]
    other = subprocess.Popen(["sleep", "1"])
    threading.Thread(target=other.wait, daemon=True).start()  # reaped: its pid then is gone
    owner = f"{socket.gethostname()}:{other.pid}"
    exp.store.db.execute("INSERT INTO leases VALUES (?, ?, ?)", (ids[held], owner, time.time()))
    exp.run(1, executor=BatchedExecutor(), verbose=False)
    me = {f"{socket.gethostname()}:{os.getpid()}"}
    assert seen == ([([ids[i] for i in grouped], me)] if grouped else [])
    assert sorted(exp.trained) == sorted(ids)
    assert exp.store.db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)
    serial = three_trials(tmp_path / "s.db", data)
    serial.run(1, verbose=False)
    close(serial, exp)


def test_group_checkpoints_are_checksummed_and_a_damaged_one_is_resumed_before(
    data, tmp_path, monkeypatch
):
    exp = three_trials(tmp_path / "b.db", data)
    exp.run(2, executor=BatchedExecutor(), verbose=False)
    rows = exp.store.db.execute("SELECT trial, epoch, path, sha256 FROM checkpoints").fetchall()
    assert len(rows) == 3 * 3
    for trial, epoch, path, sha in rows:
        data_ = (exp.store.path.parent / path).read_bytes()
        assert sha == hashlib.sha256(data_).hexdigest()
        assert exp.store.load_checkpoint(trial, epoch)["trial"] == trial
    damaged = exp.store.checkpoint_path(exp.grid[1].id, 2)
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    seen = spy_groups(monkeypatch)
    with pytest.warns(RuntimeWarning, match="does not match its checksum"):
        exp.run(3, executor=BatchedExecutor(), verbose=False)
    # The damaged trial left the group and resumed from epoch 1; the others went on.
    assert [trials for trials, _ in seen] == [[exp.grid[0].id, exp.grid[2].id]]
    clean = three_trials(tmp_path / "c.db", data)
    clean.run(3, executor=BatchedExecutor(), verbose=False)
    close(clean, exp)


def test_a_serial_run_reuses_a_batched_run(data, tmp_path):
    batched = three_trials(tmp_path / "x.db", data)
    batched.run(1, executor="batched", verbose=False)
    serial = three_trials(tmp_path / "x.db", data)
    assert [p.id for p in serial.grid] == [p.id for p in batched.grid]
    serial.run(1, verbose=False)
    assert serial.trained == []


def test_a_diverging_trial_is_nan_and_its_group_goes_on(data, tmp_path):
    def build(store):
        return Experiment(
            mlp,
            data,
            interventions=[ChangeOptimizer(lr=1e30), PerturbWeights(epsilon=0.01)],
            store=store,
            batch_size=16,
        )

    serial, batched = build(tmp_path / "s.db"), build(tmp_path / "b.db")
    assert len(groups(batched)) == 1
    serial.run(2, verbose=False)
    batched.run(2, executor=BatchedExecutor(), verbose=False)
    diverging = batched.grid[1].id
    assert batched.store.diverged() == serial.store.diverged() == {diverging}
    df = batched.results()
    late = df[(df.trial == diverging) & (df.epoch == 2) & (df.metric == "loss")].value
    assert late.isna().all()
    close(serial, batched)  # the other trials' numbers are their serial numbers
    assert batched.status(2) == serial.status(2)
