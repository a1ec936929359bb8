"""ptera.lab.experiments: grids, interventions, identity, store, resume, executors, CLI."""

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ptera.lab.experiments import (
    ChangeOptimizer,
    ChangeTrainLoader,
    Experiment,
    Metrics,
    PerturbWeights,
    Plotter,
    ReinitWeights,
    Tweak,
)
from ptera.lab.experiments.cli import main as cli_main
from ptera.lab.models import Lenet5

from .experiment_program import TempNet, perturb_experiment, small_digits
from .kill_program import kill_when_committed

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def data():
    return small_digits()


@pytest.fixture(scope="module")
def images():
    train, test = small_digits()
    return tuple(
        type(ds)(ds.tensors[0].reshape(-1, 1, 8, 8), ds.tensors[1]) for ds in (train, test)
    )


def table(exp, epoch, split="test", metric="loss"):
    df = exp.results()
    rows = df[(df.epoch == epoch) & (df.split == split) & (df.metric == metric)]
    return dict(zip(rows.condition + " | " + rows.variation, rows.value))


# -- the grid ----------------------------------------------------------------------------
# The seed's five examples, with the trial counts it states.
SEED_GRIDS = [
    (
        "weight perturbation",
        dict(
            interventions=[
                PerturbWeights.make_variations(epsilon=(0.001, 0.01, 0.1), seed_weights=range(10))
            ]
        ),
        31,
    ),
    (
        "optimizers",
        dict(
            variations=[
                ReinitWeights.make_variations(seed_weights=range(5)),
                ChangeOptimizer.make_variations(optimizer=torch.optim.SGD, lr=(0.001, 0.01, 0.1)),
            ],
            interventions=[ChangeOptimizer.make_variations(optimizer=torch.optim.Adam)],
        ),
        30,
    ),
    (
        "batch size",
        dict(
            variations=[
                ReinitWeights.make_variations(seed_weights=range(5)),
                ChangeTrainLoader.make_variations(batch_size=32, seed_shuffle=(0.1, 0.2, 0.3)),
            ],
            interventions=[ChangeTrainLoader.make_variations(batch_size=(64, 128, 256, 512, 1024))],
        ),
        90,
    ),
    (
        "momentum windows",
        dict(
            variations=[
                ReinitWeights.make_variations(seed_weights=range(10)),
                ChangeOptimizer.make_variations(momentum=(0.9, 0.99, 0.999)),
            ],
            interventions=[
                ChangeOptimizer.make_variations(
                    momentum=lambda m: (
                        m * (1 + epsilon) for epsilon in (0.001, -0.001, 0.01, -0.01, 0.1, -0.1)
                    ),
                    when=((0, 100), (1000, 1100), (5000, 5100)),
                )
            ],
        ),
        210,
    ),
    (
        "momentum windows, one init",
        dict(
            variations=[ChangeOptimizer.make_variations(momentum=(0.9, 0.99, 0.999))],
            interventions=[
                ChangeOptimizer.make_variations(
                    momentum=lambda m: (
                        m * (1 + epsilon) for epsilon in (0.001, -0.001, 0.01, -0.01, 0.1, -0.1)
                    ),
                    when=((0, 100), (1000, 1100), (5000, 5100)),
                )
            ],
        ),
        21,
    ),
]


@pytest.mark.parametrize("name, grid, count", SEED_GRIDS, ids=[g[0] for g in SEED_GRIDS])
def test_seed_grids_have_the_seed_trial_counts(name, grid, count, images, tmp_path):
    exp = Experiment(model=Lenet5(image_size=8), dataset=images, store=tmp_path / "x.db", **grid)
    assert len(exp) == count
    assert len(exp.plans) == count  # every position runs something different
    assert not (tmp_path / "x.db").exists()  # planning trains nothing, writes nothing


def test_seed_plotting_example_spelling_is_an_alias(images, tmp_path):
    exp = Experiment(
        model=Lenet5(image_size=8),
        dataset=images,
        variations=[
            ReinitWeights.make_variations(seed_weights=range(5)),
            ChangeTrainLoader.make_variations(
                batch_size=32, batch_order_seed_weights=(0.1, 0.2, 0.3)
            ),
        ],
        interventions=[ChangeTrainLoader.make_variations(batch_size=(64, 128, 256, 512, 1024))],
        plotter=Plotter(average_over=("seed_shuffle", "seed")),
        store=tmp_path / "x.db",
    )
    assert len(exp) == 90
    assert Plotter(average_over=("seed_shuffle", "seed")).averaged(
        ["seed_weights", "batch_size", "seed_shuffle", "intervention", "intervention.batch_size"]
    ) == ["seed_shuffle", "seed_weights"]


@pytest.mark.parametrize(
    "grid, expected",
    [
        (
            PerturbWeights.make_variations(epsilon=0.1),
            ["PerturbWeights(epsilon=0.1, seed_weights=0)"],
        ),
        (
            PerturbWeights.make_variations(epsilon=[0.1, 0.2], seed_weights=range(2)),
            [
                "PerturbWeights(epsilon=0.1, seed_weights=0)",
                "PerturbWeights(epsilon=0.1, seed_weights=1)",
                "PerturbWeights(epsilon=0.2, seed_weights=0)",
                "PerturbWeights(epsilon=0.2, seed_weights=1)",
            ],
        ),
        (
            ChangeOptimizer.make_variations(lr=lambda lr: (lr * 2, lr / 2)),
            ["ChangeOptimizer(lr=0.02)", "ChangeOptimizer(lr=0.005)"],
        ),
        (
            ChangeOptimizer.make_variations(momentum=lambda m: m + 0.5, when=((0, 10),)),
            ["ChangeOptimizer(momentum=0.5, when=0-10)"],
        ),
        (
            Tweak.make_variations(values={"head > T": (2.0, 4.0)}),
            ["Tweak(head > T: 2)", "Tweak(head > T: 4)"],
        ),
    ],
)
def test_make_variations_expands_against_the_control(grid, expected, data, tmp_path):
    exp = Experiment(TempNet(), data, interventions=[grid], store=tmp_path / "x.db")
    assert [p.label for p in exp.grid] == ["control", *expected]


