"""The command line of config runs (the seed's scripts, one command each).

``train`` trains every run of the configuration (resuming, skipping finished
ones); ``extract`` and ``probe`` train what is missing, then extract latents /
fit probes; ``receptive-field`` writes each run's receptive fields. A bad
configuration fails before anything runs, with the key named, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from .engine import Runs

__all__ = ["main"]

COMMANDS = ("train", "extract", "probe", "receptive-field")


def _downsampling(text: str):
    if text in ("pixelwise", "none"):
        return None if text == "none" else text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a positive int, 'pixelwise' or 'none', not {text!r}"
        ) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ptera.lab.runs", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--config", required=True, help="the JSON configuration")
    p.add_argument("--run-id", required=True, help="runs under one id resume and reuse each other")
    p.add_argument("--device", default=None, help="overrides the configuration's device")
    p.add_argument(
        "--processes", "-mp", type=int, default=None, help="trials (and probes) side by side"
    )
    p.add_argument("--ray", action="store_true", help="run the trials on Ray")
    p.add_argument(
        "--downsampling", "-d", type=_downsampling, default=None,
        help="latent maps pooled to DxD, 'pixelwise' or 'none' (default: the configuration's)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        runs = Runs(args.config, args.run_id, device=args.device)
        if args.command != "receptive-field":
            runs.plan()  # every experiment built and checked before anything trains
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verbose = not args.quiet
    executor = "ray" if args.ray else None
    if verbose:
        print(f"{len(runs)} runs from {args.config} under run id {args.run_id!r}", flush=True)
    if args.command == "train":
        runs.train(executor, args.processes, verbose)
    elif args.command == "extract":
        runs.extract(args.downsampling, executor, args.processes, verbose)
    elif args.command == "probe":
        runs.probe(args.downsampling, executor, args.processes, verbose)
    else:
        runs.receptive_field(verbose)
    return 0
