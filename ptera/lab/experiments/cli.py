"""``python -m ptera.lab.experiments run|status|plot CONFIG``: experiments from a file.

CONFIG (TOML, YAML or JSON) describes the experiment::

    model = "ptera.lab.models:Lenet5"      # a class or function, by import path
    model_args = {image_size = 8}
    datasets = "examples.perturb:digits"   # a function returning (train, test)
    store = "perturb.db"                   # relative to the config's folder
    n_epochs = 3
    lr = 0.05
    hyperparameters = {momentum = 0.9}

    [[interventions]]
    type = "PerturbWeights"
    epsilon = [0.001, 0.01, 0.1]           # a list: alternatives
    seed_weights = [0, 1, 2]

    [plotter]
    average_over = ["seed_weights"]

The options of each command (``--n-epochs``, ``--processes``, ...) come from
``auto_cli``: they are declared in the command functions below, with their help.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ...cli import CliError, auto_cli, read_config
from ...state import default
from ...tags import tag
from ...tooling import tooled
from . import interventions as iv
from .experiment import Experiment
from .plotter import Plotter

__all__ = ["experiment_from", "main"]

KEYS = {
    "model": "import path of the model class or factory",
    "model_args": "keyword arguments of the model",
    "datasets": "import path of a function returning (train_set, test_set)",
    "datasets_args": "keyword arguments of that function",
    "variations": "list of intervention tables (type = ...), multiplied",
    "interventions": "list of intervention tables, each run against the control",
    "metrics": "import path of a Metrics class",
    "plotter": "table of Plotter arguments",
    "store": "SQLite file of the experiment",
    "n_epochs": "epochs each trial trains",
    "processes": "worker processes",
    "executor": "serial, processes, ray or batched",
    "optimizer": "import path of the optimizer class",
    "lr": "learning rate",
    "hyperparameters": "table of other optimizer options",
    "batch_size": "training batch size",
    "loss_fn": "import path of the loss function",
    "seed_weights": "seed of the initial weights",
    "seed_shuffle": "seed of the batch order",
}

INTERVENTIONS = {
    cls.__name__: cls
    for cls in (
        iv.PerturbWeights,
        iv.ReinitWeights,
        iv.ChangeOptimizer,
        iv.ChangeTrainLoader,
        iv.Tweak,
    )
}


def experiment_from(spec: dict, path: str) -> Experiment:
    """Build the ``Experiment`` a config describes (errors name the key at fault)."""
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        known = "\n".join(f"  {k}: {v}" for k, v in KEYS.items())
        raise CliError(f"{path}: unknown key(s) {', '.join(unknown)}; the keys are:\n{known}")
    for key in ("model", "datasets"):
        if key not in spec:
            raise CliError(f"{path}: missing '{key}' ({KEYS[key]})")
    folder = Path(path).resolve().parent
    for p in (str(folder), os.getcwd()):
        if p not in sys.path:
            sys.path.insert(0, p)
    model = _import(spec["model"], "model", path)(**spec.get("model_args", {}))
    datasets = _import(spec["datasets"], "datasets", path)(**spec.get("datasets_args", {}))
    settings: dict[str, Any] = {}
    for key in ("lr", "batch_size", "seed_weights", "seed_shuffle", "hyperparameters"):
        if key in spec:
            settings[key] = spec[key]
    for key in ("optimizer", "loss_fn"):
        if key in spec:
            settings[key] = _import(spec[key], key, path)
    store = Path(spec.get("store", Path(path).stem + ".db"))
    try:
        plotter = Plotter(**spec.get("plotter", {}))
    except (TypeError, ValueError) as exc:
        raise CliError(f"{path}: plotter: {exc}") from None
    return Experiment(
        model=model,
        datasets=datasets,
        variations=_axes(spec, "variations", path),
        interventions=_axes(spec, "interventions", path),
        metrics=_import(spec["metrics"], "metrics", path)() if "metrics" in spec else None,
        plotter=plotter,
        store=store if store.is_absolute() else folder / store,
        **settings,
    )


def _axes(spec: dict, key: str, path: str) -> list:
    """The interventions (or families) of the ``key`` list of tables."""
    tables = spec.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise CliError(f"{path}: '{key}' must be a list of tables ([[{key}]] in TOML)")
    return [_axis(t, f"{path}: {key}[{i}]") for i, t in enumerate(tables)]


def _axis(table: dict, where: str) -> Any:
    table = dict(table)
    name = table.pop("type", None)
    if name not in INTERVENTIONS:
        raise CliError(f"{where}: type must be one of {', '.join(INTERVENTIONS)}, got {name!r}")
    cls = INTERVENTIONS[name]
    when = table.pop("when", None)
    try:
        if cls is iv.Tweak:
            values = {
                s: tuple(v) if isinstance(v, list) else v
                for s, v in table.pop("values", {}).items()
            }
            if table:
                raise TypeError(f"Tweak takes values= and when= only, not {', '.join(table)}")
            return iv.Tweak.make_variations(values=values, when=when)
        grid = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
        return cls.make_variations(when=when, **grid)  # ChangeOptimizer imports a path itself
    except (TypeError, ValueError) as exc:
        raise CliError(f"{where}: {exc}") from None


def _import(text: Any, key: str, path: str) -> Any:
    if not isinstance(text, str):
        raise CliError(f"{path}: '{key}' must be an import path such as 'pkg.module:Name'")
    try:
        return iv.import_object(text)
    except ValueError as exc:
        raise CliError(f"{path}: {key}: {exc}") from None


# -- the commands (their options are found by auto_cli) ------------------------------
@tooled
def run(exp: Experiment, spec: dict) -> None:
    """Train every trial of the experiment (finished ones are skipped, partial ones resumed)."""
    # Epochs each trial trains to
    n_epochs: tag.CliArgument & int = default(spec.get("n_epochs", 1))
    # Worker processes (1: trials run in this process)
    processes: tag.CliArgument & int = default(spec.get("processes", 1))
    # Where trials run: serial, processes, ray or batched (stackable trials as one model)
    executor: tag.CliArgument & str = default(spec.get("executor", ""))
    # Write the plots when done
    plot: tag.CliArgument & bool = default(False)

    exp.run(n_epochs, executor=executor or None, processes=processes, plot=plot)
    show_status(exp, n_epochs)
    if plot:
        for p in exp.plot():
            print(p)


@tooled
def status(exp: Experiment, spec: dict) -> None:
    """Show every trial: done, partial, pending or failed."""
    # Epochs a trial needs to count as done
    n_epochs: tag.CliArgument & int = default(spec.get("n_epochs", 1))

    show_status(exp, n_epochs)


@tooled
def plot(exp: Experiment, spec: dict) -> None:
    """Write one PNG per metric."""
    # Folder of the PNGs (default: next to the store)
    out: tag.CliArgument & str = default("")

    for p in exp.plot(out or None):
        print(p)


COMMANDS = {"run": run, "status": status, "plot": plot}


def show_status(exp: Experiment, n_epochs: int) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = exp.status(n_epochs)
    table = Table(title=f"{exp.store.path.name}: {len(rows)} trials, target {n_epochs} epochs")
    for col in ("trial", "variation", "condition", "epochs", "state"):
        table.add_column(col, justify="right" if col == "epochs" else "left")
    colour = {"done": "green", "partial": "yellow", "pending": "blue", "failed": "red"}
    for r in rows:
        s = r["state"]
        table.add_row(
            r["trial"], r["variation"], r["condition"], str(r["epochs"]), f"[{colour[s]}]{s}"
        )
    counts = {s: sum(r["state"] == s for r in rows) for s in colour}
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m ptera.lab.experiments``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = "usage: python -m ptera.lab.experiments {run,status,plot} CONFIG [options]"
    if not argv or argv[0] in ("-h", "--help"):
        print(
            usage
            + "\n\n"
            + "\n".join(f"  {n:<7} {f.__doc__.splitlines()[0]}" for n, f in COMMANDS.items())
        )
        print("\n`... COMMAND CONFIG --help` lists a command's options.")
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{usage}", file=sys.stderr)
        raise SystemExit(2)
    if not rest or rest[0].startswith("-"):
        print(f"error: {command} needs a CONFIG file\n{usage}", file=sys.stderr)
        raise SystemExit(2)
    path, options = rest[0], rest[1:]
    try:
        spec = read_config(path)
        exp = experiment_from(spec, path)
    except (CliError, TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    auto_cli(
        COMMANDS[command],
        argv=options,
        args=(exp, spec),
        prog=f"python -m ptera.lab.experiments {command} {path}",
    )