def test_same_trial_from_different_spellings_is_one_trial(data, tmp_path):
    plain = Experiment(TempNet(), data, store=tmp_path / "x.db")
    spelled = Experiment(
        TempNet(), data, variations=[ReinitWeights(seed_weights=0)], store=tmp_path / "x.db"
    )
    assert plain.grid[0].id == spelled.grid[0].id
    reordered = [
        Experiment(TempNet(), data, variations=axes, store=tmp_path / "x.db").grid[0].id
        for axes in (
            [ReinitWeights(seed_weights=1), ChangeOptimizer(lr=0.5)],
            [ChangeOptimizer(lr=0.5), ReinitWeights(seed_weights=1)],
        )
    ]
    assert reordered[0] == reordered[1] != plain.grid[0].id


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: PerturbWeights.make_variations(epsilone=0.1), "did you mean 'epsilon'"),
        (lambda: PerturbWeights.make_variations(epsilon=()), "no values"),
        (lambda: PerturbWeights(seed_weights=1), "needs epsilon"),
        (lambda: ChangeTrainLoader(batch_size=0), "positive int"),
        (lambda: ChangeTrainLoader(batch_size=32, when=((0, 5),)), "cannot take when"),
        (
            lambda: ChangeOptimizer(optimizer=torch.optim.Adam, when=((0, 5),)),
            "hyperparameters only",
        ),
        (lambda: PerturbWeights(epsilon=0.1, when=((5, 5),)), "empty"),
        (lambda: PerturbWeights(epsilon=0.1, when=5), "step windows"),
        (lambda: Tweak({"head > T": 1.0}) and Tweak({}), "needs a mapping"),
    ],
)
def test_bad_interventions_fail_when_written(build, message):
    with pytest.raises((TypeError, ValueError), match=message):
        build()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(interventions=[Tweak({"nowhere_at_all > x": 1.0})]), "nowhere_at_all"),
        (dict(interventions=[ChangeOptimizer(optimizer=torch.optim.Adam, momentum=0.9)]), "Adam"),
        (dict(interventions=[ChangeOptimizer(lr=-1.0)]), "learning rate"),
        (dict(interventions=[[]]), "empty"),
        (dict(interventions=["PerturbWeights"]), "expected an intervention"),
        (
            dict(
                variations=[ChangeOptimizer(lr=0.1), ChangeOptimizer.make_variations(lr=(0.2, 0.3))]
            ),
            "both set lr",
        ),
        (dict(batch_size=0), "positive int"),
        (dict(metrics=object()), "Metrics"),
    ],
)
def test_bad_experiments_fail_before_any_training(kwargs, message, data, tmp_path):
    with pytest.raises((TypeError, ValueError, NameError), match=message):
        Experiment(TempNet(), data, store=tmp_path / "x.db", **kwargs)
    assert not (tmp_path / "x.db").exists()


def test_bad_datasets_and_models_are_named(data, tmp_path):
    with pytest.raises(TypeError, match="datasets="):
        Experiment(TempNet(), store=tmp_path / "x.db")
    with pytest.raises(TypeError, match=r"\(input, target\) pairs"):
        Experiment(TempNet(), ([1, 2], [3]), store=tmp_path / "x.db")

    class Raw(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(64, 10))

        def forward(self, x):
            return x @ self.w

    with pytest.raises(TypeError, match="no reset_parameters"):
        Experiment(Raw(), data, store=tmp_path / "x.db")
    exp = Experiment(Raw, data, store=tmp_path / "x.db")  # a class builds fresh weights
    assert len(exp) == 1


# -- running ---------------------------------------------------------------------------
def test_reproducible_and_resumed_bit_for_bit(data, tmp_path):
    kwargs = dict(interventions=[PerturbWeights(epsilon=0.05)], lr=0.1, batch_size=16)
    once = Experiment(TempNet(), data, store=tmp_path / "a.db", **kwargs)
    once.run(3)
    again = Experiment(TempNet(), data, store=tmp_path / "b.db", **kwargs)
    again.run(1)
    again.run(3)  # resumes from epoch 1's checkpoint
    assert again.trained == [p.id for p in again.grid]
    a, b = once.results(), again.results()
    assert len(a) == len(b) == 2 * 4 * 4  # trials x epochs 0-3 x (train, test) x (loss, accuracy)
    assert a["value"].tolist() == b["value"].tolist()  # identical, not close
    assert table(once, 3)["control | base"] < table(once, 0)["control | base"]


