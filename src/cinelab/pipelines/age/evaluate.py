"""Fold and view ensembles of a nested cross-validation, age scores and the age-gap table.

From the unit predictions of `cinelab cv` (one model per arm = view, outer fold k and inner
fold j), every subject gets one out-of-fold prediction, built only from models that never
saw it and from weights never fitted on it:

1. fold ensemble (per view): the J inner models of outer fold k predict the test subjects of
   fold k; their predictions are averaged with equal weights (inner models cannot be weighed
   against each other: each one's validation subjects trained the others);
2. calibration (per view, `calibrate=True`): the line age = a + b x prediction is fitted on
   the inner-validation predictions of fold k's training subjects and applied to the view's
   validation and test predictions (models trained briefly from the training mean predict a
   compressed age range; this stretches it back using validation data only);
3. view ensemble: for outer fold k, weights over the views are fitted
   (`cinelab.infer.ensemble.fit_ensemble_weights`, task "regression") on the inner-validation
   predictions of fold k's training subjects (each predicted by the inner model that held it
   out), then applied to fold k's fold-ensemble test predictions; a subject missing a view
   keeps the other views (weights renormalised by `weighted_average`);
4. age gap: prediction minus age; its bias-corrected version subtracts the line fitted to
   (age, gap) on the same inner-validation predictions of fold k's training subjects
   (regression to the mean corrected without touching the test subjects).

Variants: "plain" uses the clip-averaged predictions, "tta" those with test-time
augmentation; "auto" picks the one with the lower inner-validation RMSE.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate.metrics import (
    DEFAULT_N_BOOT,
    json_safe,
    metrics_table,
    regression_metrics,
    regression_report,
)
from cinelab.evaluate.plots import residual_plot, scatter_plot
from cinelab.infer.ensemble import (
    EnsembleWeights,
    fit_ensemble_weights,
    save_ensemble_weights,
    weighted_average,
)
from cinelab.train.cv import cv_settings, read_cv_predictions
from cinelab.utils import write_csv, write_json

VARIANTS = {"plain": "pred", "tta": "pred_aug"}
ENSEMBLE = "ensemble"
BASELINE = "baseline"
ENSEMBLE_DIR = "ensemble"
DEFAULT_METHOD = "nnls"
RAW_PREFIX = "raw_"  # uncalibrated fold-ensemble predictions of each view
GAP_COLUMNS = ("subject", "age", "outer", "pred", "gap", "gap_corrected", "pred_corrected")
GAP_EXCLUDE = (*GAP_COLUMNS, BASELINE, "n_views", "gap_intercept", "gap_slope")
TECHNICAL_COLUMNS = ("sample_id", "path", "modality", "view", "split", "fold", "frames", "fps",
                     "series_uid", "series_description", "n_images")


@dataclass
class FoldInputs:
    """One outer fold's view matrices: inner-validation (fitting) and test (applying)."""

    outer: int
    arms: list[str]
    val: pd.DataFrame  # subject x arm, inner-validation predictions of training subjects
    val_y: pd.Series
    test: pd.DataFrame  # subject x arm, fold-ensemble predictions of test subjects
    test_y: pd.Series
    train_mean: float


def _subject_means(preds: pd.DataFrame, column: str, keys: list[str]) -> pd.DataFrame:
    """Mean prediction and target per subject within `keys` groups (several samples)."""
    return preds.groupby([*keys, "subject"], sort=True).agg(
        pred=(column, "mean"), target=("target", "mean")).reset_index()


def fold_inputs(preds: pd.DataFrame, column: str, outer: int, arms: list[str]) -> FoldInputs:
    """The matrices of outer fold `outer` (see the module docstring, steps 1-2)."""
    fold = preds[preds["outer"] == outer]
    val = _subject_means(fold[fold["role"] == "val"], column, ["arm"])
    test = _subject_means(fold[fold["role"] == "test"], column, ["arm", "inner"])
    test_mat = test.pivot_table(index=["subject", "arm"], columns="inner", values="pred")
    fold_ens = pd.Series(weighted_average(test_mat.to_numpy(), np.ones(test_mat.shape[1])),
                         index=test_mat.index).unstack("arm").reindex(columns=arms)
    val_mat = val.pivot_table(index="subject", columns="arm", values="pred").reindex(
        columns=arms)
    targets = fold.groupby("subject")["target"].mean()
    train = fold[fold["role"].isin(["train", "val"])].groupby("subject")["target"].mean()
    return FoldInputs(outer, arms, val_mat, targets.reindex(val_mat.index), fold_ens,
                      targets.reindex(fold_ens.index), float(train.mean()))


def fit_calibration(inputs: FoldInputs) -> dict[str, tuple[float, float]]:
    """Per view (slope, intercept) of age on the inner-validation predictions; identity
    where fewer than 3 predictions or no spread."""
    out = {}
    for arm in inputs.arms:
        x, y = inputs.val[arm].to_numpy(), inputs.val_y.to_numpy()
        keep = np.isfinite(x) & np.isfinite(y)
        if keep.sum() < 3 or np.ptp(x[keep]) == 0:
            out[arm] = (1.0, 0.0)
        else:
            slope, intercept = np.polyfit(x[keep], y[keep], 1)
            out[arm] = (float(slope), float(intercept))
    return out


