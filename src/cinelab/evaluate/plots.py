"""Small evaluation plots (matplotlib Agg canvas, no pyplot state), written atomically as PNG.

Every function takes arrays and an output path and returns the path. NaN pairs are left out;
an empty input still gives a figure that says "no data".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cinelab.evaluate.metrics import finite_pairs, regression_metrics
from cinelab.utils import atomic_path

FIGSIZE = (4.0, 4.0)
WIDE_FIGSIZE = (6.0, 3.0)
DPI = 100
POINT_SIZE = 8
POINT_ALPHA = 0.6
LIMITS_OF_AGREEMENT_SD = 1.96
ED_COLOR = "tab:red"
ES_COLOR = "tab:blue"
FONT_SIZE = 8


def _figure(size: tuple[float, float] = FIGSIZE) -> tuple[Figure, Any]:
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.tick_params(labelsize=FONT_SIZE)
    return fig, ax


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG atomically; return the path."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _title(ax: Any, title: str | None) -> None:
    if title:
        ax.set_title(title, fontsize=FONT_SIZE + 1)


def scatter_plot(y_true: Any, y_pred: Any, path: str | Path, label: str = "value",
                 title: str | None = None) -> Path:
    """Predicted vs. true with the identity line and MAE / R² in the corner."""
    t, p = finite_pairs(y_true=y_true, y_pred=y_pred)
    fig, ax = _figure()
    if len(t):
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle="--")
        ax.scatter(t, p, s=POINT_SIZE, alpha=POINT_ALPHA)
        m = regression_metrics(t, p)
        ax.text(0.03, 0.97, f"MAE {m['mae']:.2f}\nR² {m['r2']:.2f}\nn {m['n']}",
                transform=ax.transAxes, va="top", fontsize=FONT_SIZE)
    else:
        _no_data(ax)
    ax.set_xlabel(f"true {label}", fontsize=FONT_SIZE)
    ax.set_ylabel(f"predicted {label}", fontsize=FONT_SIZE)
    _title(ax, title)
    return _save(fig, path)


def residual_plot(y_true: Any, y_pred: Any, path: str | Path, label: str = "value",
                  title: str | None = None) -> Path:
    """Residual (predicted - true) against the true value, with the zero line."""
    t, p = finite_pairs(y_true=y_true, y_pred=y_pred)
    fig, ax = _figure()
    ax.axhline(0.0, color="grey", linewidth=1, linestyle="--")
    if len(t):
        ax.scatter(t, p - t, s=POINT_SIZE, alpha=POINT_ALPHA)
    else:
        _no_data(ax)
    ax.set_xlabel(f"true {label}", fontsize=FONT_SIZE)
    ax.set_ylabel(f"predicted - true {label}", fontsize=FONT_SIZE)
    _title(ax, title)
    return _save(fig, path)


def bland_altman_plot(a: Any, b: Any, path: str | Path,
                      labels: Sequence[str] = ("reference", "prediction"),
                      title: str | None = None) -> Path:
    """Difference (b - a) against the mean, with the bias and 1.96 SD limits of agreement."""
    x, y = finite_pairs(a=a, b=b)
    fig, ax = _figure()
    if len(x):
        mean, diff = (x + y) / 2.0, y - x
        ax.scatter(mean, diff, s=POINT_SIZE, alpha=POINT_ALPHA)
        bias = float(diff.mean())
        sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        ax.axhline(bias, color="black", linewidth=1, label=f"bias {bias:.2f}")
        for sign in (-1, 1):
            ax.axhline(bias + sign * LIMITS_OF_AGREEMENT_SD * sd, color="grey",
                       linewidth=1, linestyle="--")
        ax.legend(fontsize=FONT_SIZE, loc="upper right")
    else:
        _no_data(ax)
    ax.set_xlabel(f"mean of {labels[0]} and {labels[1]}", fontsize=FONT_SIZE)
    ax.set_ylabel(f"{labels[1]} - {labels[0]}", fontsize=FONT_SIZE)
    _title(ax, title)
    return _save(fig, path)


def roc_plot(curves: Mapping[str, tuple[Any, Any, float]], path: str | Path,
             title: str | None = None) -> Path:
    """ROC curves {name: (fpr, tpr, auc)} on one axis with the chance diagonal."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
    drawn = 0
    for name, (fpr, tpr, auc) in curves.items():
        fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
        if fpr.size and np.isfinite(fpr).all() and np.isfinite(tpr).all():
            ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
            drawn += 1
    if drawn:
        ax.legend(fontsize=FONT_SIZE, loc="lower right")
    else:
        _no_data(ax)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity", fontsize=FONT_SIZE)
    ax.set_ylabel("sensitivity", fontsize=FONT_SIZE)
    _title(ax, title)
    return _save(fig, path)


def area_curve_plot(area: Any, ed_frames: Sequence[int], es_frames: Sequence[int],
                    path: str | Path, title: str | None = None) -> Path:
    """Area per frame with ED (red) and ES (blue) frames marked."""
    values = np.asarray(area, dtype=float)
    fig, ax = _figure(WIDE_FIGSIZE)
    if values.size:
        frames = np.arange(values.size)
        ax.plot(frames, values, color="black", linewidth=1)
        for marks, color, name in ((ed_frames, ED_COLOR, "ED"), (es_frames, ES_COLOR, "ES")):
            idx = [int(f) for f in marks if 0 <= int(f) < values.size]
            ax.scatter(idx, values[idx], color=color, s=POINT_SIZE * 3, zorder=3, label=name)
        ax.legend(fontsize=FONT_SIZE, loc="upper right")
    else:
        _no_data(ax)
    ax.set_xlabel("frame", fontsize=FONT_SIZE)
    ax.set_ylabel("area (pixels)", fontsize=FONT_SIZE)
    _title(ax, title)
    return _save(fig, path)