def test_reuse_trains_only_new_trials_and_extends_epochs(data, tmp_path, capsys):
    store = tmp_path / "x.db"
    small = Experiment(TempNet(), data, interventions=[PerturbWeights(epsilon=0.1)], store=store)
    small.run(1)
    assert len(small.trained) == 2
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("]")[0] for line in lines] == ["[1/2", "[2/2"]
    assert "control: epoch 1, test accuracy" in lines[0]
    bigger = Experiment(
        TempNet(),
        data,
        variations=[ReinitWeights.make_variations(seed_weights=(0, 1))],
        interventions=[PerturbWeights(epsilon=0.1)],
        store=store,
    )
    bigger.run(1)
    assert len(bigger) == 4 and len(bigger.trained) == 2  # seed_weights=0 was done already
    assert len(bigger.trials) == 4 and bigger.trials[0].label == "control"
    bigger.run(1)
    assert bigger.trained == []
    bigger.run(2)
    assert len(bigger.trained) == 4
    assert {r["state"] for r in bigger.status()} == {"done"}  # the target it was run to
    assert {r["state"] for r in small.status()} == {"done"}  # small was run to 1
    assert {r["state"] for r in bigger.status(3)} == {"partial"}


def test_metric_relative_to_control(data, tmp_path):
    exp = perturb_experiment(tmp_path / "x.db")
    exp.run(1)
    df = exp.results()
    start = df[(df.epoch == 0) & (df.metric == "dw_control")]
    n_params = sum(p.numel() for p in TempNet().parameters())
    for _, row in start.iterrows():
        eps = row["intervention.epsilon"]
        if row.intervention == "control":
            assert row.value == 0
        else:  # epsilon x N(0, 1) noise on every weight: distance ~ epsilon sqrt(n)
            assert row.value == pytest.approx(eps * n_params**0.5, rel=0.05)


def test_new_metric_is_computed_from_checkpoints_without_training(data, tmp_path):
    store = tmp_path / "x.db"
    Experiment(TempNet(), data, interventions=[PerturbWeights(epsilon=0.1)], store=store).run(2)
    metrics = Metrics()
    metrics.register_metric("first_weight", lambda trial: trial.model.fc1.weight[0, 0])
    exp = Experiment(
        TempNet(), data, interventions=[PerturbWeights(epsilon=0.1)], metrics=metrics, store=store
    )
    exp.run(2)
    assert exp.trained == []
    df = exp.results()
    assert len(df[df.metric == "first_weight"]) == 2 * 3


def test_tweak_changes_metrics_and_leaves_the_code_alone(data, tmp_path):
    code = torch.nn.Linear.forward.__code__
    from . import experiment_program

    head_code = experiment_program.head.__code__
    exp = Experiment(
        TempNet(),
        data,
        interventions=[
            Tweak({"head > T": 0.25}),
            Tweak({"Linear > input": lambda input: input * 0}),
            Tweak({"head > T": 100.0}, when=((10_000, 20_000),)),  # never reached
        ],
        store=tmp_path / "x.db",
    )
    exp.run(1)
    loss = table(exp, 1)
    control = loss["control | base"]
    assert loss["Tweak(head > T: 0.25) | base"] != control
    assert loss["Tweak(Linear > input: <lambda>) | base"] == pytest.approx(
        2.3, abs=0.05
    )  # no signal
    assert loss["Tweak(head > T: 100, when=10000-20000) | base"] == control
    assert torch.nn.Linear.forward.__code__ is code
    assert experiment_program.head.__code__ is head_code
    assert experiment_program.head(torch.ones(2)).tolist() == [1.0, 1.0]


def test_windowed_interventions_act_inside_their_windows_only(data, tmp_path):
    # 300 samples / 16 = 19 steps per epoch.
    exp = Experiment(
        TempNet(),
        data,
        interventions=[
            ChangeOptimizer(lr=0.0, when=((0, 19),)),  # no learning in epoch 1
            ChangeOptimizer(lr=0.0, when=((1000, 2000),)),  # after training: same as control
            PerturbWeights(epsilon=0.5, when=((19, 20),)),  # a kick at the start of epoch 2
        ],
        hyperparameters={"momentum": 0.5},
        batch_size=16,
        store=tmp_path / "x.db",
    )
    exp.run(2)
    loss0 = {k.split(" | ")[0]: v for k, v in table(exp, 0, "test").items()}
    test1 = {k.split(" | ")[0]: v for k, v in table(exp, 1, "test").items()}
    frozen = "ChangeOptimizer(lr=0, when=0-19)"
    assert test1[frozen] == loss0[frozen]  # no step taken during the window
    assert test1["ChangeOptimizer(lr=0, when=1000-2000)"] == test1["control"]
    assert test1["PerturbWeights(epsilon=0.5, seed_weights=0, when=19-20)"] == test1["control"]
    test2 = {k.split(" | ")[0]: v for k, v in table(exp, 2, "test").items()}
    assert test2["PerturbWeights(epsilon=0.5, seed_weights=0, when=19-20)"] != test2["control"]
    assert test2[frozen] < test1[frozen]  # learning resumed after the window
    state = exp.store.load_checkpoint(exp.grid[1].id, 2)
    assert state["opt"]["param_groups"][0]["lr"] == 0.01  # the control's value returned


def test_change_train_loader_changes_the_steps(data, tmp_path):
    exp = Experiment(
        TempNet(),
        data,
        interventions=[ChangeTrainLoader(batch_size=100), ChangeTrainLoader(seed_shuffle=7)],
        batch_size=50,
        store=tmp_path / "x.db",
    )
    exp.run(1)
    steps = [exp.store.load_checkpoint(p.id, 1)["step"] for p in exp.grid]
    assert steps == [6, 3, 6]
    loss = table(exp, 1)
    assert len(set(loss.values())) == 3


