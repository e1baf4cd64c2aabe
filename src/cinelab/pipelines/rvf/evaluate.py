"""RVF evaluate: a prediction folder (the contract) + labels -> metrics per video and patient.

Labels: options.labels (a manifest or any CSV with sample_id and label), else the manifest of
the store recorded in the predictions' run.json. The threshold is the one the predictions
used (their ``threshold`` column). Per-stream probabilities (``p_grey``, ``p_flow``) are
evaluated beside the fused one (members.csv).

Files in `out`: metrics.json ("pipeline": "rvf"; top level: the per-video auc,
auc_ci_low/high, sensitivity, specificity with CIs, then the full "video" and "patient"
reports; "uncertainty": ECE of the (calibrated) probability and of probability_raw,
mean disagreement, OOD-flagged fraction, and what run.json records of the calibration
(``calibrated``, temperature, validation ECE before/after, or the note why none), also flat
at the top), members.csv, confusion.csv,
per_sample.csv, patients.csv, roc.png, reliability.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.data.manifest import read_manifest
from cinelab.errors import InputError
from cinelab.evaluate import metrics as em
from cinelab.evaluate.classification import (
    DEFAULT_THRESHOLD,
    SCORE_COLUMN,
    TRUTH_COLUMN,
    evaluate_classification,
    join_labels,
    read_labels,
)
from cinelab.evaluate.plots import roc_plot
from cinelab.infer.contract import read_predictions, read_run
from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf.uncertainty import calibration_metrics
from cinelab.utils import write_csv, write_json

PIPELINE = "rvf"
METRICS_FILE, PATIENTS_FILE, ROC_FILE = "metrics.json", "patients.csv", "roc.png"
HEADLINE = ("auc", "sensitivity", "specificity")
MIN_PER_CLASS = 2  # fewer cases of a class: no metric, a note


def labels_for(pred_dir: Path, options: Options) -> pd.DataFrame:
    """The labels table: options.labels, else the manifest of the predicted store."""
    if options.labels is not None:
        return read_labels(options.labels)
    store = read_run(pred_dir).get("store")
    if not store or not (Path(store) / "manifest.csv").is_file():
        raise InputError(pred_dir, "labels", "labels for these predictions",
                         "none given and no store manifest recorded in run.json",
                         fix="pass --labels (a manifest or a CSV with sample_id,label)")
    return read_manifest(Path(store) / "manifest.csv")


def _enough(truth: pd.Series) -> bool:
    counts = truth.dropna().value_counts()
    return len(counts) == 2 and int(counts.min()) >= MIN_PER_CLASS


def patient_report(per_sample: pd.DataFrame, threshold: float, n_boot: int,
                   seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """binary_report over patients (mean probability of their videos) and the table."""
    table = per_sample.groupby("patient_id", sort=True).agg(
        probability=(SCORE_COLUMN, "mean"), truth=(TRUTH_COLUMN, "first"),
        n_videos=("sample_id", "size")).reset_index()
    table["prediction"] = (table["probability"] >= threshold).astype(int)
    if not _enough(table[TRUTH_COLUMN]):
        return {"n": int(table[TRUTH_COLUMN].notna().sum()),
                "note": f"needs at least {MIN_PER_CLASS} patients of each class"}, table
    keep = table[TRUTH_COLUMN].notna() & table[SCORE_COLUMN].notna()
    report = em.binary_report(table.loc[keep, TRUTH_COLUMN], table.loc[keep, SCORE_COLUMN],
                              threshold=threshold, n_boot=n_boot, seed=seed)
    return report, table


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """auc, sensitivity, specificity as numbers with their CIs beside them."""
    out: dict[str, Any] = {}
    for name in HEADLINE:
        entry = report.get(name)
        if isinstance(entry, dict):
            out.update({name: entry["value"], f"{name}_ci_low": entry["ci_low"],
                        f"{name}_ci_high": entry["ci_high"]})
    return out


def _threshold(preds: pd.DataFrame) -> float:
    if "threshold" not in preds.columns:
        return DEFAULT_THRESHOLD
    values = pd.to_numeric(preds["threshold"], errors="coerce").dropna().unique()
    return float(values[0]) if len(values) == 1 else DEFAULT_THRESHOLD


def evaluate_rvf(pred_dir: Path, out: Path, options: Options) -> dict[str, Any]:
    """The pipeline's evaluate (module docstring); returns what metrics.json holds."""
    pred_dir, out = Path(pred_dir), Path(out)
    preds = read_predictions(pred_dir)
    labelled = join_labels(preds, labels_for(pred_dir, options))
    n_boot, seed = int(options.get("n_boot", em.DEFAULT_N_BOOT)), options.seed
    threshold = _threshold(preds)
    if not _enough(labelled[TRUTH_COLUMN]):
        raise InputError(pred_dir, "labels", f"at least {MIN_PER_CLASS} labelled videos of "
                         "each class", f"{labelled[TRUTH_COLUMN].value_counts().to_dict()}")
    video = evaluate_classification(labelled, out, threshold=threshold, n_boot=n_boot,
                                    seed=seed)
    patient, patients = patient_report(video.per_sample, threshold, n_boot, seed)
    write_csv(patients, out / PATIENTS_FILE)
    _roc(video.per_sample, patients, out / ROC_FILE)
    metrics = {"pipeline": PIPELINE, **headline(video.report), "threshold": threshold,
               "threshold_source": read_run(pred_dir).get("threshold_source", "recorded"),
               "n": video.report["n"], "patient_auc": patient.get("auc", {}).get("value"),
               "predictions": str(pred_dir), "video": video.report, "patient": patient,
               "streams": video.members.to_dict("records"),
               "uncertainty": {**calibration_metrics(labelled, out),
                               **calibration_record(read_run(pred_dir))}}
    metrics.update({k: v for k, v in metrics["uncertainty"].items() if k != "plots"})
    write_json(out / METRICS_FILE, em.json_safe(metrics))
    return metrics


def calibration_record(run: dict[str, Any]) -> dict[str, Any]:
    """What run.json says of the calibration (`cinelab rvf run` records it): whether the
    probabilities are calibrated, the temperature and the validation ECE before and after,
    or the note why nothing was fitted (nothing when the run.json says nothing)."""
    found = run.get("calibration")
    if not isinstance(found, dict):
        return {}
    if not found.get("calibrated"):
        return {"calibrated": False, "calibration_note": str(found.get("note", ""))}
    keys = {"temperature": "temperature", "ece_before": "val_ece_before",
            "ece_after": "val_ece_after"}
    return {"calibrated": True, **{name: found[k] for k, name in keys.items() if k in found}}


def _roc(videos: pd.DataFrame, patients: pd.DataFrame, path: Path) -> Path:
    curves = {}
    for name, table in (("videos", videos), ("patients", patients)):
        keep = table[TRUTH_COLUMN].notna() & table[SCORE_COLUMN].notna()
        y, s = table.loc[keep, TRUTH_COLUMN], table.loc[keep, SCORE_COLUMN]
        if _enough(y):
            fpr, tpr, _ = em.roc_curve(y, s)
            curves[name] = (fpr, tpr, em.roc_auc(y, s))
    return roc_plot(curves, path, title="ROC (fused model)")
