"""Metric-versus-step plots of runs (PNG through matplotlib's Agg backend, no display needed).

A *series* is ``(steps, values)``; a *panel* is one axis holding several labelled series:
``{"ylabel": str, "series": {label: (steps, values)}, "log": bool, "dashed": set of labels}``.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from threestudio_like.utils.atomic import atomic_path


def read_csv_columns(path: str | os.PathLike) -> dict[str, list[float]]:
    """The numeric columns of a CSV with a header (metrics.csv, curve.csv); blanks and text → nan."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(_number(value))
    return columns


def _number(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def mean_series(runs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs of series sampled at the same steps (cut to the shortest run).

    Returns (steps [S], mean [S], std [S]); std is 0 for a single run.
    """
    length = min(len(steps) for steps, _ in runs)
    steps = np.asarray(runs[0][0][:length], dtype=float)
    values = np.asarray([list(v[:length]) for _, v in runs], dtype=float)
    return steps, np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def plot_panels(path: str | os.PathLike, panels: Sequence[dict], title: str = "") -> Path:
    """One PNG with the panels side by side; a series with a std (3-tuple) gets a shaded band
    (except on log-scale panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, series in panel["series"].items():
            steps, values = np.asarray(series[0], dtype=float), np.asarray(series[1], dtype=float)
            style = "--" if label in panel.get("dashed", ()) else "-"
            marker = "o" if len(steps) < 8 else None  # a series of one or two points shows as dots
            line = ax.plot(steps, values, style, label=label, linewidth=1.4, marker=marker, markersize=4)[0]
            if len(series) > 2 and np.any(np.asarray(series[2]) > 0) and not panel.get("log"):  # mean − std may be ≤ 0
                std = np.asarray(series[2], dtype=float)
                ax.fill_between(steps, values - std, values + std, color=line.get_color(), alpha=0.15, linewidth=0)
        if panel.get("log"):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(panel["ylabel"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def loss_series(run_dir: str | os.PathLike, column: str = "loss") -> tuple[list[float], list[float]] | None:
    """(steps, |values|) of one metrics.csv column of a run, or None when the run logged none."""
    columns = read_csv_columns(Path(run_dir) / "metrics.csv")
    if column not in columns or "step" not in columns:
        return None
    return columns["step"], [abs(v) for v in columns[column]]