def test_dropout_and_shuffle_follow_the_seeds(data, tmp_path):
    # Same seeds, different stores: identical; another shuffle seed: different.
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        exp = Experiment(TempNet(), data, seed_shuffle=seed, store=tmp_path / f"{name}.db")
        exp.run(1)
        runs.append(table(exp, 1, "train"))
    assert runs[0] == runs[1] != runs[2]
    assert torch.get_num_threads() >= 1


def test_results_dataframe_and_plots(data, tmp_path):
    exp = Experiment(
        TempNet(),
        data,
        variations=[ReinitWeights.make_variations(seed_weights=(0, 1))],
        interventions=[PerturbWeights.make_variations(epsilon=(0.01, 0.1))],
        plotter=Plotter(average_over=("seed_weights",), band="std"),
        store=tmp_path / "x.db",
    )
    df = exp.run(1, plot=True)
    assert list(df.columns) == [
        "trial",
        "variation",
        "condition",
        "seed_weights",
        "intervention",
        "intervention.epsilon",
        "intervention.seed_weights",
        "epoch",
        "split",
        "metric",
        "value",
    ]
    assert set(df.intervention) == {"control", "PerturbWeights"}
    pngs = sorted(p.name for p in (tmp_path / "x.plots").glob("*.png"))
    assert pngs == ["test_accuracy.png", "test_loss.png", "train_accuracy.png", "train_loss.png"]
    assert (tmp_path / "x.plots" / "test_loss.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="'sed' names no parameter"):
        Plotter(average_over=("sed",)).plot(df, tmp_path / "p")


def test_store_is_sqlite_in_wal_with_checkpoints_relative(data, tmp_path):
    exp = Experiment(TempNet(), data, store=tmp_path / "x.db")
    exp.run(1)
    db = sqlite3.connect(tmp_path / "x.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (path,) = db.execute("SELECT path FROM checkpoints WHERE epoch = 1").fetchone()
    assert not os.path.isabs(path) and (tmp_path / path).exists()
    state = torch.load(tmp_path / path, weights_only=True)
    assert state["epoch"] == 1 and set(state) == {"trial", "model", "opt", "epoch", "step"}


def test_a_failing_trial_is_named_and_recorded(data, tmp_path):
    def broken(trial):
        raise RuntimeError("metric exploded")

    metrics = Metrics()
    metrics.register_metric("broken", broken)
    exp = Experiment(TempNet(), data, metrics=metrics, store=tmp_path / "x.db")
    with pytest.raises(
        Exception, match=r"trial \w+ \(control\) failed in epoch 0.*metric exploded"
    ):
        exp.run(1)
    db = sqlite3.connect(tmp_path / "x.db")
    assert "metric exploded" in db.execute("SELECT error FROM trials").fetchone()[0]
    assert [r["state"] for r in exp.status(1)] == ["failed"]


def test_resume_after_kill_loses_at_most_one_epoch(tmp_path):
    store = tmp_path / "x.db"
    committed = kill_when_committed(
        "experiment_program.py",
        store,
        ["3"],
        lambda committed: sum(max(e, 0) for e in committed.values()) >= 2,
    )
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    after = dict(db.execute("SELECT id, epochs FROM trials").fetchall())
    assert all(after[t] >= e for t, e in committed.items())  # nothing committed was lost
    resumed = perturb_experiment(store, n_train=1400, n_test=300)
    resumed.run(3)
    clean = perturb_experiment(tmp_path / "clean.db", n_train=1400, n_test=300)
    clean.run(3)
    assert resumed.results()["value"].tolist() == clean.results()["value"].tolist()


def test_processes_give_the_serial_results(tmp_path):
    serial = perturb_experiment(tmp_path / "a.db")
    serial.run(2)
    parallel = perturb_experiment(tmp_path / "b.db")
    parallel.run(2, processes=2)
    assert sorted(parallel.trained) == sorted(serial.trained)
    assert parallel.results()["value"].tolist() == serial.results()["value"].tolist()


def test_ray_gives_the_serial_results(tmp_path):
    ray = pytest.importorskip("ray")
    from ptera.lab.experiments import RayExecutor

    serial = perturb_experiment(tmp_path / "a.db")
    serial.run(1)
    on_ray = perturb_experiment(tmp_path / "b.db")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray.run(1, executor=RayExecutor())
    finally:
        ray.shutdown()
    assert on_ray.results()["value"].tolist() == serial.results()["value"].tolist()


# -- the command line --------------------------------------------------------------------
CONFIG = """
model = "tests.experiment_program:TempNet"
datasets = "tests.experiment_program:small_digits"
store = "cli.db"
n_epochs = 1
lr = 0.1

[[interventions]]
type = "PerturbWeights"
epsilon = [0.01, 0.1]

[[interventions]]
type = "Tweak"
values = {"head > T" = 2.0}

[plotter]
average_over = ["seed_weights"]
"""


def test_cli_run_status_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    config = tmp_path / "exp.toml"
    config.write_text(CONFIG)
    cli_main(["run", str(config)])
    out = capsys.readouterr().out
    assert "4 done" in out and "0 pending" in out
    cli_main(["status", str(config), "--n-epochs", "2"])
    assert "4 partial" in capsys.readouterr().out
    cli_main(["plot", str(config), "--out", str(tmp_path / "plots")])
    assert "test_loss.png" in capsys.readouterr().out
    assert (tmp_path / "plots" / "test_loss.png").exists()
    with pytest.raises(SystemExit) as exit:
        cli_main(["run", str(config), "--help"])
    assert exit.value.code == 0
    assert "--n-epochs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "config, message",
    [
        ('model = "tests.experiment_program:TempNet"\n', "missing 'datasets'"),
        ("learning_rate = 0.1\n" + CONFIG, "unknown key(s) learning_rate"),
        (CONFIG + "band = 'wide'\n", "plotter: band must be"),
        (CONFIG.replace("epsilon", "epsilone"), "did you mean 'epsilon'"),
        (CONFIG.replace('type = "Tweak"', 'type = "Twerk"'), "type must be one of"),
        (CONFIG.replace("TempNet", "Nope"), "cannot import"),
    ],
)
def test_cli_bad_configs_exit_2(config, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    path = tmp_path / "exp.toml"
    path.write_text(config)
    with pytest.raises(SystemExit) as exit:
        cli_main(["run", str(path)])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cli.db").exists()


def test_readme_config_is_the_example_config_and_runs(tmp_path, capsys):
    readme = (HERE.parent / "README.md").read_text()
    example = (HERE.parent / "examples" / "perturb.toml").read_text()
    assert f"```toml\n{example}```" in readme
    config = tmp_path / "perturb.toml"
    config.write_text(example)
    cli_main(["run", str(config), "--n-epochs", "0"])  # the evaluation before training
    assert "10 done" in capsys.readouterr().out
    cli_main(["status", str(config)])
    assert "10 done" in capsys.readouterr().out


def test_tweak_in_the_training_loop(data, tmp_path):
    # The loop is instrumented too: a zero loss means zero gradients, no learning.
    exp = Experiment(
        TempNet(),
        data,
        interventions=[Tweak({"one_batch > loss": lambda loss: loss * 0})],
        store=tmp_path / "x.db",
    )
    exp.run(1)
    before, after = table(exp, 0, metric="accuracy"), table(exp, 1, metric="accuracy")
    frozen = "Tweak(one_batch > loss: <lambda>) | base"
    assert after[frozen] == before[frozen]  # same predictions: the weights never moved
    assert after["control | base"] > before["control | base"]
    assert table(exp, 1)[frozen] == 0.0  # the loop's loss is the tweaked one


def test_cli_reads_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    config = tmp_path / "exp.yaml"
    config.write_text(
        "model: tests.experiment_program:TempNet\n"
        "datasets: tests.experiment_program:small_digits\n"
        "interventions:\n"
        "  - type: ChangeOptimizer\n"
        "    lr: [0.05, 0.2]\n"
    )
    cli_main(["run", str(config), "--n-epochs", "0"])
    assert "3 done" in capsys.readouterr().out


def test_device_cpu_is_the_default_trial(data, tmp_path):
    plain = Experiment(TempNet(), data, store=tmp_path / "a.db")
    on_cpu = Experiment(TempNet(), data, store=tmp_path / "b.db", device="cpu")
    assert plain.grid[0].id == on_cpu.grid[0].id
    plain.run(1)
    on_cpu.run(1)
    assert plain.results()["value"].tolist() == on_cpu.results()["value"].tolist()
    elsewhere = Experiment(TempNet(), data, store=tmp_path / "c.db", device="cuda:0")
    assert elsewhere.grid[0].id != plain.grid[0].id  # planned, not run: no GPU needed


# -- identity of captured values (issue 14.1) ------------------------------------------
def scaled(k):
    return lambda input: input * k


def test_captured_values_are_part_of_a_trials_identity(data, tmp_path):
    store = tmp_path / "x.db"
    one = Experiment(
        TempNet(), data, interventions=[Tweak({"Linear > input": scaled(1.0)})], store=store
    )
    zero = Experiment(
        TempNet(), data, interventions=[Tweak({"Linear > input": scaled(0.0)})], store=store
    )
    assert one.grid[1].id != zero.grid[1].id
    one.run(1, verbose=False)
    zero.run(1, verbose=False)
    assert zero.trained == [zero.grid[1].id]  # not the k=1.0 trial's numbers
    same, no_signal = table(one, 1), table(zero, 1)
    assert same["Tweak(Linear > input: <lambda>) | base"] == same["control | base"]
    assert no_signal["Tweak(Linear > input: <lambda>) | base"] == pytest.approx(2.3, abs=0.05)


def _with_default(x, k=1.0):
    return x * k


def _with_kwdefault(x, *, k=1.0):
    return x * k


class _Scale:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return x * self.k

    def apply(self, x):
        return x * self.k


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda k: scaled(k), id="closure cell"),
        pytest.param(lambda k: functools.partial(_with_default, k=k), id="partial keyword"),
        pytest.param(lambda k: functools.partial(_with_default, 1, k), id="partial args"),
        pytest.param(
            lambda k: types.FunctionType(_with_default.__code__, globals(), "f", (k,)),
            id="default",
        ),
        pytest.param(lambda k: _kwdefault_copy(k), id="keyword default"),
        pytest.param(lambda k: scaled(torch.tensor([k])), id="tensor in a cell"),
        pytest.param(lambda k: scaled(scaled(k)), id="function in a cell"),
    ],
)
def test_normalize_tells_captured_values_apart(make):
    from ptera.lab.experiments.config import normalize

    assert normalize(make(1.0)) == normalize(make(1.0))
    assert normalize(make(1.0)) != normalize(make(0.0))


