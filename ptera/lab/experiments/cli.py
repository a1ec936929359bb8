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

Decisions:

* A config is as trusted as a script: ``run`` imports what it names and calls it.
  It names code only by explicit ``package.module:attr`` paths or registered
  names (torch's optimizers and losses, the intervention types); nothing in it
  is evaluated. ``status`` and ``plot`` import and call nothing the config
  names: they read the store, where ``run`` recorded the experiment's grid and
  the epochs it was run to, under a key derived from the config's contents.
* The options are few and fixed, so the parser is ``argparse`` (not ``auto_cli``,
  whose ``--config`` would compete with the positional CONFIG); bad values are
  ``error: ...`` and exit status 2, like a bad config.
* Ctrl-C (SIGINT) stops a run within seconds: pending trials are cancelled,
  workers terminated, committed epochs kept; one line says how to resume, and
  the exit status is 130.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from ...cli import CliError, read_config
from . import interventions as iv
from .experiment import Experiment
from .layout import STATES, results_frame, status_rows
from .plotter import Plotter
from .store import Store

__all__ = ["experiment_from", "main", "resolved"]

KEYS = {
    "model": "import path of the model class or factory",
    "model_args": "keyword arguments of the model",
    "datasets": "import path of a function returning (train_set, test_set)",
    "datasets_args": "keyword arguments of that function",
    "variations": "list of intervention tables (type = ...), multiplied",
    "interventions": "list of intervention tables, each run against the control",
    "metrics": "import path of a Metrics class",
    "callbacks": "import path of a function (or class) returning each trial's Learner callbacks",
    "callbacks_args": "keyword arguments of that function",
    "plotter": "table of Plotter arguments",
    "store": "SQLite file of the experiment",
    "n_epochs": "epochs each trial trains",
    "processes": "worker processes",
    "executor": "serial, processes, ray or batched",
    "optimizer": "import path (or torch name) of the optimizer class",
    "lr": "learning rate",
    "hyperparameters": "table of other optimizer options",
    "batch_size": "training batch size",
    "loss_fn": "import path (or torch name) of the loss function",
    "seed_weights": "seed of the initial weights",
    "seed_shuffle": "seed of the batch order",
}

# What a config means when it leaves a key out (``--dump-config`` writes them).
DEFAULTS = {
    "model_args": {},
    "datasets_args": {},
    "variations": [],
    "interventions": [],
    "metrics": "ptera.lab.experiments:Metrics",
    "plotter": {},
    "n_epochs": 1,
    "processes": 1,
    "optimizer": "SGD",
    "lr": 0.01,
    "hyperparameters": {},
    "batch_size": 64,
    "loss_fn": "cross_entropy",
    "seed_weights": 0,
    "seed_shuffle": 0,
}
RUN_ONLY = ("n_epochs", "processes", "executor", "plotter", "store")  # not the experiment's key
EXECUTORS = ("serial", "processes", "ray", "batched")

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


def resolved(spec: dict, path: str) -> dict:
    """The whole experiment a config describes: its keys, defaults filled in, checked.

    Nothing is imported: names stay text. The store becomes an absolute path.
    """
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        known = "\n".join(f"  {k}: {v}" for k, v in KEYS.items())
        raise CliError(f"{path}: unknown key(s) {', '.join(unknown)}; the keys are:\n{known}")
    for key in ("model", "datasets"):
        if key not in spec:
            raise CliError(f"{path}: missing '{key}' ({KEYS[key]})")
    out = {**DEFAULTS, **spec}
    store = Path(spec.get("store", Path(path).stem + ".db"))
    out["store"] = str(store if store.is_absolute() else Path(path).resolve().parent / store)
    for key, minimum in (("n_epochs", 0), ("processes", 1)):
        try:
            out[key] = _count(minimum)(out[key])
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"{path}: {key}: {exc}") from None
    if "executor" not in out:  # as Experiment.run chooses
        out["executor"] = "processes" if out["processes"] > 1 else "serial"
    if out["executor"] not in EXECUTORS:
        raise CliError(
            f"{path}: executor must be one of {', '.join(EXECUTORS)}, got {out['executor']!r}"
        )
    if out["processes"] > 1 and out["executor"] not in ("processes", "ray"):
        raise CliError(
            f"{path}: processes = {out['processes']} with executor {out['executor']!r}, which"
            " runs in this process: use executor 'processes' (or leave it out), or processes = 1"
        )
    return dict(sorted(out.items()))


