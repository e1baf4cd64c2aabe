"""How far to trust predictions: interval coverage, probability calibration, OOD flag rates.

* `interval_coverage`           fraction of truths inside [lo, hi] and the mean width
* `expected_calibration_error`  ECE of P(y=1) over equal-width bins:
                                sum_b n_b/N · |mean p_b - fraction positive_b|
* `reliability_table` / `reliability_diagram`   the per-bin data and a PNG (raw vs calibrated)
* `flag_rates`                  % of in-distribution inputs flagged, % of OOD inputs caught
* `uncertainty_metrics`         all of these from one table in the prediction contract's
                                columns (``<output>_lo/_hi``, ``probability``,
                                ``probability_raw``, ``ood_flag``) joined with the truth
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate.metrics import finite_pairs
from cinelab.evaluate.plots import FONT_SIZE, _figure, _no_data, _save, _title

DEFAULT_BINS = 10
RELIABILITY_COLUMNS = ("bin_lo", "bin_hi", "n", "mean_probability", "fraction_positive")


def interval_coverage(y_true: Any, lo: Any, hi: Any) -> dict[str, float | int]:
    """{coverage, mean_width, n} over rows where truth, lo and hi are all finite."""
    y, a, b = finite_pairs(y_true=y_true, lo=lo, hi=hi)
    if len(y) == 0:
        return {"coverage": float("nan"), "mean_width": float("nan"), "n": 0}
    inside = (y >= a) & (y <= b)
    return {"coverage": float(inside.mean()), "mean_width": float((b - a).mean()),
            "n": int(len(y))}


def _binary_pairs(prob: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = finite_pairs(prob=prob, labels=labels)
    if not np.isin(y, (0.0, 1.0)).all():
        raise InputError(None, "label", "binary labels 0/1", f"values {np.unique(y)[:5]}")
    if ((p < 0) | (p > 1)).any():
        raise InputError(None, "probability", "values in [0, 1]",
                         f"range {p.min():.3g} to {p.max():.3g}")
    return p, y


def reliability_table(prob: Any, labels: Any, bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """Per equal-width bin of P(y=1): edges, count, mean probability, fraction positive
    (NaN for empty bins)."""
    p, y = _binary_pairs(prob, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = index == b
        n = int(m.sum())
        rows.append((float(edges[b]), float(edges[b + 1]), n,
                     float(p[m].mean()) if n else float("nan"),
                     float(y[m].mean()) if n else float("nan")))
    return pd.DataFrame(rows, columns=list(RELIABILITY_COLUMNS))


def expected_calibration_error(prob: Any, labels: Any, bins: int = DEFAULT_BINS) -> float:
    """ECE of P(y=1) over `bins` equal-width bins (NaN with no finite pair)."""
    table = reliability_table(prob, labels, bins)
    total = table["n"].sum()
    if total == 0:
        return float("nan")
    used = table[table["n"] > 0]
    gap = (used["mean_probability"] - used["fraction_positive"]).abs()
    return float((used["n"] * gap).sum() / total)


def reliability_diagram(labels: Any, probs: Mapping[str, Any], path: str | Path,
                        bins: int = DEFAULT_BINS, title: str | None = None) -> Path:
    """Fraction positive against mean probability per bin for each named probability
    ({"raw": p_raw, "calibrated": p}), with the diagonal and each curve's ECE; PNG."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
    drawn = 0
    for name, prob in probs.items():
        table = reliability_table(prob, labels, bins)
        used = table[table["n"] > 0]
        if len(used):
            ece = expected_calibration_error(prob, labels, bins)
            ax.plot(used["mean_probability"], used["fraction_positive"], marker="o",
                    markersize=3, linewidth=1.5, label=f"{name} (ECE {ece:.3f})")
            drawn += 1
    if drawn:
        ax.legend(fontsize=FONT_SIZE, loc="upper left")
    else:
        _no_data(ax)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("mean predicted probability", fontsize=FONT_SIZE)
    ax.set_ylabel("fraction positive", fontsize=FONT_SIZE)
    _title(ax, title)
    return _save(fig, path)


def _rate(flags: Any) -> tuple[float, int]:
    f = np.asarray(flags, dtype=float).reshape(-1)
    f = f[np.isfinite(f)]
    return (float(f.mean()) if len(f) else float("nan")), int(len(f))


def flag_rates(flags_in: Any, flags_ood: Any | None = None) -> dict[str, float | int]:
    """{in_distribution_flagged, n_in} and, given OOD flags, {ood_caught, n_ood} (fractions)."""
    rate_in, n_in = _rate(flags_in)
    out: dict[str, float | int] = {"in_distribution_flagged": rate_in, "n_in": n_in}
    if flags_ood is not None:
        out["ood_caught"], out["n_ood"] = _rate(flags_ood)
    return out


def uncertainty_metrics(table: pd.DataFrame, truth: Mapping[str, str] | None = None,
                        label_column: str | None = None, bins: int = DEFAULT_BINS
                        ) -> dict[str, Any]:
    """Uncertainty summary of predictions joined with truth.

    `truth` maps an output (``ef``) to its truth column; outputs with ``<output>_lo/_hi``
    give ``coverage/<output>`` and ``width/<output>``. With `label_column`, ``ece`` (of
    ``probability``) and ``ece_raw`` (of ``probability_raw`` when present). ``ood_flag``
    gives ``flagged`` (fraction of rows)."""
    out: dict[str, Any] = {}
    for output, column in (truth or {}).items():
        lo, hi = f"{output}_lo", f"{output}_hi"
        if {lo, hi, column} <= set(table.columns):
            cov = interval_coverage(table[column], table[lo], table[hi])
            out[f"coverage/{output}"] = cov["coverage"]
            out[f"width/{output}"] = cov["mean_width"]
            out[f"n/{output}"] = cov["n"]
    if label_column is not None and label_column in table.columns:
        for name, col in (("ece", "probability"), ("ece_raw", "probability_raw")):
            if col in table.columns:
                out[name] = expected_calibration_error(table[col], table[label_column], bins)
    if "ood_flag" in table.columns:
        out["flagged"] = flag_rates(table["ood_flag"].astype(float))["in_distribution_flagged"]
    return out