def _kwdefault_copy(k):
    fn = types.FunctionType(_with_kwdefault.__code__, globals(), "f")
    fn.__kwdefaults__ = {"k": k}
    return fn


def test_normalize_of_a_recursive_closure_terminates():
    from ptera.lab.experiments.config import normalize

    def outer(n):
        def fact(i):
            return 1 if i <= n else i * fact(i - 1)

        return fact

    assert normalize(outer(1)) != normalize(outer(2))


@pytest.mark.parametrize(
    "fn, where",
    [
        (scaled(object()), "closure cell 'k'"),
        (functools.partial(_with_default, k=object()), "keyword argument 'k'"),
        (
            types.FunctionType(_with_default.__code__, globals(), "f", (object(),)),
            "default of argument 'k'",
        ),
        (_Scale(object()).apply, "bound object"),
    ],
)
def test_a_callable_with_unidentifiable_state_is_refused(fn, where, data, tmp_path):
    with pytest.raises(TypeError, match=where):
        Experiment(
            TempNet(), data, interventions=[Tweak({"Linear > input": fn})], store=tmp_path / "x.db"
        )


# -- diverging trials (issue 14.3) --------------------------------------------------------
def test_a_diverging_trial_is_recorded_as_nan_and_the_run_goes_on(data, tmp_path, capsys):
    exp = Experiment(
        TempNet(),
        data,
        interventions=[
            Tweak({"head > T": 0.0}),  # logits / 0: NaN from the first evaluation
            Tweak({"head > T": float("inf")}),  # logits / inf: finite, all zero
            PerturbWeights(epsilon=0.1),
        ],
        store=tmp_path / "x.db",
    )
    df = exp.run(1)
    assert len(exp.trained) == 4  # the trials after the diverging one ran too
    lines = capsys.readouterr().out.splitlines()
    assert "Tweak(head > T: 0): epoch 1, test accuracy" in lines[1]
    assert lines[1].endswith(", loss nan")
    diverged = exp.grid[1].id
    losses = df[(df.trial == diverged) & (df.metric == "loss")]["value"]
    assert len(losses) == 4 and losses.isna().all()  # NaN, not a missing row
    db = sqlite3.connect(tmp_path / "x.db")
    values = db.execute(
        "SELECT value FROM metrics WHERE trial = ? AND name = 'loss'", (diverged,)
    ).fetchall()
    assert values and None not in {v for (v,) in values}  # NaN is not stored as NULL
    assert [r["state"] for r in exp.status(1)] == ["done", "diverged", "done", "done"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1.5])