def calibrated(inputs: FoldInputs, lines: dict[str, tuple[float, float]]) -> FoldInputs:
    """The fold's validation and test matrices mapped through each view's line."""
    def apply(matrix: pd.DataFrame) -> pd.DataFrame:
        return matrix.apply(lambda col: lines[col.name][0] * col + lines[col.name][1])

    return dataclasses.replace(inputs, val=apply(inputs.val), test=apply(inputs.test))


def fit_view_weights(inputs: FoldInputs, method: str = DEFAULT_METHOD,
                     seed: int = 0) -> EnsembleWeights:
    """View weights fitted on the fold's inner-validation predictions only."""
    if len(inputs.arms) == 1:
        return EnsembleWeights(np.ones(1), "single", "regression", list(inputs.arms))
    return fit_ensemble_weights(inputs.val.to_numpy(), inputs.val_y.to_numpy(), method=method,
                                task="regression", seed=seed, members=list(inputs.arms))


def gap_correction(pred: np.ndarray, age: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of gap = pred - age regressed on age (finite pairs)."""
    keep = np.isfinite(pred) & np.isfinite(age)
    if keep.sum() < 2 or np.ptp(age[keep]) == 0:
        return 0.0, 0.0
    slope, intercept = np.polyfit(age[keep], pred[keep] - age[keep], 1)
    return float(intercept), float(slope)


def fold_predictions(inputs: FoldInputs, weights: EnsembleWeights) -> pd.DataFrame:
    """Test subjects of the fold: per-view, ensemble, baseline, gap and corrected gap."""
    val_pred = weighted_average(inputs.val.to_numpy(), weights.weights)
    intercept, slope = gap_correction(val_pred, inputs.val_y.to_numpy())
    out = inputs.test.add_prefix("pred_").reset_index()
    age = inputs.test_y.to_numpy()
    out.insert(1, "age", age)
    out.insert(2, "outer", inputs.outer)
    out["n_views"] = inputs.test.notna().sum(axis=1).to_numpy()
    out["pred"] = weighted_average(inputs.test.to_numpy(), weights.weights)
    out[BASELINE] = inputs.train_mean
    out["gap"] = out["pred"] - age
    out["gap_corrected"] = out["gap"] - (intercept + slope * age)
    out["pred_corrected"] = out["pred"] - (intercept + slope * age)
    out["gap_intercept"], out["gap_slope"] = intercept, slope
    return out


def choose_variant(preds: pd.DataFrame, variant: str) -> str:
    """The variant to use: as given, or ("auto") the lower inner-validation RMSE."""
    if variant in VARIANTS:
        return variant
    if variant != "auto":
        raise InputError(None, "variant", f"one of {['auto', *VARIANTS]}", repr(variant))
    val = preds[preds["role"] == "val"]
    if val["pred_aug"].isna().all():
        return "plain"
    rmse = {v: regression_metrics(val["target"], val[c])["rmse"] for v, c in VARIANTS.items()}
    return min(rmse, key=rmse.get)


def _reports(table: pd.DataFrame, columns: list[str], n_boot: int) -> dict[str, Any]:
    return {c.removeprefix("pred_") if c != "pred" else ENSEMBLE:
            regression_report(table["age"], table[c], n_boot=n_boot) for c in columns}


def score_predictions(table: pd.DataFrame, arms: list[str],
                      n_boot: int = DEFAULT_N_BOOT) -> dict[str, Any]:
    """Overall, per-fold and all-views-only reports with bootstrap CIs, and the headline."""
    columns = [f"pred_{a}" for a in arms] + ["pred", BASELINE]
    overall = _reports(table, columns, n_boot)
    complete = table[table[[f"pred_{a}" for a in arms]].notna().all(axis=1)]
    folds = {int(k): _reports(g, columns, n_boot) for k, g in table.groupby("outer")}
    rmse = {name: r["rmse"]["value"] for name, r in overall.items()}
    both = {name: r["rmse"]["value"] for name, r in _reports(complete, columns, 0).items()}
    headline = {
        "n_subjects": int(len(table)), "n_all_views": int(len(complete)),
        "rmse_ratio_to_baseline": rmse[ENSEMBLE] / rmse[BASELINE],
        "rmse": rmse, "rmse_all_views": both,
        "ensemble_beats_each_view": bool(all(both[ENSEMBLE] < both[a] for a in arms)),
        "r2_corrected_gap_vs_age": float(np.corrcoef(table["age"], table["gap_corrected"])[0, 1]
                                         ** 2) if len(table) > 2 else None,
    }
    return {"headline": headline, "overall": overall, "all_views": _reports(complete, columns,
                                                                              n_boot),
            "folds": folds}


def fold_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per fold and model: n, MAE, RMSE, R² with CIs."""
    rows = []
    for k, reports in metrics["folds"].items():
        for name, r in reports.items():
            rows.append({"outer": k, "model": name, "n": r["n"],
                         **{f"{m}{s}": r[m][key] for m in ("mae", "rmse", "r2")
                            for s, key in (("", "value"), ("_lo", "ci_low"), ("_hi", "ci_high"))}})
    return pd.DataFrame(rows)


def _covariates(settings: dict[str, Any]) -> pd.DataFrame | None:
    """Per-subject covariates from the store manifest (label columns other than the target)."""
    path = Path(settings.get("store", "")) / "manifest.csv"
    if not path.exists():
        return None
    m = pd.read_csv(path, dtype={settings["group"]: str})
    keep = [c for c in m.columns if c not in TECHNICAL_COLUMNS and c != settings["target"]]
    return m[keep].groupby(settings["group"]).first().rename_axis("subject").reset_index()


def _plots(table: pd.DataFrame, arms: list[str], out: Path) -> dict[str, str]:
    made = {}
    for name, column in [(ENSEMBLE, "pred"), *[(a, f"pred_{a}") for a in arms]]:
        made[f"scatter_{name}"] = scatter_plot(table["age"], table[column],
                                               out / f"scatter_{name}.png", "age (years)",
                                               f"{name}: predicted vs true").name
        made[f"residual_{name}"] = residual_plot(table["age"], table[column],
                                                 out / f"residual_{name}.png", "age (years)",
                                                 f"{name}: residual vs age").name
    return made


@dataclass
class FoldEnsembles:
    """Every fold's out-of-fold table rows, calibration lines and view weights."""

    table: pd.DataFrame
    lines: dict[int, dict[str, tuple[float, float]]]
    weights: dict[int, EnsembleWeights]


def fold_ensembles(preds: pd.DataFrame, column: str, method: str = DEFAULT_METHOD,
                   seed: int = 0, calibrate: bool = True) -> FoldEnsembles:
    """Steps 1-4 of the module docstring for every outer fold."""
    arms = sorted(preds["arm"].unique())
    parts, lines, weights = [], {}, {}
    for k in (int(k) for k in sorted(preds["outer"].unique())):
        raw = fold_inputs(preds, column, k, arms)
        lines[k] = fit_calibration(raw) if calibrate else {a: (1.0, 0.0) for a in arms}
        inputs = calibrated(raw, lines[k])
        weights[k] = fit_view_weights(inputs, method, seed)
        parts.append(fold_predictions(inputs, weights[k]).join(
            raw.test.add_prefix(RAW_PREFIX).reset_index(drop=True)))
    table = pd.concat(parts, ignore_index=True).sort_values("subject").reset_index(drop=True)
    return FoldEnsembles(table, lines, weights)


def _write_outputs(out: Path, table: pd.DataFrame, metrics: dict[str, Any],
                   weights: dict[int, EnsembleWeights]) -> None:
    for k, w in weights.items():
        save_ensemble_weights(out / "weights" / f"outer_{k}.json", w)
    write_csv(table, out / "predictions.csv")
    extra = [c for c in table.columns if c not in GAP_EXCLUDE and not c.startswith(RAW_PREFIX)]
    write_csv(table[[*GAP_COLUMNS, *extra]], out / "age_gap.csv")
    write_csv(metrics_table({k: metrics[k] for k in ("overall", "all_views")}),
              out / "metrics.csv")
    write_csv(fold_table(metrics), out / "fold_metrics.csv")
    write_json(out / "metrics.json", json_safe(metrics))


def ensemble_cv(cv_dir: str | Path, out: str | Path | None = None,
                method: str = DEFAULT_METHOD, variant: str = "auto",
                n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                calibrate: bool = True) -> dict[str, Any]:
    """Fold and view ensembles, scores, age gaps and plots of a cv folder -> `out`
    (default <cv_dir>/ensemble); returns metrics.json's contents."""
    cv_dir = Path(cv_dir)
    out = Path(out) if out is not None else cv_dir / ENSEMBLE_DIR
    settings = cv_settings(cv_dir)
    preds = read_cv_predictions(cv_dir)
    arms = sorted(preds["arm"].unique())
    chosen = choose_variant(preds, variant)
    folds = fold_ensembles(preds, VARIANTS[chosen], method, seed, calibrate)
    table = folds.table
    covariates = _covariates(settings)
    if covariates is not None:
        table = table.merge(covariates, on="subject", how="left")
    metrics = score_predictions(table, arms, n_boot)
    metrics["headline"]["rmse_uncalibrated"] = {
        a: regression_metrics(table["age"], table[f"{RAW_PREFIX}{a}"])["rmse"] for a in arms}
    metrics.update(pipeline="age", variant=chosen, method=method, arms=arms, cv=str(cv_dir),
                   calibrate=calibrate, calibration={
                       k: {a: {"slope": b, "intercept": c} for a, (b, c) in v.items()}
                       for k, v in folds.lines.items()},
                   weights={k: dict(zip(arms, w.weights.tolist(), strict=True))
                            for k, w in folds.weights.items()},
                   plots=_plots(table, arms, out))
    _write_outputs(out, table, metrics, folds.weights)
    return metrics
