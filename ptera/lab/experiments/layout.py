"""An experiment's grid as plain data: what ``status``, ``results`` and plots need.

``run`` records the layout in the store, under the experiment's key, with the
number of epochs it was run to; ``status`` and ``plot`` of the command line then
work from the store alone, without importing or calling anything a config names.

Decisions:

* A layout is JSON: per grid position its trial id, variation and condition
  labels, and its result cells (parameters as numbers or text).
* The Python API computes the same layout from its plans, so a DataFrame from
  the store and one from the live experiment are the same.
"""

from __future__ import annotations

from typing import Any

__all__ = ["results_frame", "status_rows"]

STATES = ("done", "partial", "pending", "failed", "diverged")


def status_rows(store: Any, layout: list[dict], n_epochs: int) -> list[dict]:
    """One row per trial: id, labels, epochs done and its state (one of ``STATES``)."""
    trials = list(dict.fromkeys(p["trial"] for p in layout))
    first = {}
    for p in layout:
        first.setdefault(p["trial"], p)
    epochs = store.epochs(trials)
    errors = store.errors()
    diverged = store.diverged()
    rows = []
    for trial in trials:
        done = epochs[trial]
        state = "pending" if done < 0 else "done" if done >= n_epochs else "partial"
        if state != "done" and trial in errors:
            state = "failed"
        elif trial in diverged:
            state = "diverged"
        rows.append(
            {
                "trial": trial,
                "variation": first[trial]["variation"],
                "condition": first[trial]["condition"],
                "epochs": max(done, 0),
                "state": state,
            }
        )
    return rows


def results_frame(store: Any, layout: list[dict]) -> Any:
    """Every metric of every grid position as a long pandas DataFrame.

    Columns: ``trial``, ``variation``, ``condition``, the parameters (in the
    order the grid introduces them), ``epoch``, ``split``, ``metric``, ``value``.
    """
    import pandas as pd

    by_trial: dict[str, list] = {}
    for trial, epoch, split, name, value in store.metrics(p["trial"] for p in layout):
        by_trial.setdefault(trial, []).append((epoch, split, name, value))
    params = columns(layout)
    records = []
    for p in layout:
        info = {
            "trial": p["trial"],
            "variation": p["variation"],
            "condition": p["condition"],
            **dict.fromkeys(params),
            **p["cells"],
        }
        for epoch, split, name, value in by_trial.get(p["trial"], ()):
            records.append({**info, "epoch": epoch, "split": split, "metric": name, "value": value})
    names = ["trial", "variation", "condition", *params, "epoch", "split", "metric", "value"]
    return pd.DataFrame.from_records(records, columns=names)


def columns(layout: list[dict]) -> list[str]:
    """Variation parameters, then ``intervention``, then the interventions' parameters."""
    cols: dict[str, None] = {}
    for p in layout:
        cols.update(dict.fromkeys(p["variation_keys"]))
    cols["intervention"] = None
    for p in layout:
        cols.update(dict.fromkeys(k for k in p["cells"] if k not in p["variation_keys"]))
    return list(cols)