def test_the_store_keeps_non_finite_values(value, tmp_path):
    from ptera.lab.experiments import Store

    store = Store(tmp_path / "x.db")
    store.register("t", {})
    store.commit_epoch("t", 0, {("test", "loss"): value}, None)
    ((*_, got),) = store.metrics(["t"])
    assert str(got) == str(value)
    assert store.diverged() == (set() if value == 1.5 else {"t"})


# -- processes die with their parent (issue 14.4) -----------------------------------------
def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended


def _forked_children(pid):
    """Live children of ``pid`` running its own command line (pool workers)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and (entry / "cmdline").read_bytes() == cmdline:
                out.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return [p for p in out if _alive(p)]


def _committed(store):
    if not store.exists():
        return 0
    try:
        db = sqlite3.connect(store, timeout=5)
        rows = db.execute("SELECT epochs FROM trials").fetchall()
        db.close()
    except sqlite3.OperationalError:
        return 0
    return sum(max(e, 0) for (e,) in rows)


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_program(store, n_epochs, processes, until_committed, command=None):
    """Run tests/experiment_program.py (or ``command``) until ``until_committed`` epochs
    are in the store and its workers are up; returns the process and the workers' pids."""
    program = [HERE / "experiment_program.py", store, n_epochs, processes]
    proc = subprocess.Popen(
        command or [sys.executable, *map(str, program)],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that runs the suite in the background starts it with SIGINT ignored,
        # which the program would inherit (and then rightly ignore Ctrl-C): as a terminal.
        preexec_fn=_default_sigint,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        workers = _forked_children(proc.pid) if processes > 1 else []
        if _committed(store) >= until_committed and len(workers) == processes * (processes > 1):
            return proc, workers
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the program did not get going: {proc.communicate()}")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_workers_die_with_a_killed_parent(tmp_path):
    proc, workers = _start_program(tmp_path / "x.db", 20, 2, until_committed=1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.05)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert left == []


# -- damaged checkpoints (issue 14.7) -------------------------------------------------------
def _flip(path, other):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights: torch.load alone would not notice
    path.write_bytes(bytes(data))


def _swap(path, other):
    path.write_bytes(other.read_bytes())  # the intervention's checkpoint of the same epoch


def _truncate(path, other):
    path.write_bytes(path.read_bytes()[:100])


def _empty(path, other):
    path.write_bytes(b"")


def _delete(path, other):
    path.unlink()


@pytest.mark.parametrize("damage", [_flip, _swap, _truncate, _empty, _delete])
def test_a_damaged_checkpoint_falls_back_to_the_last_good_epoch(damage, data, tmp_path):
    kwargs = dict(interventions=[PerturbWeights(epsilon=0.05)], batch_size=32)
    clean = Experiment(TempNet(), data, store=tmp_path / "clean.db", **kwargs)
    clean.run(3, verbose=False)
    exp = Experiment(TempNet(), data, store=tmp_path / "x.db", **kwargs)
    exp.run(2, verbose=False)
    control, other = (exp.store.checkpoint_path(p.id, 2) for p in exp.grid)
    damage(control, other)
    leftover = control.with_name(f".epoch-3.pt.{2**31 - 1}.tmp")  # a write cut short
    leftover.write_bytes(b"half")
    with pytest.warns(RuntimeWarning, match=rf"checkpoint .*{control.name}.*resuming from epoch 1"):
        exp.run(3, verbose=False)
    assert not leftover.exists()
    assert exp.results()["value"].tolist() == clean.results()["value"].tolist()
    with pytest.raises(Exception, match="checkpoint"):  # read directly, it is an error
        damage(control, other)
        exp.store.load_checkpoint(exp.grid[0].id, 2)


def test_every_checkpoint_damaged_retrains_from_scratch(data, tmp_path):
    clean = Experiment(TempNet(), data, store=tmp_path / "clean.db")
    clean.run(2, verbose=False)
    exp = Experiment(TempNet(), data, store=tmp_path / "x.db")
    exp.run(1, verbose=False)
    for epoch in (0, 1):
        _empty(exp.store.checkpoint_path(exp.grid[0].id, epoch), None)
    with pytest.warns(RuntimeWarning, match="retraining from scratch"):
        exp.run(2, verbose=False)
    assert exp.results()["value"].tolist() == clean.results()["value"].tolist()


# -- configs are trusted like scripts; status and plot read the store only (issue 14.8) ---
SPY = """
import os
from pathlib import Path

Path(os.environ["SPY_LOG"]).open("a").write("imported\\n")
from tests.experiment_program import TempNet, small_digits


def model():
    Path(os.environ["SPY_LOG"]).open("a").write("called\\n")
    return TempNet()
"""


def test_status_and_plot_import_nothing_the_config_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    (tmp_path / "spy_module.py").write_text(SPY)
    log = tmp_path / "log.txt"
    monkeypatch.setenv("SPY_LOG", str(log))
    config = tmp_path / "exp.toml"
    config.write_text(
        CONFIG.replace("tests.experiment_program:TempNet", "spy_module:model").replace(
            "tests.experiment_program:small_digits", "spy_module:small_digits"
        )
    )
    cli_main(["run", str(config)])
    assert log.read_text() == "imported\ncalled\n"  # run imports and calls: trusted
    log.unlink()
    monkeypatch.delitem(sys.modules, "spy_module")
    capsys.readouterr()
    cli_main(["status", str(config)])
    assert "4 done" in capsys.readouterr().out
    cli_main(["plot", str(config), "--out", str(tmp_path / "plots")])
    assert "test_loss.png" in capsys.readouterr().out
    assert not log.exists() and "spy_module" not in sys.modules


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Adam", torch.optim.Adam),
        ("cross_entropy", torch.nn.functional.cross_entropy),
        ("torch.optim:AdamW", torch.optim.AdamW),
        ("torch.optim.Adam", "write an import path"),  # a dotted path is not explicit
        ("os.system", "write an import path"),
        ("system", "write an import path"),
        ("os:", "write an import path"),
        ("no_such_module_here:x", "cannot import"),
    ],
)
def test_run_resolves_registered_names_and_explicit_paths_only(name, expected):
    from ptera.lab.experiments.interventions import import_object

    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            import_object(name)
    else:
        assert import_object(name) is expected


