"""Probes on latents already extracted: the seed's ``train_probes.py``.

``probe_latents(config)`` finds, under the latents folder, the extractions of the
configuration's runs and fits their probes; it never trains or extracts (``Runs.probe``
does all three). Each result goes to the log folder of the run the latents came from,
as the seed's ``model_pointer.txt`` says where that is.

Decisions:

* An extraction belongs to a run when its manifest's checkpoint is that run's
  (``logs_dir/Model/Dataset_resolution/<run id>/<run>.pt``): the run id is read
  from there, so without ``run_id`` every run id's latents are probed.
* The resolution is the manifest's; ``downsampling`` keeps only those asked for.
* Finding nothing to probe is an error naming the folder, not an empty success.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..representations.latents import MANIFEST, load_manifest
from ..representations.probes import train_probes
from .config import expand, load_config

__all__ = ["probe_latents"]


def probe_latents(
    config: dict | str | os.PathLike,
    run_id: str | None = None,
    downsampling: Any = None,
    prefix: str | None = None,
    latents_dir: str | os.PathLike | None = None,
    processes: int | None = None,
    verbose: bool = True,
) -> list[Any]:
    """Fit the probes of every extraction of ``config``'s runs under ``latents_dir``
    (default: the configuration's), optionally only ``run_id``'s and only the
    resolutions in ``downsampling`` (one value or a list); each frame is also written
    to ``Run.probe_file`` in the run's log folder. Returns the frames, in folder order."""
    cfg = load_config(config)
    root = Path(cfg["latents_dir"] if latents_dir is None else latents_dir)
    wanted = None
    if downsampling is not None:
        wanted = list(downsampling) if isinstance(downsampling, (list, tuple)) else [downsampling]
    runs = {}
    for run in expand(cfg):
        runs[(run.folder("_").parent, f"{run.name}.pt")] = run
    frames = []
    folders = sorted(p.parent for p in root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
    for folder in folders:
        manifest = load_manifest(folder)
        checkpoint = manifest.get("checkpoint")
        splits = manifest.get("splits", {})
        if checkpoint is None or not {"train", "eval"} <= set(splits):
            continue
        checkpoint = Path(checkpoint)
        run = runs.get((checkpoint.parent.parent, checkpoint.name))
        found_id = checkpoint.parent.name
        d = splits["train"].get("downsampling")
        if run is None or (run_id is not None and found_id != run_id):
            continue
        if wanted is not None and d not in wanted:
            continue
        out = run.probe_file(found_id, d, prefix)
        out.parent.mkdir(parents=True, exist_ok=True)
        frames.append(train_probes(folder, n_jobs=processes, out=out))
        if verbose:
            print(f"{run.name} ({found_id}, d={d}): probes written to {out}", flush=True)
    if not frames:
        which = f" under run id {run_id!r}" if run_id is not None else ""
        resolutions = f" at downsampling {wanted}" if wanted is not None else ""
        raise FileNotFoundError(
            f"no latents of this configuration's runs{which}{resolutions} in {root}:"
            " extract them first (python -m ptera.lab.runs extract --config ... --run-id ...)"
        )
    return frames
