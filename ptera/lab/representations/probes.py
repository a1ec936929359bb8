"""Linear probes: a logistic regression per layer on extracted latents.

``train_probes(folder)`` fits scikit-learn's ``LogisticRegression`` on each
layer's train latents (``extract_latents(..., split="train")``), scores it on the
eval latents, and writes ``probe_performance.csv`` in layer order.

Decisions:

* Layer order is the manifest's (the model's), whatever order the parallel fits
  end in: the seed's probe file came out of order on some platforms.
* Features are standardized (``StandardScaler``) before the regression, so one
  ``max_iter`` suits latents of any scale.
* A probe's result is cached under the SHA-256 of its four files (train and eval
  latents and labels) and its settings, as a small JSON file: a rerun, or a run
  after a crash, refits only what has no result yet. The cache holds numbers,
  never a pickled estimator.
* Fits run in parallel over layers with joblib (``n_jobs``, joblib's meaning:
  ``None`` is one process, ``-1`` every core), each with one BLAS thread.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .latents import load_manifest

__all__ = ["PROBE_FILE", "train_probes"]

PROBE_FILE = "probe_performance.csv"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load(folder: Path, layer: dict, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.load(folder / layer["file"], allow_pickle=False, mmap_mode="r")
    y = np.load(folder / labels, allow_pickle=False)
    return np.asarray(x), np.repeat(y, layer["positions"])


def _fit(
    folder: str, train: dict, evaluation: dict, labels: tuple, options: dict, cached: str
) -> dict:
    """Fit one probe; its train and eval accuracies, also written to ``cached`` (JSON)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    where = Path(folder)
    xt, yt = _load(where, train, labels[0])
    xe, ye = _load(where, evaluation, labels[1])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=options["max_iter"]))
    from threadpoolctl import threadpool_limits

    # One BLAS thread per fit: parallelism is over layers, and a BLAS pool per
    # worker on a busy machine made a 0.2 s fit take 8 s.
    with threadpool_limits(1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(xt, yt)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    result = {
        "train_accuracy": float(probe.score(xt, yt)),
        "eval_accuracy": float(probe.score(xe, ye)),
        "converged": converged,
    }
    # Written by the worker as soon as it is done: a crash later keeps this fit.
    tmp = Path(cached + f".{os.getpid()}.partial")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, cached)
    return result


def train_probes(
    folder: str | os.PathLike,
    n_jobs: int | None = None,
    out: str | os.PathLike | None = None,
    train_split: str = "train",
    eval_split: str = "eval",
    max_iter: int = 1000,
    cache: str | os.PathLike | None = None,
) -> Any:
    """Fit a probe per layer of ``folder``'s latents (cached); a DataFrame
    ``layer, train_accuracy, eval_accuracy, converged``, also written to ``out``
    (default ``folder/probe_performance.csv``). ``frame.attrs["fitted"]`` lists the
    layers fitted by this call (the rest came from the cache)."""
    import pandas as pd
    from joblib import Parallel, delayed

    folder = Path(folder)
    manifest = load_manifest(folder)
    splits = manifest.get("splits", {})
    for split in (train_split, eval_split):
        if split not in splits:
            raise FileNotFoundError(
                f"{folder} has no {split!r} latents: run extract_latents(..., split={split!r})"
            )
        if "labels" not in splits[split]:
            raise ValueError(f"the {split!r} latents in {folder} were extracted without labels")
    train, evaluation = splits[train_split], splits[eval_split]
    layers = [name for name in train["layers"] if name in evaluation["layers"]]
    if not layers:
        raise ValueError(f"no layer has both {train_split!r} and {eval_split!r} latents")
    labels = (train["labels"], evaluation["labels"])
    options = {"max_iter": max_iter, "model": "StandardScaler+LogisticRegression"}
    cache_dir = Path(cache) if cache is not None else folder / ".probe_cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    keys, results = {}, {}
    for name in layers:
        t, e = train["layers"][name], evaluation["layers"][name]
        h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
        for f in (t["file"], e["file"], *labels):
            h.update(_file_hash(folder / f).encode())
        h.update(f"{t['positions']},{e['positions']}".encode())
        keys[name] = h.hexdigest()[:32]
        cached = cache_dir / f"{keys[name]}.json"
        if cached.exists():
            results[name] = json.loads(cached.read_text())
    todo = [name for name in layers if name not in results]
    fitted = Parallel(n_jobs=n_jobs)(
        delayed(_fit)(
            str(folder),
            train["layers"][n],
            evaluation["layers"][n],
            labels,
            options,
            str(cache_dir / f"{keys[n]}.json"),
        )
        for n in todo
    )
    results.update(zip(todo, fitted))
    frame = pd.DataFrame(
        [{"layer": name, **results[name]} for name in layers],
        columns=["layer", "train_accuracy", "eval_accuracy", "converged"],
    )
    frame.attrs["fitted"] = todo
    frame.to_csv(out if out is not None else folder / PROBE_FILE, index=False)
    return frame