# -- the command line: help, bad options, dump (issue 20.7) ---------------------------------
def test_cli_help_needs_no_config_and_shows_values(capsys):
    with pytest.raises(SystemExit) as exit:
        cli_main(["run", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "--n-epochs" in out and "--dump-config" in out
    assert "spec.get" not in out and "--config" not in out
    assert "else 1" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-epochs", "-1"], "expected an integer >= 0, got '-1'"),
        (["--processes", "0"], "expected an integer >= 1, got '0'"),
        (["--executor", "gpu"], "invalid choice: 'gpu'"),
        (["--config", "x.toml"], "unrecognized arguments: --config"),
        (["--executor", "batched", "--processes", "2"], "runs in this process"),
        (["--executor", "serial", "--processes", "2"], "runs in this process"),
    ],
)
def test_cli_bad_options_exit_2_without_traceback(args, message, tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text(CONFIG)
    with pytest.raises(SystemExit) as exit:
        cli_main(["run", str(config), *args])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "cli.db").exists()


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_cli_dump_config_is_the_whole_experiment_and_reruns(fmt, tmp_path, capsys, monkeypatch):
    import json
    import tomllib

    monkeypatch.chdir(HERE.parent)
    config = tmp_path / "exp.toml"
    config.write_text(CONFIG)
    cli_main(["run", str(config), "--n-epochs", "1"])
    capsys.readouterr()
    cli_main(["run", str(config), "--dump-config", fmt, "--processes", "2"])
    text = capsys.readouterr().out
    dumped = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    assert dumped["store"] == str(tmp_path / "cli.db")
    assert dumped["processes"] == 2 and dumped["executor"] == "processes"
    assert dumped["optimizer"] == "SGD" and dumped["batch_size"] == 64  # defaults filled in
    assert dumped["interventions"][1] == {"type": "Tweak", "values": {"head > T": 2.0}}
    assert not (tmp_path / "cli.plots").exists()
    again = tmp_path / "other" / f"dumped.{fmt}"
    again.parent.mkdir()
    again.write_text(text)
    cli_main(["run", str(again), "--processes", "1"])
    out = capsys.readouterr().out
    assert "4 done" in out and "[1/" not in out  # the same trials: nothing trained again


