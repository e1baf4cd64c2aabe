"""The age report: one self-contained HTML page of a cross-validated age ensemble.

Reads what `cinelab.pipelines.age.evaluate.ensemble_cv` wrote (metrics.json, fold_metrics.csv,
age_gap.csv, the plots) and shows: the headline (ensemble RMSE against predicting the
training mean, the view ensemble against each view), scores with bootstrap CIs overall, on
subjects with every view and per fold, the view weights of every outer fold, the plots, and
the first rows of the age-gap table (the whole table is age_gap.csv beside the page). When
the cv folder's models carry OOD detectors (`cinelab.pipelines.age.ood`), the headline also
gives the out-of-fold flag rate (each subject scored by its outer fold's models), worded as
in the evaluation page.

`report_age` is the pipeline's report: an evaluation folder written by
`cinelab.pipelines.age.metrics.evaluate_age` gets its own page (scores with CIs against the
predict-the-mean baseline, with a warning when the model is not better than the baseline
beyond its CI); an ensemble or cv folder gets `build_age_report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError
from cinelab.pipelines.age.evaluate import BASELINE, ENSEMBLE, ENSEMBLE_DIR
from cinelab.pipelines.age.ood import oof_flag_metrics
from cinelab.report.html import HtmlReport
from cinelab.train.cv import CV_FILE
from cinelab.utils import read_json

REPORT_FILE = "report.html"
GAP_ROWS = 30
GAP_COLUMNS = ("subject", "age", "outer", "pred", "gap", "gap_corrected")


def _ensemble_dir(path: str | Path) -> Path:
    """The ensemble folder itself, or the one inside a cv folder."""
    path = Path(path)
    for folder in (path, path / ENSEMBLE_DIR):
        if (folder / "metrics.json").exists():
            return folder
    raise InputError(path, "metrics.json", "an age ensemble folder (cinelab age ensemble)",
                     "no metrics.json", "run `cinelab age ensemble CV_DIR` first")


def _ood_line(metrics: Mapping[str, Any]) -> str:
    """The summary line of the OOD flag rate (``ood_flagged``, ``ood_n``,
    ``ood_threshold_quantile``)."""
    quantile = metrics.get("ood_threshold_quantile") or 0.95
    return (f"Out-of-distribution flag (ood_score > 1, each model's threshold at the "
            f"{quantile:.0%} quantile of its validation cines): "
            f"{metrics['ood_flagged']:.1%} of {metrics['ood_n']} subjects flagged "
            f"(about {1 - quantile:.0%} expected for in-distribution cines).")


def _cv_dir(folder: Path, metrics: Mapping[str, Any]) -> Path:
    """The cv folder of an ensemble folder: its parent when that is one (the default
    ``CV_DIR/ensemble``), else metrics.json's ``cv``."""
    return folder.parent if (folder.parent / CV_FILE).is_file() else \
        Path(str(metrics.get("cv") or folder.parent))


def _headline(rep: HtmlReport, metrics: Mapping[str, Any],
              ood: Mapping[str, Any] | None = None) -> None:
    head, arms = metrics["headline"], metrics["arms"]
    rmse, both = head["rmse"], head["rmse_all_views"]
    calibration = "per-view calibration on inner validation" if metrics.get("calibrate") \
        else "no calibration"
    lines = [f"{head['n_subjects']} subjects with an out-of-fold prediction "
             f"({head['n_all_views']} with every view); views {', '.join(arms)}; "
             f"predictions {metrics['variant']}, {calibration}, view weights by "
             f"{metrics['method']}.",
             f"Ensemble RMSE {rmse[ENSEMBLE]:.2f} vs {rmse[BASELINE]:.2f} for the training "
             f"mean: ratio {head['rmse_ratio_to_baseline']:.2f}.",
             "On subjects with every view: " + ", ".join(
                 f"{name} {both[name]:.2f}" for name in [*arms, ENSEMBLE]) +
             (" (the view ensemble beats each view)." if head["ensemble_beats_each_view"]
              else " (the view ensemble does not beat every view).")]
    raw = head.get("rmse_uncalibrated", {})
    if raw and metrics.get("calibrate"):
        lines.append("Uncalibrated fold-ensemble RMSE per view: " + ", ".join(
            f"{name} {value:.2f}" for name, value in raw.items()) + ".")
    if ood and ood.get("ood_n"):
        lines.append(_ood_line(ood) + " Out of fold: each subject scored by its outer "
                     "fold's models.")
    rep.section("Summary").bullets(lines)


def _weights_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    rows = [{"outer fold": int(k), **w} for k, w in metrics["weights"].items()]
    return pd.DataFrame(rows)


