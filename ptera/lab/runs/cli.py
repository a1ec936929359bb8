"""The command line of config runs (the seed's scripts, one command each).

``train`` trains every run of the configuration (resuming, skipping finished
ones); ``extract`` and ``probe`` train what is missing, then extract latents /
fit probes; ``train-probes`` fits probes on latents already extracted (no
training); ``receptive-field`` writes each run's receptive fields. A bad
configuration fails before anything runs, with the key named, and exit status 2.

Decisions:

* The seed's spellings are accepted: its script names as commands
  (``train_model``, ``extract_latent_representations``, ``compute_receptive_field``,
  ``probe_meta_execution_script``, ``pixelwise_probe_meta_execution_script`` (probes at
  ``-d pixelwise``), ``train_probes``, with or without ``.py``), ``--downsample`` and
  ``--downsampling`` for ``-d``, ``-f`` for the latents folder, ``--prefix``.
* ``-d`` may be given several times: each resolution gets its own latents and its
  own probe results.
* An option a command does not use is an error, not ignored: ``-d``, ``-f`` only
  where latents are read or written, ``--prefix`` only where probe results are,
  ``--ray`` only where trials train, ``--device`` not for ``train-probes``
  (scikit-learn, on the CPU), ``-mp`` not for ``receptive-field``.
"""

from __future__ import annotations

import argparse
import sys

from .engine import Runs
from .probing import probe_latents

__all__ = ["main"]

COMMANDS = ("train", "extract", "probe", "train-probes", "receptive-field")
# The seed's script names: (command, default -d).
SCRIPTS = {
    "train_model": ("train", None),
    "extract_latent_representations": ("extract", None),
    "compute_receptive_field": ("receptive-field", None),
    "probe_meta_execution_script": ("probe", None),
    "probes_meta_execution_script": ("probe", None),
    "pixelwise_probe_meta_execution_script": ("probe", "pixelwise"),
    "train_probes": ("train-probes", None),
}
LATENTS = ("extract", "probe", "train-probes")
PROBES = ("probe", "train-probes")
TRAINING = ("train", "extract", "probe")  # the commands that train what is missing
TRAINED = (*TRAINING, "receptive-field")  # the commands that build the runs' models


def _downsampling(text: str):
    if text in ("pixelwise", "none"):
        return None if text == "none" else text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive int, 'pixelwise' or 'none', not {text!r}")
    return value


def _command(text: str) -> str:
    name = text.removesuffix(".py")
    if name in COMMANDS or name in SCRIPTS:
        return name
    if name == "infer_with_altering_delta":
        raise argparse.ArgumentTypeError(
            "the seed's infer_with_altering_delta is not a command here: evaluate a trained"
            " run with ptera.lab.representations.saturation(model, data, delta=...) per delta"
        )
    raise argparse.ArgumentTypeError(
        f"unknown command {text!r} (commands: {', '.join(COMMANDS)};"
        f" the seed's scripts: {', '.join(SCRIPTS)})"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ptera.lab.runs", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("command", type=_command, metavar="{" + ",".join(COMMANDS) + "}")
    p.add_argument("--config", required=True, help="the JSON configuration")
    p.add_argument(
        "--run-id", default=None,
        help="runs under one id resume and reuse each other (train-probes: only this id's)",
    )  # fmt: skip
    p.add_argument("--device", default=None, help="overrides the configuration's device")
    p.add_argument(
        "--processes", "-mp", type=int, default=None, help="trials (and probes) side by side"
    )
    p.add_argument("--ray", action="store_true", help="run the trials on Ray")
    p.add_argument(
        "-d", "--downsampling", "--downsample", type=_downsampling, action="append",
        dest="downsampling", default=None, metavar="D",
        help="latent maps pooled to DxD, 'pixelwise' or 'none'; repeat for several"
        " resolutions (default: the configuration's)",
    )  # fmt: skip
    p.add_argument(
        "-f", "--latents-dir", default=None, metavar="DIR",
        help="the latents' root folder (default: the configuration's latents_dir)",
    )  # fmt: skip
    p.add_argument(
        "--prefix", default=None,
        help="probe results are written as PREFIX_<run>_d<D>_probe_performance.csv",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    return p


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    command, default_d = SCRIPTS.get(args.command, (args.command, None))
    used = [
        ("-d/--downsampling", args.downsampling is not None, LATENTS),
        ("-f/--latents-dir", args.latents_dir is not None, LATENTS),
        ("--prefix", args.prefix is not None, PROBES),
        ("--device", args.device is not None, TRAINED),
        ("--ray", args.ray, TRAINING),
        ("-mp/--processes", args.processes is not None, (*TRAINING, "train-probes")),
    ]
    for option, given, commands in used:
        if given and command not in commands:
            p.error(f"{option} is for {', '.join(commands)}, not {args.command}")
    if args.downsampling is None and default_d is not None:
        args.downsampling = [default_d]
    if args.prefix is not None and (not args.prefix or "/" in args.prefix):
        p.error(f"--prefix must be a non-empty file-name part without '/', got {args.prefix!r}")
    if args.run_id is None and command != "train-probes":
        p.error(f"{args.command} needs --run-id")
    args.command = command
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    verbose = not args.quiet
    if args.command == "train-probes":
        try:
            probe_latents(
                args.config, args.run_id, args.downsampling, args.prefix,
                args.latents_dir, args.processes, verbose,
            )  # fmt: skip
        except (ValueError, TypeError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        runs = Runs(args.config, args.run_id, device=args.device, latents_dir=args.latents_dir)
        if args.command != "receptive-field":
            runs.plan()  # every experiment built and checked before anything trains
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    executor = "ray" if args.ray else None
    if verbose:
        print(f"{len(runs)} runs from {args.config} under run id {args.run_id!r}", flush=True)
    if args.command == "train":
        runs.train(executor, args.processes, verbose)
    elif args.command == "extract":
        runs.extract(args.downsampling, executor, args.processes, verbose)
    elif args.command == "probe":
        runs.probe(args.downsampling, executor, args.processes, verbose, prefix=args.prefix)
    else:
        runs.receptive_field(verbose)
    return 0
