"""Plots of an experiment's results: one PNG per metric, one colour per condition.

Decisions:

* A *condition* is everything that is not averaged over. ``average_over`` names
  parameters: ``"seed_weights"`` matches that column and
  ``intervention.seed_weights``; a name also matches the parameters it prefixes
  (``"seed"`` matches ``seed_weights`` and ``seed_shuffle``). A name that matches
  nothing is an error listing the parameters.
* Each condition is drawn as its mean over the averaged trials, with a band:
  min-max (default) or one standard deviation (``band="std"``).
* Drawn with matplotlib's object API on an Agg canvas: no display, and the
  caller's pyplot backend is left alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Plotter"]

FIXED = ("trial", "variation", "condition", "epoch", "split", "metric", "value")


class Plotter:
    """Mean and band over ``average_over``, per condition, one PNG per metric."""

    def __init__(self, average_over: Iterable[str] = (), band: str = "minmax", dpi: int = 110):
        if isinstance(average_over, str):
            average_over = (average_over,)
        self.average_over = tuple(average_over)
        if band not in ("minmax", "std"):
            raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
        self.band, self.dpi = band, dpi

    def averaged(self, columns: Iterable[str]) -> list[str]:
        """The parameter columns that ``average_over`` names."""
        params = [c for c in columns if c not in FIXED]
        out = []
        for name in self.average_over:
            hits = [
                c
                for c in params
                if c.removeprefix("intervention.") == name
                or c.removeprefix("intervention.").startswith(name + "_")
            ]
            if not hits:
                raise ValueError(
                    f"Plotter(average_over=...): {name!r} names no parameter of this"
                    f" experiment (parameters: {', '.join(params) or 'none'})"
                )
            out += [h for h in hits if h not in out]
        return out

    def plot(self, results: Any, out_dir: str | os.PathLike) -> list[Path]:
        """Write ``<split>_<metric>.png`` for each metric of ``results``; returns the paths."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if results.empty:
            return []
        averaged = self.averaged(results.columns)
        params = [c for c in results.columns if c not in FIXED and c not in averaged]
        shown = [c for c in params if results[c].map(_fmt).nunique(dropna=False) > 1]
        df = results.copy()
        df["_condition"] = _labels(df, shown)
        conditions = list(dict.fromkeys(df["_condition"]))
        colours = _colours(len(conditions))
        paths = []
        for (split, metric), frame in df.groupby(["split", "metric"], sort=True):
            fig = Figure(figsize=(7.5, 4.5), dpi=self.dpi)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            for cond, colour in zip(conditions, colours):
                rows = frame[frame["_condition"] == cond]
                if rows.empty:
                    continue
                table = rows.pivot_table(index="epoch", columns="trial", values="value")
                mean = table.mean(axis=1)
                if self.band == "std":
                    std = table.std(axis=1, ddof=0)
                    low, high = mean - std, mean + std
                else:
                    low, high = table.min(axis=1), table.max(axis=1)
                n = table.shape[1]
                ax.plot(mean.index, mean.values, color=colour, label=f"{cond} (n={n})", lw=1.6)
                if n > 1:
                    ax.fill_between(mean.index, low.values, high.values, color=colour, alpha=0.2)
            name = f"{split} {metric}".strip()
            ax.set_title(
                name + (f" (mean, {self.band} over {', '.join(averaged)})" if averaged else "")
            )
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if len(conditions) <= 12:
                ax.legend(fontsize=7, loc="best")
            else:
                ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
            fig.tight_layout()
            path = out / (_slug(f"{split}_{metric}" if split else metric) + ".png")
            fig.savefig(path)
            paths.append(path)
        return paths


def _labels(df: Any, shown: list[str]) -> list[str]:
    out = []
    for row in df[shown].itertuples(index=False, name=None):
        parts = [
            f"{c.removeprefix('intervention.')}={_fmt(v)}"
            for c, v in zip(shown, row)
            if _fmt(v) is not None
        ]
        out.append(", ".join(p.removeprefix("intervention=") for p in parts) or "all")
    return out


def _fmt(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "metric"
