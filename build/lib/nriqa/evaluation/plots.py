"""Evaluation plots for reports, DVC plots and MLflow artifacts.

Every function writes one PNG and returns its path. Two design choices:

* Figures are built with the object-oriented API (``Figure`` + the Agg
  canvas) rather than ``pyplot``. That needs no display, leaves the global
  backend alone for whoever imports us, and keeps no figure registry that
  could leak memory in a long-running process.
* Output is byte-for-byte reproducible: the PNG "Software" tag (which embeds
  the matplotlib version) is dropped and nothing time-dependent is written,
  so re-running a DVC stage on the same data does not produce a "changed"
  artifact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nriqa.core.metrics import fit_logistic, logistic_5, quality_metrics

__all__ = ["confusion_plot", "per_distortion_plot", "scatter_plot", "training_curves_plot"]

_DPI = 100
# No "Software" tag (varies with the matplotlib version) and no timestamps.
_PNG_METADATA = {"Software": None}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, metadata=_PNG_METADATA)
    return path


def scatter_plot(mos, pred, path, title: str = "Predicted vs. MOS") -> Path:
    """Scatter of predictions (x) against MOS (y) with the fitted VQEG logistic drawn over it.

    The legend carries SRCC and the logistic-mapped PLCC, the two numbers a
    reader looks for next to such a plot.
    """
    mos = np.asarray(mos, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    metrics = quality_metrics(mos, pred)
    params = fit_logistic(pred, mos)

    fig = _new_figure(6, 5)
    ax = fig.add_subplot()
    # Small, translucent markers: test sets have thousands of points.
    ax.scatter(pred, mos, s=8, alpha=0.4, edgecolors="none", label="images")
    grid = np.linspace(pred.min(), pred.max(), 200)
    ax.plot(
        grid,
        logistic_5(grid, *params),
        color="C3",
        linewidth=2,
        label=f"logistic fit (SRCC {metrics['srcc']:.3f}, PLCC {metrics['plcc_logistic']:.3f})",
    )
    ax.set_xlabel("predicted score")
    ax.set_ylabel("MOS")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def per_distortion_plot(series: Mapping[str, Mapping], path, title: str = "SRCC per distortion type") -> Path:
    """Grouped bar chart of SRCC per distortion type, one bar colour per series.

    ``series`` maps a label (e.g. ``"cnn"``, ``"baseline"``) to
    ``{distortion_type: srcc}``. Types are shown in order of first
    appearance across the series; a type missing from a series simply has no
    bar for it.
    """
    if not series:
        raise ValueError("per_distortion_plot needs at least one series.")
    types: list = []
    for values in series.values():
        types.extend(t for t in values if t not in types)

    n_series = len(series)
    width = 0.8 / n_series
    x = np.arange(len(types))
    fig = _new_figure(max(6.0, 0.45 * len(types) * max(1, n_series / 2) + 2), 4.5)
    ax = fig.add_subplot()
    for i, (label, values) in enumerate(series.items()):
        heights = [float(values.get(t, np.nan)) for t in types]
        ax.bar(x + (i - (n_series - 1) / 2) * width, heights, width=width, label=str(label))
    ax.set_xticks(x, [str(t) for t in types], rotation=60, ha="right")
    ax.set_ylabel("SRCC")
    ax.set_ylim(min(0.0, np.nanmin([v for s in series.values() for v in s.values()] or [0.0])) - 0.05, 1.0)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if n_series > 1:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def confusion_plot(confusion, labels: Sequence[str], path, title: str = "Quality categories",
                   truth: str = "true (MOS)") -> Path:
    """Confusion matrix heat map (rows: true class, columns: predicted), counts annotated."""
    matrix = np.asarray(confusion, dtype=np.int64)
    n = len(labels)
    if matrix.shape != (n, n):
        raise ValueError(f"Confusion matrix shape {matrix.shape} does not match {n} labels.")

    fig = _new_figure(min(1.1 * n + 2.5, 16), min(1.0 * n + 1.8, 15))  # 24 types stay legible
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            # White text on dark cells, black on light ones, so every count stays readable.
            colour = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour)
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel(truth)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def training_curves_plot(history: Mapping[str, Sequence[float]], path, title: str = "Training curves") -> Path:
    """One panel per metric with its training and validation curves (Keras ``History.history`` layout).

    Keys ``x`` and ``val_x`` share a panel; metrics are ordered by first
    appearance. Epochs are numbered from 1.
    """
    if not history:
        raise ValueError("training_curves_plot needs a non-empty history.")
    panels: dict[str, list[str]] = {}
    for key in history:
        base = key[4:] if key.startswith("val_") else key
        panels.setdefault(base, []).append(key)

    fig = _new_figure(4.5 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (base, keys) in zip(axes, panels.items()):
        for key in sorted(keys, key=lambda k: k.startswith("val_")):  # training first
            values = np.asarray(history[key], dtype=np.float64)
            epochs = np.arange(1, len(values) + 1)
            label = "validation" if key.startswith("val_") else "training"
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_title(base)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
