"""The RV-failure report: one self-contained HTML page of an evaluation.

Sections: what was predicted (clips averaged, threshold), metrics per video and per patient
with bootstrap CIs, the ROC plot, confusion counts, fused vs each stream alone, calibration
(ECE, reliability diagram), training metrics (when the run folder is known), the per-patient
table and the guided-backpropagation strips. Everything shown comes from the evaluation,
prediction and saliency folders, which hold pseudonymous ids only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate.classification import ENSEMBLE_NAME, MEMBERS_CSV, confusion_table
from cinelab.infer.contract import read_run
from cinelab.pipelines.rvf.evaluate import METRICS_FILE, PATIENTS_FILE, ROC_FILE
from cinelab.pipelines.rvf.uncertainty import RELIABILITY_PNG
from cinelab.report.html import HtmlReport, format_value
from cinelab.utils import read_json

REPORT_FILE = "report.html"
SALIENCY_DIR = "saliency"
TITLE = "RV failure from echo: two-stream video classifier"
MAX_PATIENT_ROWS = 500
MAX_STRIPS = 24
RATE_KEYS = ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv")
TRAIN_METRICS = ("best_score", "best_epoch", "epochs", "val/auc", "val/loss", "train/loss")


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.exists() else {}


def _metric_block(report: dict[str, Any]) -> dict[str, Any]:
    """The rates with CIs and the counts of one binary_report."""
    keep = {k: report[k] for k in RATE_KEYS if k in report}
    keep.update({k: report[k] for k in ("n", "n_pos") if k in report})
    return keep


def confusion_by_level(metrics: dict[str, Any]) -> pd.DataFrame:
    """Confusion counts of the video and patient reports, one block per level."""
    tables = [confusion_table(metrics[level]).assign(level=level)
              for level in ("video", "patient") if "tp" in metrics.get(level, {})]
    if not tables:
        return pd.DataFrame()
    table = pd.concat(tables, ignore_index=True)
    return table[["level", *[c for c in table.columns if c != "level"]]]


def _strips(saliency_dir: Path) -> list[tuple[Path, str]]:
    index = saliency_dir / "saliency.csv"
    if not index.exists():
        return []
    table = pd.read_csv(index, dtype={"sample_id": str})
    items = []
    for row in table.head(MAX_STRIPS).to_dict("records"):
        prob = row.get("prob")
        text = "" if pd.isna(prob) else f", p={float(prob):.2f}"
        items.append((saliency_dir / str(row["strip"]),
                      f"{row['sample_id']} {row['stream']} (label {row['label']}{text})"))
    return [(p, c) for p, c in items if p.exists()]


def rvf_report(eval_dir: str | Path, out: str | Path | None = None,
               saliency_dir: str | Path | None = None, run_dir: str | Path | None = None,
               title: str = TITLE) -> Path:
    """Write the report of an evaluation folder (default `<eval_dir>/report.html`).

    The training run folder defaults to the predicted checkpoint's folder (run.json of the
    predictions), the saliency folder to a `saliency` folder beside `eval_dir`."""
    eval_dir = Path(eval_dir)
    metrics_path = eval_dir / METRICS_FILE
    if not metrics_path.exists():
        raise InputError(metrics_path, "metrics", "an evaluation folder written by "
                         "`cinelab evaluate`", "no metrics.json there")
    metrics = read_json(metrics_path)
    run = read_run(metrics["predictions"]) if metrics.get("predictions") else {}
    page = HtmlReport(title, f"split: {run.get('split') or 'all'}; {run.get('clips')} clips "
                             f"averaged per video (seed {run.get('seed')}); threshold "
                             f"{format_value(metrics.get('threshold'))} "
                             f"({metrics.get('threshold_source', 'recorded')})")
    _metrics_section(page, metrics)
    if (eval_dir / ROC_FILE).exists():
        page.image(eval_dir / ROC_FILE, "ROC curves (videos, patients)")
    _streams_section(page, eval_dir)
    _uncertainty_section(page, eval_dir, metrics)
    run_dir = run_dir or (Path(run["checkpoint"]).parent if run.get("checkpoint") else None)
    if run_dir is not None:
        _training_section(page, Path(run_dir))
    _patients_section(page, eval_dir)
    saliency_dir = Path(saliency_dir) if saliency_dir else eval_dir.parent / SALIENCY_DIR
    if saliency_dir.is_dir():
        _saliency_section(page, saliency_dir)
    return page.write(Path(out) if out is not None else eval_dir / REPORT_FILE)


def report_rvf(eval_dir: Path, out: Path | None = None) -> Path:
    """The pipeline's report (saliency and run folders found beside the evaluation)."""
    return rvf_report(eval_dir, out)


