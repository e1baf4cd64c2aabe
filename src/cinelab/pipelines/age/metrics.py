"""Evaluate age predictions read from the prediction contract against known ages.

Labels come from ``options.labels`` or the ``labels`` entry of the prediction's run.json (a
CSV with a subject column, one of `SUBJECT_KEYS`, and ``age``) and are joined on patient_id.
Scores: RMSE, MAE, R² (and bias) with bootstrap CIs for ``age`` and each ``age_<view>``,
``age_coverage`` / ``age_interval_width`` when the predictions carry ``age_lo``/``age_hi``,
``ood_flagged`` / ``ood_n`` (fraction of evaluated subjects with ``ood_flag``) when they carry
the OOD flag, and
the predict-the-mean baseline: the training mean of each subject's outer fold when the
predictions carry it (``age_baseline``, written by the out-of-fold predictions of `run`), else
``train_mean`` in run.json, else the mean of the evaluated ages (an optimistic baseline, named
in ``baseline_source``). ``rmse_ratio`` = model RMSE / baseline RMSE.

Written to `out`: metrics.json (flat headline numbers, "pipeline": "age", the full reports),
metrics.csv, evaluation.csv (subject, age, prediction, gap) and scatter/residual plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate.metrics import DEFAULT_N_BOOT, json_safe, metrics_table, regression_report
from cinelab.evaluate.plots import residual_plot, scatter_plot
from cinelab.infer.contract import read_predictions, read_run
from cinelab.pipelines.age.layout import read_ages
from cinelab.pipelines.age.ood import ood_flag_metrics
from cinelab.pipelines.age.uncertainty import interval_metrics
from cinelab.pipelines.registry import Options
from cinelab.utils import write_csv, write_json

PIPELINE = "age"
TARGET = "age"
BASELINE_COLUMN = "age_baseline"
NOT_VIEWS = (BASELINE_COLUMN, "age_lo", "age_hi")


def read_age_labels(path: str | Path) -> pd.Series:
    """Ages by subject (first value per subject) from a labels CSV."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "labels", "a CSV of subject and age", "no such file",
                         "give --labels CSV")
    table = read_ages(path, TARGET).dropna(subset=[TARGET])
    return table.groupby("subject", sort=True)[TARGET].first()


def _labels_path(predictions: Path, options: Options) -> Path:
    if options.labels is not None:
        return Path(options.labels)
    found = read_run(predictions).get("labels")
    if not found:
        raise InputError(predictions, "labels", "ages to compare with (run.json labels)",
                         "none recorded", "give --labels CSV (subject, age)")
    return Path(found) if Path(found).is_absolute() else Path(predictions) / found


def joined(predictions: Path, options: Options) -> pd.DataFrame:
    """The predictions with a `true` column (subjects without a known age dropped)."""
    table = read_predictions(predictions)
    if TARGET not in table.columns:
        raise InputError(predictions, TARGET, "an age column (an age pipeline's predictions)",
                         f"columns {list(table.columns)}")
    labels = read_age_labels(_labels_path(predictions, options))
    table["true"] = table["patient_id"].map(labels)
    table = table.dropna(subset=["true"])
    if table.empty:
        raise InputError(predictions, "patient_id", "subjects that have an age in the labels",
                         "no subject in common", "check the labels file")
    return table


def _baseline(table: pd.DataFrame, predictions: Path) -> tuple[np.ndarray, str]:
    if BASELINE_COLUMN in table.columns and table[BASELINE_COLUMN].notna().all():
        return table[BASELINE_COLUMN].to_numpy(float), "training mean of each outer fold"
    train_mean = read_run(predictions).get("train_mean")
    if isinstance(train_mean, int | float):
        return np.full(len(table), float(train_mean)), "training mean (run.json)"
    return np.full(len(table), float(table["true"].mean())), "mean of the evaluated ages"


def view_columns(table: pd.DataFrame) -> list[str]:
    """The per-view prediction columns (``age_<view>``)."""
    return [c for c in table.columns if c.startswith(f"{TARGET}_") and c not in NOT_VIEWS]


def _flat(report: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for name in ("rmse", "mae", "r2", "bias"):
        entry = report[name]
        out.update({f"{name}{prefix}": entry["value"], f"{name}{prefix}_lo": entry["ci_low"],
                    f"{name}{prefix}_hi": entry["ci_high"]})
    return out


def evaluate_age(predictions: Path, out: Path, options: Options) -> dict[str, Any]:
    """The pipeline's evaluate: scores, baseline and plots of a prediction folder -> `out`."""
    predictions, out = Path(predictions), Path(out)
    table = joined(predictions, options)
    n_boot = int(options.get("n_boot", DEFAULT_N_BOOT))
    baseline, source = _baseline(table, predictions)
    model = regression_report(table["true"], table[TARGET], n_boot=n_boot)
    base = regression_report(table["true"], baseline, n_boot=n_boot)
    views = {c.removeprefix(f"{TARGET}_"): regression_report(table["true"], table[c],
                                                             n_boot=n_boot)
             for c in view_columns(table)}
    metrics: dict[str, Any] = {
        "pipeline": PIPELINE, "n": model["n"], **_flat(model),
        "rmse_baseline": base["rmse"]["value"], "mae_baseline": base["mae"]["value"],
        "rmse_ratio": model["rmse"]["value"] / base["rmse"]["value"]
        if base["rmse"]["value"] > 0 else None,
        "baseline_source": source,
        "beats_baseline": bool(model["rmse"]["ci_high"] < base["rmse"]["value"]),
        **{f"rmse_{v}": r["rmse"]["value"] for v, r in views.items()},
        "reports": {"model": model, "baseline": base, **views},
        "predictions": str(predictions),
    }
    if {f"{TARGET}_lo", f"{TARGET}_hi"} <= set(table.columns):
        metrics.update(interval_metrics(table["true"], table[f"{TARGET}_lo"],
                                        table[f"{TARGET}_hi"]))
        metrics["age_coverage_nominal"] = (read_run(predictions).get("uncertainty")
                                           or {}).get("coverage")
    if "ood_flag" in table.columns:
        metrics.update(ood_flag_metrics(table))
        metrics["ood_threshold_quantile"] = (read_run(predictions).get("ood")
                                             or {}).get("threshold_quantile")
    gap = table.assign(gap=table[TARGET] - table["true"])
    write_csv(gap[["sample_id", "patient_id", "true", TARGET, "gap",
                   *view_columns(table)]].rename(columns={"true": "age_true"}),
              out / "evaluation.csv")
    write_csv(metrics_table(metrics["reports"]), out / "metrics.csv")
    metrics["plots"] = {
        "scatter": scatter_plot(table["true"], table[TARGET], out / "scatter.png",
                                "age (years)", "predicted vs true age").name,
        "residual": residual_plot(table["true"], table[TARGET], out / "residual.png",
                                  "age (years)", "residual vs age").name}
    write_json(out / "metrics.json", json_safe(metrics))
    return metrics