def _plots(rep: HtmlReport, folder: Path, metrics: Mapping[str, Any]) -> None:
    plots = metrics.get("plots", {})
    for kind, title in (("scatter", "Predicted vs true age"), ("residual", "Residual vs age")):
        items = [(folder / name, key.split("_", 1)[1]) for key, name in plots.items()
                 if key.startswith(kind) and (folder / name).exists()]
        if items:
            rep.section(title, level=3).gallery(items)


def build_age_report(path: str | Path, out: str | Path | None = None,
                     title: str = "Age from cine MRI") -> Path:
    """Write the report page (default <ensemble dir>/report.html); return its path."""
    folder = _ensemble_dir(path)
    metrics = read_json(folder / "metrics.json")
    rep = HtmlReport(title, subtitle=f"cross-validation folder {metrics.get('cv', '')}")
    _headline(rep, metrics, oof_flag_metrics(_cv_dir(folder, metrics)))
    rep.section("Scores (out-of-fold, bootstrap 95% CIs)")
    rep.metrics_table(metrics["overall"], caption="every subject with a prediction")
    rep.metrics_table(metrics["all_views"], caption="subjects with every view")
    folds = folder / "fold_metrics.csv"
    if folds.exists():
        table = pd.read_csv(folds)
        rep.table(table[["outer", "model", "n", "mae", "rmse", "rmse_lo", "rmse_hi", "r2"]],
                  caption="per outer fold (test subjects of the fold)")
    rep.section("View weights (fitted on inner-validation predictions)")
    rep.table(_weights_table(metrics))
    rep.section("Plots")
    _plots(rep, folder, metrics)
    gap = folder / "age_gap.csv"
    if gap.exists():
        table = pd.read_csv(gap)
        rep.section("Age gap")
        rep.paragraph("gap = prediction - age; gap_corrected subtracts the linear trend of "
                      "the gap on age fitted on each fold's inner-validation predictions. "
                      f"Every subject is in {gap.name}; the first {GAP_ROWS} rows:", note=True)
        rep.table(table[[c for c in GAP_COLUMNS if c in table.columns]].head(GAP_ROWS))
    return rep.write(Path(out) if out is not None else folder / REPORT_FILE)


def build_evaluation_report(folder: str | Path, out: str | Path | None = None,
                            title: str = "Age from cine MRI") -> Path:
    """The page of an `evaluate_age` folder (default <folder>/report.html)."""
    folder = Path(folder)
    metrics = read_json(folder / "metrics.json")
    rep = HtmlReport(title, subtitle=f"predictions {metrics.get('predictions', '')}")
    lines = [f"{metrics['n']} subjects with a known age.",
             f"RMSE {metrics['rmse']:.2f} (95% CI {metrics['rmse_lo']:.2f}-"
             f"{metrics['rmse_hi']:.2f}) vs {metrics['rmse_baseline']:.2f} for predicting "
             f"the mean ({metrics['baseline_source']}): ratio {metrics['rmse_ratio']:.2f}.",
             f"MAE {metrics['mae']:.2f} vs {metrics['mae_baseline']:.2f}; "
             f"R² {metrics['r2']:.2f}."]
    if metrics.get("age_interval_n"):
        nominal = metrics.get("age_coverage_nominal")
        lines.append(f"Age intervals (age_lo-age_hi, nominal {nominal or 0.9:.0%}): "
                     f"coverage {metrics['age_coverage']:.1%} of "
                     f"{metrics['age_interval_n']} subjects, mean width "
                     f"{metrics['age_interval_width']:.1f} years.")
    if metrics.get("ood_n"):
        lines.append(_ood_line(metrics))
    rep.section("Summary").bullets(lines)
    if not metrics.get("beats_baseline"):
        rep.paragraph("Warning: the model is not better than predicting the mean (the upper "
                      "end of its RMSE CI reaches the baseline's RMSE): it may have learned "
                      "nothing.")
    rep.section("Scores (bootstrap 95% CIs)")
    rep.metrics_table(metrics["reports"])
    plots = [(folder / name, key) for key, name in metrics.get("plots", {}).items()
             if (folder / name).exists()]
    if plots:
        rep.section("Plots").gallery(plots)
    table = folder / "evaluation.csv"
    if table.exists():
        rep.section("Per subject")
        rep.table(pd.read_csv(table).head(GAP_ROWS))
    return rep.write(Path(out) if out is not None else folder / REPORT_FILE)


def report_age(folder: Path, out: Path | None) -> Path:
    """The pipeline's report: an evaluation folder, or an ensemble/cv folder."""
    folder = Path(folder)
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file() and "headline" not in read_json(metrics_file):
        return build_evaluation_report(folder, out)
    return build_age_report(folder, out)