def experiment_key(full: dict) -> str:
    """The key ``run`` records the experiment under: a hash of what defines its trials."""
    defining = {k: v for k, v in full.items() if k not in RUN_ONLY}
    text = json.dumps(defining, sort_keys=True, default=repr)
    return "config:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def experiment_from(spec: dict, path: str) -> Experiment:
    """Build the ``Experiment`` a config describes (errors name the key at fault).

    This imports and calls what the config names: a config is as trusted as a script.
    """
    full = resolved(spec, path)
    folder = Path(path).resolve().parent
    for p in (str(folder), os.getcwd()):
        if p not in sys.path:
            sys.path.insert(0, p)
    model = _import(full["model"], "model", path)(**full["model_args"])
    datasets = _import(full["datasets"], "datasets", path)(**full["datasets_args"])
    settings: dict[str, Any] = {
        k: full[k] for k in ("lr", "batch_size", "seed_weights", "seed_shuffle", "hyperparameters")
    }
    for key in ("optimizer", "loss_fn"):
        settings[key] = _import(full[key], key, path)
    if "callbacks_args" in full and "callbacks" not in full:
        raise CliError(f"{path}: 'callbacks_args' without 'callbacks' ({KEYS['callbacks']})")
    if "callbacks" in full:
        factory = _import(full["callbacks"], "callbacks", path)
        args = full.get("callbacks_args", {})
        if not isinstance(args, dict):
            raise CliError(f"{path}: 'callbacks_args' must be a table of keyword arguments")
        settings["callbacks"] = functools.partial(factory, **args) if args else factory
    try:
        plotter = Plotter(**full["plotter"])
    except (TypeError, ValueError) as exc:
        raise CliError(f"{path}: plotter: {exc}") from None
    return Experiment(
        model=model,
        datasets=datasets,
        variations=_axes(full, "variations", path),
        interventions=_axes(full, "interventions", path),
        metrics=_import(full["metrics"], "metrics", path)(),
        plotter=plotter,
        store=full["store"],
        name=experiment_key(full),
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


# -- the commands -----------------------------------------------------------------------
def run(ns: argparse.Namespace, spec: dict) -> None:
    """Train every trial of the experiment (finished ones are skipped, partial ones resumed)."""
    for key in ("n_epochs", "processes", "executor"):
        if getattr(ns, key) is not None:
            spec = {**spec, key: getattr(ns, key)}
    if ns.dump_config == "json":
        print(json.dumps(resolved(spec, ns.config), indent=2))
        return
    if ns.dump_config:
        print(to_toml(resolved(spec, ns.config)), end="")
        return
    exp = experiment_from(spec, ns.config)
    full = resolved(spec, ns.config)
    n_epochs = full["n_epochs"]
    try:
        exp.run(n_epochs, executor=full["executor"], processes=full["processes"])
    except KeyboardInterrupt:
        print(
            f"interrupted: epochs already committed are kept in {exp.store.path};"
            " run the same command again to resume",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    show_status(exp.status(n_epochs), exp.store.path, n_epochs)
    if ns.plot:
        for p in exp.plot():
            print(p)


def _recorded(spec: dict, path: str) -> tuple[Store, list[dict], int]:
    """The store of a config and the grid ``run`` recorded there; imports nothing."""
    full = resolved(spec, path)
    try:
        store = Store.existing(full["store"])
    except FileNotFoundError as exc:
        raise _Missing(f"{exc}; `run` {path} first") from None
    record = store.experiment(experiment_key(full))
    if record is None:
        raise _Missing(
            f"{store.path} has no run of {path} as it reads now (never run, or edited"
            " since): `run` it first"
        )
    return store, *record


def status(ns: argparse.Namespace, spec: dict) -> None:
    """Show every trial: done, partial, pending, failed or diverged (reads the store only)."""
    store, layout, target = _recorded(spec, ns.config)
    n_epochs = target if ns.n_epochs is None else ns.n_epochs
    show_status(status_rows(store, layout, n_epochs), store.path, n_epochs)


def plot(ns: argparse.Namespace, spec: dict) -> None:
    """Write one PNG per metric (reads the store only)."""
    store, layout, _ = _recorded(spec, ns.config)
    try:
        plotter = Plotter(**spec.get("plotter", {}))
    except (TypeError, ValueError) as exc:
        raise CliError(f"{ns.config}: plotter: {exc}") from None
    out = Path(ns.out) if ns.out else store.path.with_name(store.path.stem + ".plots")
    for p in plotter.plot(results_frame(store, layout), out):
        print(p)


COMMANDS = {"run": run, "status": status, "plot": plot}


class _Missing(Exception):
    """Nothing to show: no store, or no run of this config in it (exit status 1)."""


def show_status(rows: list[dict], store: Path, n_epochs: int) -> None:
    """The status table and the count of trials in each state."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{store.name}: {len(rows)} trials, target {n_epochs} epochs")
    for col in ("trial", "variation", "condition", "epochs", "state"):
        table.add_column(col, justify="right" if col == "epochs" else "left")
    colour = dict(zip(STATES, ("green", "yellow", "blue", "red", "magenta")))
    for r in rows:
        s = r["state"]
        table.add_row(
            r["trial"], r["variation"], r["condition"], str(r["epochs"]), f"[{colour[s]}]{s}"
        )
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()))


# -- the parser -------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _count(minimum: int):
    def parse(value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, (bool, float)) or number < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value!r}")
        return number

    parse.__name__ = f"integer >= {minimum}"
    return parse


def parser() -> argparse.ArgumentParser:
    """The command line (``--help`` needs no CONFIG)."""
    top = _Parser(
        prog="python -m ptera.lab.experiments",
        description="Experiments from a config file (TOML, YAML or JSON).",
        epilog="`... COMMAND --help` lists a command's options.",
    )
    sub = top.add_subparsers(
        dest="command", metavar="{run,status,plot}", required=True, parser_class=_Parser
    )
    config = dict(metavar="CONFIG", help="the experiment's .toml, .yaml or .json file")
    p = sub.add_parser("run", help=run.__doc__, description=run.__doc__)
    p.add_argument("config", **config)
    p.add_argument(
        "--n-epochs",
        type=_count(0),
        metavar="N",
        help="epochs each trial trains to (default: the config's n_epochs, else 1)",
    )
    p.add_argument(
        "--processes",
        type=_count(1),
        metavar="N",
        help="worker processes; 1 runs trials in this process (default: the config's, else 1)",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="where trials run (default: the config's executor, else serial; processes"
        " when --processes > 1)",
    )
    p.add_argument("--plot", action="store_true", help="write the plots when done")
    p.add_argument(
        "--dump-config",
        nargs="?",
        const="toml",
        choices=("toml", "json"),
        help="print the whole resolved experiment (every key, defaults filled in) and exit",
    )
    p = sub.add_parser("status", help=status.__doc__, description=status.__doc__)
    p.add_argument("config", **config)
    p.add_argument(
        "--n-epochs",
        type=_count(0),
        metavar="N",
        help="epochs a trial needs to count as done (default: what it was last run to)",
    )
    p = sub.add_parser("plot", help=plot.__doc__, description=plot.__doc__)
    p.add_argument("config", **config)
    p.add_argument("--out", metavar="DIR", help="folder of the PNGs (default: next to the store)")
    return top


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m ptera.lab.experiments``."""
    ns = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        spec = read_config(ns.config)
        COMMANDS[ns.command](ns, spec)
    except (CliError, TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except _Missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


# -- dumping ----------------------------------------------------------------------------
def to_toml(config: dict) -> str:
    """``config`` as TOML: keys with values (inline tables too), then tables of lists
    (``[plotter]``), then arrays of tables (``[[interventions]]``)."""

    def entries(table: dict) -> list[str]:
        return [f"{_key(k)} = {_value(v)}" for k, v in table.items()]

    tables = {k: v for k, v in config.items() if isinstance(v, dict) and _nested(v)}
    arrays = {k: v for k, v in config.items() if _is_tables(v)}
    lines = entries({k: v for k, v in config.items() if k not in tables and k not in arrays})
    for k, v in tables.items():
        lines += ["", f"[{_key(k)}]", *entries(v)]
    for k, v in arrays.items():
        for table in v:
            lines += ["", f"[[{_key(k)}]]", *entries(table)]
    return "\n".join(lines) + "\n"


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, dict) for t in value)


def _nested(table: dict) -> bool:
    return any(isinstance(v, (dict, list)) for v in table.values())


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    return '"' + re.sub(r'["\\\x00-\x1f\x7f]', lambda m: f"\\u{ord(m.group()):04x}", text) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise CliError(f"cannot write {value!r} ({type(value).__name__}) to a TOML config")
