"""Config runs: grids, checks before training, the folder tree, resume after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ptera.lab import Saturation
from ptera.lab.experiments import Store
from ptera.lab.representations import saturation
from ptera.lab.runs import DEFAULT_CONFIG, MODEL_REGISTRY, Runs, expand, load_config
from ptera.lab.runs.cli import main

from .callbacks_program import replay

ROOT = Path(__file__).resolve().parent.parent
TINY = "tests.runs_program:tiny_digits"


def config(tmp_path, **changes):
    base = {
        "model": ["mlp"],
        "epoch": [2],
        "batch_size": [60],
        "dataset": [TINY],
        "optimizer": ["sgd"],
        "metrics": ["accuracy"],
        "logs_dir": str(tmp_path / "logs"),
        "latents_dir": str(tmp_path / "latents"),
    }
    return {**base, **changes}


def test_a_seed_style_grid_of_3_models_2_datasets_2_optimizers_is_12_runs():
    cfg = {
        "model": ["mlp", "lenet5", "vgg"],
        "epoch": [30],
        "batch_size": [128],
        "dataset": ["digits", "noisy_digits"],
        "resolution": [32],
        "optimizer": ["adam", "radam"],
        "metrics": ["accuracy", "top5_accuracy", "mcc"],
        "logs_dir": "./logs/",
        "device": "cpu",
        "conv_method": ["channelwise"],
        "delta": [0.99],
        "data_parallel": False,
        "downsampling": None,
    }
    runs = expand(cfg)
    assert len(runs) == 12
    assert len({r.name for r in runs}) == 12
    assert {r.metrics for r in runs} == {("accuracy", "top5_accuracy", "mcc")}
    assert runs[0].folder("RES") == Path("logs/mlp/digits_32/RES")
    assert runs[0].name == "mlp-digits-r32-bs128-e30-adam"


@pytest.mark.parametrize(
    "changes, n",
    [
        ({}, 1),
        ({"delta": 0.9}, 1),  # a single value is a one-value axis
        ({"epoch": [1, 2], "batch_size": [30, 60]}, 4),
        ({"resolution": [8, 16], "conv_method": ["channelwise", "mean"], "rule": ["delve"]}, 4),
    ],
)
def test_every_list_is_an_axis_and_missing_keys_take_defaults(changes, n):
    cfg = load_config({"model": "mlp", **changes})
    assert len(expand(cfg)) == n
    assert cfg["logs_dir"] == DEFAULT_CONFIG["logs_dir"]
    assert cfg["metrics"] == DEFAULT_CONFIG["metrics"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": ["mlp", "nope"]}, "config key 'model': unknown model 'nope'"),
        ({"epochs": [3]}, "unknown config key 'epochs'"),
        ({"delta": [0.99, 0]}, r"config key 'delta': delta must be a number in \(0, 1\]"),
        ({"delta": 1.5}, "config key 'delta'"),
        ({"optimizer": ["sgdd"]}, "config key 'optimizer': unknown optimizer 'sgdd'"),
        ({"metrics": ["f1"]}, "config key 'metrics': unknown metric 'f1'"),
        ({"dataset": ["no.such.module:x"]}, "config key 'dataset': cannot import"),
        ({"batch_size": [0]}, "config key 'batch_size'"),
        ({"conv_method": "median"}, "config key 'conv_method'"),
        ({"downsampling": "pixel"}, "config key 'downsampling'"),
        ({"logs_dir": ["a", "b"]}, "config key 'logs_dir' is a setting"),
        ({"model": []}, "config key 'model' is an empty list"),
    ],
)
def test_bad_configs_fail_before_training_with_the_key_named(tmp_path, capsys, changes, message):
    with pytest.raises(ValueError, match=message):
        load_config(config(tmp_path, **changes))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config(tmp_path, **changes)))
    assert main(["train", "--config", str(path), "--run-id", "R"]) == 2
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()  # nothing trained, nothing written


def test_a_registry_is_extendable(tmp_path, monkeypatch):
    monkeypatch.setitem(MODEL_REGISTRY, "tiny", MODEL_REGISTRY["mlp"])
    assert len(expand(config(tmp_path, model=["tiny", "tests.runs_program:SlowMLP"]))) == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    cfg = config(tmp, optimizer=["sgd", "adam"], metrics=["accuracy", "mcc"])
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(path), "--run-id", "RES", "--quiet"]) == 0
    return tmp, path


def test_train_writes_the_seed_tree(trained):
    tmp, _ = trained
    folder = next((tmp / "logs" / "mlp").iterdir()) / "RES"
    assert folder.name == "RES" and folder.parent.name == "tiny_digits_8"
    for name in ("mlp-tiny_digits-r8-bs60-e2-sgd", "mlp-tiny_digits-r8-bs60-e2-adam"):
        files = {p.name for p in folder.iterdir()}
        assert {f"{name}.csv", f"{name}.pt", f"{name}_config.json"} <= files
        assert {f"{name}lsat_epoch{e}.png" for e in (1, 2)} <= files
        assert f"{name}lsat_epoch0.png" not in files  # no training pass before epoch 1
        table = pd.read_csv(folder / f"{name}.csv")
        assert list(table.epoch) == [0, 1, 2]
        assert {"train_loss", "test_accuracy", "mcc", "layers.1-train-saturation"} <= set(table)
        sat = [c for c in table if c.endswith(("-k", "-saturation", "-trace"))]
        assert table.loc[0, sat].isna().all() and table.loc[1:, sat].notna().all().all()
        text = (folder / f"{name}.csv").read_text().splitlines()
        k = text[0].split(",").index("layers.1-train-k")
        assert text[1].split(",")[k] == "" and text[2].split(",")[k].isdigit()  # k: whole
        state = torch.load(folder / f"{name}.pt", weights_only=True)
        assert state["epoch"] == 2
    info = json.loads((folder / "computational_info.json").read_text())
    assert info["flops_per_inference"] > 0


def test_the_saturation_columns_are_tracked_during_training(trained):
    """Each epoch's saturation is ``Saturation``'s, in a Learner training the run
    again (train: the whole training pass, weights moving; eval: the evaluation
    pass), not a pass over the data after the epoch."""
    tmp, path = trained
    runs = Runs(path, "RES")
    group = runs.groups[0]
    for run in group.runs:
        plan = group.trials[run]
        tracker = Saturation()
        model = runs.build_model(run, group.train)
        replay(group.experiment, plan, [tracker], run.epoch, model=model)
        table = pd.read_csv(run.folder("RES") / f"{run.name}.csv").set_index("epoch")
        history = tracker.history
        assert len(history) == 2 * 3 * run.epoch  # epochs x splits x layers
        for row in history.itertuples():
            cells = table.loc[row.epoch + 1]  # the Learner counts epochs from 0
            prefix = f"{row.layer}-{row.split}"
            assert cells[f"{prefix}-k"] == row.k
            assert cells[f"{prefix}-saturation"] == pytest.approx(row.saturation, rel=1e-12)
            assert cells[f"{prefix}-trace"] == pytest.approx(row.trace, rel=1e-9)
    # Not a pass after the epoch: the training pass saw the weights move.
    final = runs.trained_model(group, group.runs[0])
    after = saturation(final, group.train, split="train")
    last = pd.read_csv(group.runs[0].folder("RES") / f"{group.runs[0].name}.csv").iloc[-1]
    assert any(last[f"{r.layer}-train-trace"] != pytest.approx(r.trace) for r in after.itertuples())


def test_worker_processes_track_the_same_saturation(trained, tmp_path):
    tmp, path = trained
    cfg = {**json.loads(path.read_text()), "logs_dir": str(tmp_path / "logs")}
    Runs(cfg, "RES").train(processes=2, verbose=False)
    serial, parallel = (
        sorted(p for p in (root / "logs").rglob("*.csv") if "_probe_" not in p.name)
        for root in (tmp, tmp_path)
    )
    assert [p.name for p in parallel] == [p.name for p in serial] and len(serial) == 2
    for a, b in zip(serial, parallel):
        pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))


def test_a_finished_run_is_skipped_and_extract_probe_do_only_their_step(trained, capsys):
    tmp, path = trained
    store = Store(tmp / "logs" / "runs.db")
    before = store.epochs()
    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp / "logs").rglob("*.pt")}
    assert main(["probe", "--config", str(path), "--run-id", "RES"]) == 0
    out = capsys.readouterr().out
    assert "[1/" not in out  # no trial trained
    assert store.epochs() == before
    assert {
        p: p.stat().st_mtime_ns for p in (tmp / "logs").rglob("*.pt")
    }.keys() == checkpoints.keys()
    probes = sorted((tmp / "logs").rglob("*_probe_performance.csv"))
    assert len(probes) == 2
    frame = pd.read_csv(probes[0])
    assert list(frame.layer) == ["layers.1", "layers.3", "layers.5"]
    assert (frame.eval_accuracy > 0.3).all()
    latents = sorted((tmp / "latents").iterdir())
    assert len(latents) == 2
    x = np.load(latents[0] / "train-layers-1.npy", allow_pickle=False)
    assert x.shape == (240, 128)
    assert main(["extract", "--config", str(path), "--run-id", "RES"]) == 0
    assert "latents written" not in capsys.readouterr().out  # already there


def test_another_run_id_is_another_trial(trained):
    tmp, path = trained
    a, b = Runs(path, "RES"), Runs(path, "OTHER")
    assert a.groups[0].trials[a.runs[0]].id != b.groups[0].trials[b.runs[0]].id


@pytest.mark.parametrize(
    "changes", [{"delta": [0.9]}, {"rule": ["delve"]}, {"conv_method": ["mean"]}]
)
def test_saturation_options_are_part_of_the_trial(tmp_path, changes):
    def trial(cfg):
        runs = Runs(cfg, "R")
        return runs.groups[0].trials[runs.runs[0]].id

    assert trial(config(tmp_path, **changes)) != trial(config(tmp_path))


def test_receptive_field_command(tmp_path):
    path = tmp_path / "c.json"
    models = ["mlp", "lenet5", "resnet"]  # an MLP has no receptive field: skipped, not fatal
    path.write_text(json.dumps(config(tmp_path, model=models, resolution=[16])))
    assert main(["receptive-field", "--config", str(path), "--run-id", "R", "--quiet"]) == 0
    assert not (tmp_path / "logs" / "mlp" / "tiny_digits_16" / "R" / "receptive_field.csv").exists()
    frame = pd.read_csv(
        tmp_path / "logs" / "lenet5" / "tiny_digits_16" / "R" / "receptive_field.csv"
    )
    assert list(frame.receptive_field) == [5, 6, 14, 16]
    resnet = pd.read_csv(
        tmp_path / "logs" / "resnet" / "tiny_digits_16" / "R" / "receptive_field.csv"
    )
    assert list(resnet.receptive_field) == [3, 5, 7, 9, 13]  # the no-skip path


def test_a_run_killed_mid_training_resumes_after_its_last_epoch(tmp_path):
    cfg = config(tmp_path, model=["tests.runs_program:SlowMLP"], epoch=[4])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    command = [
        sys.executable,
        "-m",
        "ptera.lab.runs",
        "train",
        "--config",
        str(path),
        "--run-id",
        "K",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    db = tmp_path / "logs" / "runs.db"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if db.exists() and max(Store(db).epochs().values(), default=-1) >= 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run committed no epoch in time")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = max(Store(db).epochs().values())
    assert 1 <= done < 4
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"after epoch {done}" in again.stdout
    assert max(Store(db).epochs().values()) == 4
    folder = next((tmp_path / "logs").glob("SlowMLP/*/K"))
    resumed = pd.read_csv(next(folder.glob("*.csv")))
    assert list(resumed.epoch) == [0, 1, 2, 3, 4]
    # The same numbers as a run that never stopped (every epoch is seeded).
    other = tmp_path / "straight"
    cfg2 = {**cfg, "logs_dir": str(other)}
    Runs(cfg2, "K").train(verbose=False)
    straight = pd.read_csv(next(next(other.glob("SlowMLP/*/K")).glob("*.csv")))
    pd.testing.assert_frame_equal(resumed, straight)


def test_the_example_config_runs(tmp_path):
    cfg = json.loads((ROOT / "examples" / "runs.json").read_text())
    assert len(expand(cfg)) == 4
    moved = {**cfg, "logs_dir": str(tmp_path / "logs"), "latents_dir": str(tmp_path / "lat")}
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(moved))
    assert main(["train", "--config", str(path), "--run-id", "RES", "--quiet"]) == 0
    tables = sorted((tmp_path / "logs").rglob("*.csv"))
    assert len(tables) == 4
    final = [pd.read_csv(t).iloc[-1] for t in tables]
    assert all(row.epoch == 3 for row in final)
    assert max(row.test_accuracy for row in final) > 0.8


def test_runs_that_differ_only_in_epochs_share_a_trial_and_keep_their_own_view(tmp_path):
    runs = Runs(config(tmp_path, epoch=[2, 1]), "E")
    runs.train(verbose=False)
    (long, short) = [g.trials[g.runs[0]].id for g in runs.groups]
    assert long == short  # the 1-epoch run is the first epoch of the 2-epoch trial
    folder = runs.runs[1].folder("E")
    table = pd.read_csv(folder / f"{runs.runs[1].name}.csv")
    assert list(table.epoch) == [0, 1]
    assert torch.load(folder / f"{runs.runs[1].name}.pt", weights_only=True)["epoch"] == 1


# -- the seed's spellings ---------------------------------------------------------------
@pytest.mark.parametrize(
    "key, given, canonical",
    [
        ("metrics", ["Accuracy", "Top5Accuracy", "MCC"], ["accuracy", "top5_accuracy", "mcc"]),
        ("metrics", ["accuracy", "ACCURACY", "top-5-accuracy"], ["accuracy", "top5_accuracy"]),
        ("model", ["MLP", "LeNet5"], ["mlp", "lenet5"]),
        ("optimizer", ["Adam", "RAdam"], ["adam", "radam"]),
        ("dataset", ["Digits", TINY], ["digits", TINY]),
    ],
)
def test_names_match_regardless_of_case_and_underscores(tmp_path, key, given, canonical):
    cfg = load_config(config(tmp_path, **{key: given}))
    assert cfg[key] == canonical
    run = expand(cfg)[0]
    assert getattr(run, key) == (tuple(canonical) if key == "metrics" else canonical[0])


def test_an_ambiguous_name_is_refused(tmp_path, monkeypatch):
    from ptera.lab.runs import METRICS_REGISTRY

    monkeypatch.setitem(METRICS_REGISTRY, "top_5_accuracy", METRICS_REGISTRY["top5_accuracy"])
    with pytest.raises(ValueError, match="metric 'Top5Accuracy' is ambiguous .*top5_accuracy"):
        load_config(config(tmp_path, metrics=["Top5Accuracy"]))
    assert load_config(config(tmp_path, metrics=["top5_accuracy"]))["metrics"] == [
        "top5_accuracy"
    ]  # an exact name is never ambiguous


SEED_LINES = [  # seed 003's command lines, the script name as the command
    ("probe_meta_execution_script.py --config C -mp 18 -d 4 --device cuda:0 --run-id RES",
     "probe", [4], None, None),
    ("train_model.py --config C --device cuda:0 --run-id RES", "train", None, None, None),
    ("compute_receptive_field.py --config C --device cuda:0 --run-id RES",
     "receptive-field", None, None, None),
    ("pixelwise_probe_meta_execution_script.py --config C -mp 56 --device cuda:0 --run-id RES",
     "probe", ["pixelwise"], None, None),
    ("extract_latent_representations.py --config C --device cuda:0 --run-id MyRun --downsample 4",
     "extract", [4], None, None),
    ("train_probes.py --config C --prefix SomePrefix -mp 4", "train-probes", None, None,
     "SomePrefix"),
    ("train_probes.py --config C -f lat -mp 4", "train-probes", None, "lat", None),
    ("probe_meta_execution_script.py --config C -mp 8 -d pixelwise --device cuda:0 --run-id X",
     "probe", ["pixelwise"], None, None),
    ("probes_meta_execution_script --config C -d 4 -d 2 --run-id X", "probe", [4, 2], None, None),
    ("extract --config C --run-id X --downsampling 4 -d none", "extract", [4, None], None, None),
    ("probe --config C --run-id RES -d 4 -d pixelwise", "probe", [4, "pixelwise"], None, None),
]  # fmt: skip


@pytest.mark.parametrize("line, command, downsampling, latents_dir, prefix", SEED_LINES)
def test_the_seeds_command_lines_parse(line, command, downsampling, latents_dir, prefix):
    from ptera.lab.runs.cli import _arguments

    args = _arguments(line.split())
    assert (args.command, args.downsampling, args.latents_dir, args.prefix) == (
        command, downsampling, latents_dir, prefix,
    )  # fmt: skip
    assert args.config == "C"


@pytest.mark.parametrize(
    "line, message",
    [
        ("train --config C --run-id R --prefix P", "--prefix is for probe, train-probes"),
        ("extract --config C --run-id R --prefix P", "--prefix is for probe, train-probes"),
        ("train_model.py --config C --run-id R -d 4", "-d/--downsampling is for extract"),
        ("receptive-field --config C --run-id R -f lat", "-f/--latents-dir is for extract"),
        ("probe --config C", "probe needs --run-id"),
        ("probe --config C --run-id R -d 0", "a positive int, 'pixelwise' or 'none'"),
        ("probe --config C --run-id R --prefix a/b", "--prefix must be a non-empty file-name"),
        ("infer_with_altering_delta.py --config C --run-id R", "is not a command here"),
        ("fit --config C --run-id R", "unknown command 'fit'"),
        ("train_probes --config C --device cuda:0", "--device is for train, extract, probe"),
        ("receptive-field --config C --run-id R --ray", "--ray is for train, extract, probe,"),
        ("receptive-field --config C --run-id R -mp 2", "-mp/--processes is for train,"),
    ],
)
def test_options_a_command_does_not_use_are_refused(capsys, line, message):
    with pytest.raises(SystemExit) as exit:
        main(line.split())
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def conv_trained(tmp_path_factory):
    """A trained LeNet-5 run (conv maps: pixelwise and 4x4 latents differ)."""
    tmp = tmp_path_factory.mktemp("conv")
    cfg = config(tmp, model=["lenet5"], epoch=[1], metrics=["Accuracy", "MCC"])
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg))
    assert main(["train_model.py", "--config", str(path), "--run-id", "RES", "--quiet"]) == 0
    return tmp, path


def test_repeated_d_gives_each_resolution_its_latents_and_probes(conv_trained, tmp_path):
    tmp, path = conv_trained
    line = f"probe --config {path} --run-id RES -d 2 -d pixelwise -f {tmp_path} --quiet"
    assert main(line.split()) == 0
    run = expand({**load_config(path), "latents_dir": str(tmp_path)})[0]
    latents = {d: run.latents_folder("RES", d) for d in (2, "pixelwise")}
    assert all(folder.parent == tmp_path for folder in latents.values())
    first = {d: np.load(f / "train-features-0.npy") for d, f in latents.items()}
    assert first[2].shape == (240, 6 * 2 * 2)  # 6 channels pooled to 2x2
    assert first["pixelwise"].shape[1] == 6 and first["pixelwise"].shape[0] > 240
    for d in latents:
        frame = pd.read_csv(run.probe_file("RES", d))
        assert list(frame.layer)[0] == "features.0"
    assert run.probe_file("RES", 2).name == f"{run.name}_d2_probe_performance.csv"


def test_train_probes_fits_the_latents_there_without_training(conv_trained, tmp_path, capsys):
    tmp, path = conv_trained
    store = Store(tmp / "logs" / "runs.db")
    before = store.epochs()
    lat = str(tmp_path / "lat")
    assert (
        main(f"extract --config {path} --run-id RES --downsample 4 -f {lat} --quiet".split()) == 0
    )
    missing = f"train_probes.py --config {path} --prefix P -f {lat} --run-id OTHER".split()
    assert main(missing) == 2
    assert "no latents of this configuration's runs under run id 'OTHER'" in capsys.readouterr().err
    assert main(f"train_probes.py --config {path} --prefix SomePrefix -f {lat} -mp 1".split()) == 0
    run = expand(load_config(path))[0]
    out = run.probe_file("RES", 4, "SomePrefix")
    assert out.name == f"SomePrefix_{run.name}_d4_probe_performance.csv"
    assert out.exists() and "probes written" in capsys.readouterr().out
    assert main(f"train_probes --config {path} -f {lat} -d pixelwise --quiet".split()) == 2
    assert store.epochs() == before  # nothing trained


def test_the_readmes_command_lines_parse():
    from ptera.lab.runs.cli import _arguments

    prefix = "python -m ptera.lab.runs "
    lines = [
        line.removeprefix(prefix)
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith(prefix)
    ]
    assert len(lines) >= 5
    for line in lines:
        args = _arguments(line.split())
        assert args.config == "examples/runs.json"
