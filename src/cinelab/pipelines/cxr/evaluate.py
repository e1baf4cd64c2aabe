"""Evaluate and report CXR ensemble predictions read from the prediction contract.

`evaluate` reads predictions.csv and run.json of a prediction folder, takes labels from
``options.labels`` (a DeepCOVID-XR folder tree, an ingest folder, a manifest or a label CSV)
or else from the input recorded in run.json (a labelled folder tree), and hands one label
table to the generic `cinelab.evaluate.classification.evaluate_classification`: AUC,
sensitivity, specificity and accuracy at the threshold, with bootstrap CIs, for the ensemble
and every member. metrics.json also records the pipeline ("cxr"), the ensemble folder, and
how many images fell back to the whole image instead of a lung crop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate import metrics as em
from cinelab.evaluate.classification import (
    MEMBER_PREFIX as TABLE_MEMBER_PREFIX,
)
from cinelab.evaluate.classification import (
    METRICS_JSON,
    evaluate_classification,
)
from cinelab.infer.contract import read_predictions, read_run
from cinelab.pipelines.cxr.cohort import cxr_label_table, is_cxr_tree
from cinelab.pipelines.cxr.predict import MEMBER_PREFIX, PIPELINE
from cinelab.pipelines.cxr.uncertainty import calibration_metrics
from cinelab.pipelines.registry import Options
from cinelab.report.classification import build_classification_report
from cinelab.utils import read_json, write_json

HEADLINE = ("auc", "sensitivity", "specificity", "accuracy")
GRADCAM_DIR = "gradcam"
REPORT_FILE = "report.html"
DEFAULT_N_BOOT = 1000


def member_table(folder: str | Path | pd.DataFrame) -> pd.DataFrame:
    """The contract's predictions with members as the generic evaluator names them
    (``probability_<member>`` -> ``p_<member>``)."""
    table = folder.copy() if isinstance(folder, pd.DataFrame) else read_predictions(folder)
    members = read_run(folder).get("members") if not isinstance(folder, pd.DataFrame) else None
    names = members if members is not None else \
        [c[len(MEMBER_PREFIX):] for c in table.columns if str(c).startswith(MEMBER_PREFIX)]
    return table.rename(columns={MEMBER_PREFIX + n: TABLE_MEMBER_PREFIX + n for n in names})


def resolve_labels(predictions: Path, labels: str | Path | None) -> pd.DataFrame:
    """The label table: the one given, else the one recorded at predict, else the labelled
    folder tree (or ingest folder) predict read."""
    run = read_run(predictions)
    labels = labels if labels is not None else run.get("labels")
    if labels is not None:
        return cxr_label_table(labels)
    recorded = run.get("input")
    if recorded and Path(recorded).is_dir() and (is_cxr_tree(Path(recorded)) or
                                                 (Path(recorded) / "manifest.csv").is_file()):
        return cxr_label_table(recorded)
    raise InputError(predictions, "labels", "labels for these predictions",
                     f"none given, and the input {recorded!r} is not a labelled folder tree",
                     "pass --labels (a folder tree, manifest or label CSV)")


def evaluate(predictions: Path, out: Path, options: Options) -> dict[str, Any]:
    """The pipeline's evaluate (module docstring); returns the headline metrics.
    Options: threshold (fixed), tune_on (validation prediction folder), n_boot."""
    predictions = Path(predictions)
    table = member_table(predictions)
    labels = resolve_labels(predictions, options.labels)
    tune_on = options.get("tune_on")
    tune = None if tune_on is None else member_table(Path(tune_on))
    ev = evaluate_classification(table, out, labels=labels, threshold=options.get("threshold"),
                                 tune_on=tune, n_boot=int(options.get("n_boot", DEFAULT_N_BOOT)),
                                 seed=options.seed)
    ev.report.update(pipeline=PIPELINE, predictions=str(predictions),
                     model=read_run(predictions).get("model"), **crop_fallback(table))
    ev.report["uncertainty"] = calibration_metrics(read_predictions(predictions), labels, out)
    write_json(Path(out) / METRICS_JSON, em.json_safe(ev.report))
    return {**headline(ev.report), **{k: v for k, v in ev.report["uncertainty"].items()
                                      if k != "plots"}}


def crop_fallback(table: pd.DataFrame) -> dict[str, Any]:
    """How many predicted images fell back to the whole image (no plausible lung mask)."""
    if "cropped" not in table.columns or table.empty:
        return {}
    cropped = table["cropped"].astype(str).str.lower().isin(("true", "1"))
    return {"n_crop_fallback": int((~cropped).sum()),
            "crop_fallback_rate": float((~cropped).mean())}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """Flat numbers of an evaluation report: each metric's value and CI, n, threshold."""
    out: dict[str, Any] = {"pipeline": PIPELINE, "n": report.get("n"),
                           "threshold": report.get("threshold")}
    for name in HEADLINE:
        entry = report.get(name) or {}
        out.update({name: entry.get("value"), f"{name}_ci_low": entry.get("ci_low"),
                    f"{name}_ci_high": entry.get("ci_high")})
    if "crop_fallback_rate" in report:
        out["crop_fallback_rate"] = report["crop_fallback_rate"]
    return out


def report(evaluation: Path, out: Path | None = None) -> Path:
    """The pipeline's report: metrics, members, ROC, confusion, the ensemble's weights and
    the Grad-CAM overlays found beside the evaluation (``../gradcam``)."""
    evaluation = Path(evaluation)
    metrics_file = evaluation / METRICS_JSON
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}
    model = metrics.get("model")
    ensemble = Path(model) if model and Path(model).is_dir() else None
    cams = evaluation.parent / GRADCAM_DIR
    return build_classification_report(evaluation, out or evaluation / REPORT_FILE, ensemble,
                                       cams if cams.is_dir() else None)