def _streams_section(page: HtmlReport, eval_dir: Path) -> None:
    path = eval_dir / MEMBERS_CSV
    if path.exists():
        table = pd.read_csv(path)
        if len(table) > 1:
            table["model"] = table["model"].replace({ENSEMBLE_NAME: "fused"})
            page.section("Streams")
            page.table(table, caption="fused model vs each stream alone (95% bootstrap CI)")


def _uncertainty_section(page: HtmlReport, eval_dir: Path, metrics: dict[str, Any]) -> None:
    found = {k: v for k, v in (metrics.get("uncertainty") or {}).items() if k != "plots"}
    if not found:
        return
    page.section("Calibration and uncertainty")
    page.paragraph(calibration_text(found), note=not found.get("calibrated", True))
    page.metrics_table(found, caption="ECE after calibration (ece: of the probability) and "
                       "before (ece_raw: of the model's raw probability) on these videos; "
                       "val_ece_before/after on the validation videos the temperature was "
                       "fitted on; mean member disagreement; OOD-flagged fraction")
    if (eval_dir / RELIABILITY_PNG).exists():
        page.image(eval_dir / RELIABILITY_PNG, "reliability diagram (raw vs calibrated)")


def calibration_text(found: dict[str, Any]) -> str:
    """One sentence: calibrated (ECE before -> after) or why not."""
    if found.get("calibrated") is False:
        return f"Probabilities are NOT calibrated: {found.get('calibration_note') or 'no note'}"
    if "ece_raw" not in found:
        return "Probabilities are the model's own (no calibration recorded)."
    return (f"Calibrated probabilities (temperature {format_value(found.get('temperature'))}):"
            f" ECE {format_value(found['ece_raw'])} before, {format_value(found.get('ece'))}"
            " after.")


def _metrics_section(page: HtmlReport, metrics: dict[str, Any]) -> None:
    page.section("Metrics")
    for level in ("video", "patient"):
        rep = metrics.get(level, {})
        if "auc" in rep:
            page.metrics_table(_metric_block(rep), caption=f"per {level} (95% bootstrap CI)")
        else:
            page.paragraph(f"per {level}: {rep.get('note', 'no labels')}", note=True)
    confusion = confusion_by_level(metrics)
    if len(confusion):
        page.table(confusion, caption="confusion matrices")


def _training_section(page: HtmlReport, run_dir: Path) -> None:
    train = _read_json(run_dir / "metrics.json")
    if train:
        page.section("Training")
        page.metrics_table({k: train[k] for k in TRAIN_METRICS if k in train},
                           caption=f"monitor {train.get('monitor')} ({train.get('mode')})")


def _patients_section(page: HtmlReport, eval_dir: Path) -> None:
    path = eval_dir / PATIENTS_FILE
    if path.exists():
        table = pd.read_csv(path, dtype={"patient_id": str})
        table["truth"] = table["truth"].astype("Int64")  # 0/1, or <NA> when unlabelled
        page.section("Patients")
        page.table(table.head(MAX_PATIENT_ROWS), caption="mean probability over each "
                   "patient's videos" + (f" (first {MAX_PATIENT_ROWS})"
                                         if len(table) > MAX_PATIENT_ROWS else ""))


def _saliency_section(page: HtmlReport, saliency_dir: Path) -> None:
    strips = _strips(saliency_dir)
    page.section("Guided backpropagation")
    if not strips:
        page.paragraph("no saliency strips found", note=True)
        return
    page.paragraph("Saliency over the greyscale echo for each stream; videos (.avi) beside "
                   "the strips in the saliency folder.", note=True)
    for path, caption in strips:
        page.image(path, caption)