# -- status reads the target the experiment was run to (issue 20.9) ------------------------
def test_status_uses_the_epochs_last_run_to(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    config = tmp_path / "exp.toml"
    config.write_text(CONFIG.replace("n_epochs = 1", "n_epochs = 3"))
    cli_main(["run", str(config), "--n-epochs", "1"])
    capsys.readouterr()
    cli_main(["status", str(config)])
    out = capsys.readouterr().out
    assert "target 1 epochs" in out and "4 done" in out


def test_status_of_a_missing_store_says_so_and_creates_nothing(tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text(CONFIG.replace('store = "cli.db"', 'store = "sub/cli.db"'))
    for command in ("status", "plot"):
        with pytest.raises(SystemExit) as exit:
            cli_main([command, str(config)])
        assert exit.value.code == 1
        assert "no such store" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]


# -- one process trains a trial at a time (issue 14.10) -------------------------------------
def test_two_runs_on_one_store_train_each_trial_once(tmp_path):
    store = tmp_path / "x.db"
    command = [sys.executable, str(HERE / "experiment_program.py"), str(store), "1"]
    procs = [
        subprocess.Popen(command, cwd=HERE.parent, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    trained = [set(out.split("trained")[-1].split()) for out in outs]
    assert not trained[0] & trained[1]  # no trial trained by both
    epochs = sqlite3.connect(store).execute("SELECT id, epochs FROM trials").fetchall()
    assert {t for t, _ in epochs} == trained[0] | trained[1]
    assert len(epochs) == 5 and {e for _, e in epochs} == {1}


def test_a_lease_is_taken_over_when_its_holder_died(tmp_path):
    import socket

    from ptera.lab.experiments import Store

    store = Store(tmp_path / "x.db")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    try:
        for owner, age, free in [
            (f"{host}:{sleeper.pid}", 0, False),  # alive here
            (f"elsewhere:{sleeper.pid}", 0, False),  # alive elsewhere, fresh heartbeat
            (f"elsewhere:{sleeper.pid}", 3600, True),  # its heartbeat stopped
            (f"{host}:{sleeper.pid}", 3600, True),
        ]:
            store.db.execute(
                "INSERT OR REPLACE INTO leases VALUES ('t', ?, ?)", (owner, time.time() - age)
            )
            assert store.claim("t") is free
        store.db.execute(
            "INSERT OR REPLACE INTO leases VALUES ('t', ?, ?)",
            (f"{host}:{sleeper.pid}", time.time()),
        )
        assert not store.claim("t")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert store.claim("t")  # its process is gone
    store.release("t")
    assert store.db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)


# -- Ctrl-C stops a run cleanly (issue 20.8) ------------------------------------------------
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("processes, executor", [(1, "serial"), (2, "processes"), (1, "batched")])
def test_sigint_stops_a_run_within_seconds_and_keeps_committed_epochs(
    processes, executor, tmp_path
):
    config = tmp_path / "exp.toml"
    config.write_text(CONFIG)
    store = tmp_path / "cli.db"
    command = [
        sys.executable,
        "-m",
        "ptera.lab.experiments",
        "run",
        str(config),
        "--n-epochs",
        "100000",
        "--processes",
        str(processes),
        "--executor",
        executor,
    ]
    proc, workers = _start_program(store, None, processes, until_committed=2, command=command)
    committed = _committed(store)
    os.kill(proc.pid, signal.SIGINT)
    start = time.time()
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert time.time() - start < 10
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("interrupted:") and "again to resume" in line
    assert not [p for p in workers if _alive(p)]
    assert _committed(store) >= committed
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    if processes == 1:  # this process released its leases (terminated workers' are stale)
        assert db.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)


_scalars = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.text(max_size=8)
)
_values = (
    _scalars
    | st.lists(_scalars, max_size=3)
    | st.dictionaries(st.text(max_size=5), _scalars, max_size=3)
)
_tables = st.dictionaries(st.text(max_size=6), _values, max_size=3)


@given(
    st.dictionaries(
        st.text(max_size=8),
        _values | st.lists(_tables, min_size=1, max_size=2) | _tables,
        max_size=5,
    )
)
def test_dumped_toml_reads_back_as_written(config):
    import tomllib

    from ptera.lab.experiments.cli import to_toml

    assert tomllib.loads(to_toml(config)) == config


def test_serial_runs_report_each_trial_as_it_ends(data, tmp_path):
    from ptera.lab.experiments import SerialExecutor

    events = []
    metrics = Metrics()
    metrics.register_metric("seen", lambda trial: events.append(("measure", trial.id)) or 0)

    class Spy(SerialExecutor):
        def run(self, setup, jobs, n_epochs, done=None):
            def report(trial, n):
                events.append(("done", trial))

            return super().run(setup, jobs, n_epochs, report)

    exp = Experiment(
        TempNet(),
        data,
        interventions=[PerturbWeights.make_variations(epsilon=(0.01, 0.1))],
        metrics=metrics,
        store=tmp_path / "x.db",
    )
    exp.run(1, executor=Spy(), verbose=False)
    ids = [p.id for p in exp.grid]
    order = [trial for kind, trial in events if kind == "done"]
    assert order == ids
    first_measure = {t: events.index(("measure", t)) for t in ids}
    for before, after in zip(ids, ids[1:]):
        assert events.index(("done", before)) < first_measure[after]
