"""A one-page HTML report of a binary classifier or ensemble evaluation.

Reads what `cinelab.evaluate.classification.evaluate_classification` wrote (metrics.json,
members.csv, confusion.csv, roc.png), optionally the ensemble folder (members.csv with the
fitted weights, ensemble.json) and Grad-CAM PNGs, and writes one self-contained HTML file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate.classification import CONFUSION_CSV, MEMBERS_CSV, METRICS_JSON, ROC_PNG
from cinelab.report.html import HtmlReport
from cinelab.utils import read_json

SUMMARY_METRICS = ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv")
MAX_GRADCAMS = 12
ENSEMBLE_FILE = "ensemble.json"
WEIGHT_COLUMNS = ["member", "model", "size", "crop", "weight", "val_auc"]


def _entry(metrics: dict[str, Any], name: str) -> str:
    entry = metrics.get(name) or {}
    value, lo, hi = (entry.get(k) for k in ("value", "ci_low", "ci_high"))
    if value is None:
        return f"{name}: n/a"
    ci = f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
    return f"{name}: {value:.3f}{ci}"


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """Bullet lines: sample counts, threshold and the headline metrics with CIs."""
    thr = metrics.get("threshold")
    lines = [f"{metrics.get('n', 0)} labelled images ({metrics.get('n_pos', 0)} positive); "
             f"{metrics.get('n_unscored', 0)} unreadable, {metrics.get('n_unlabelled', 0)} "
             "without a label",
             f"threshold {thr:.3f} ({metrics.get('threshold_source', 'given')})"
             if thr is not None else "threshold: n/a"]
    return lines + crop_lines(metrics) + calibration_lines(metrics) + \
        [_entry(metrics, m) for m in SUMMARY_METRICS]


def calibration_lines(metrics: dict[str, Any]) -> list[str]:
    """Whether the probabilities are calibrated (and OOD-flagged), when recorded
    (``calibration``: what was fitted, or the note why not)."""
    cal = metrics.get("calibration")
    if not isinstance(cal, dict):
        return []
    if not cal.get("calibrated"):
        return [str(cal.get("note") or "not calibrated")]
    ood = f"OOD flag: {cal['ood']}" if cal.get("ood") else \
        str(cal.get("ood_note") or "no OOD flag")
    return [f"calibrated on the {cal.get('split')} split: temperature "
            f"{float(cal['temperature']):.3f}, ECE {float(cal['ece_before']):.3f} -> "
            f"{float(cal['ece_after']):.3f}; {ood}"]


def crop_lines(metrics: dict[str, Any]) -> list[str]:
    """The lung-crop fallback line (images classified whole, without a plausible lung
    mask), when the evaluation recorded it."""
    rate = metrics.get("crop_fallback_rate")
    if rate is None:
        return []
    return [f"lung crop fell back to the whole image for {metrics.get('n_crop_fallback', 0)} "
            f"image(s) ({100 * float(rate):.1f} %): no plausible lung mask"]


def _members_table(members: pd.DataFrame) -> pd.DataFrame:
    """model, n, then each metric as its value and its 95% CI as "low-high" text."""
    out = members.loc[:, [c for c in ("model", "n") if c in members.columns]].copy()
    for metric in ("auc", "sensitivity", "specificity", "accuracy"):
        if metric not in members.columns:
            continue
        out[metric] = members[metric]
        lo, hi = members.get(f"{metric}_ci_low"), members.get(f"{metric}_ci_high")
        if lo is not None and hi is not None:
            out[f"{metric} CI"] = [f"{a:.3f}-{b:.3f}" if pd.notna(a) and pd.notna(b) else "n/a"
                                   for a, b in zip(lo, hi, strict=True)]
    return out


def _weights_section(rep: HtmlReport, ensemble_dir: Path) -> None:
    table = ensemble_dir / MEMBERS_CSV
    if table.is_file():
        df = pd.read_csv(table)
        rep.section("Ensemble weights")
        rep.table(df.loc[:, [c for c in WEIGHT_COLUMNS if c in df.columns]],
                  caption="members, their fitted weights and validation AUCs")
    if (ensemble_dir / ENSEMBLE_FILE).is_file():
        info = read_json(ensemble_dir / ENSEMBLE_FILE)
        details = info.get("details", {})
        text = f"method {info.get('method')}"
        if info.get("method") == "search":
            text += (f": best of {details.get('n_draws')} seeded random weight draws by "
                     f"validation {details.get('criterion')} (DeepCOVID-XR's search)")
        if info.get("method") == "bmc":
            text += (f": Bayesian model combination, {details.get('prior', 'Dirichlet prior')}, "
                     f"{details.get('n_samples')} samples x {details.get('rounds')} rounds, "
                     f"{details.get('likelihood', '')} likelihood on validation predictions")
        val_auc, mean_auc = details.get("val_auc"), details.get("val_auc_mean")
        if val_auc is not None and mean_auc is not None:
            text += f"; validation AUC {val_auc:.3f} (plain average {mean_auc:.3f})"
        rep.paragraph(text, note=True)


def _gradcam_items(gradcams: Sequence[str | Path] | str | Path | None) -> list[Path]:
    if gradcams is None:
        return []
    if isinstance(gradcams, str | Path):
        folder = Path(gradcams)
        return sorted(folder.glob("*.png"))[:MAX_GRADCAMS] if folder.is_dir() else []
    return [Path(p) for p in gradcams][:MAX_GRADCAMS]


def build_classification_report(eval_dir: str | Path, out_html: str | Path,
                                ensemble_dir: str | Path | None = None,
                                gradcams: Sequence[str | Path] | str | Path | None = None,
                                title: str = "Chest X-ray ensemble") -> Path:
    """Write the report page; returns its path."""
    eval_dir = Path(eval_dir)
    if not (eval_dir / METRICS_JSON).is_file():
        raise InputError(eval_dir, METRICS_JSON, "an evaluation folder (cinelab cxr evaluate)",
                         "no metrics.json")
    metrics = read_json(eval_dir / METRICS_JSON)
    rep = HtmlReport(title, subtitle=f"evaluation: {eval_dir}")
    rep.section("Summary").bullets(summary_lines(metrics))
    rep.section("Metrics").metrics_table(
        {k: metrics[k] for k in SUMMARY_METRICS if k in metrics},
        caption="ensemble, 95% bootstrap confidence intervals")
    if (eval_dir / MEMBERS_CSV).is_file():
        rep.section("Members vs ensemble")
        rep.table(_members_table(pd.read_csv(eval_dir / MEMBERS_CSV)),
                  caption="at the ensemble's threshold")
    if (eval_dir / ROC_PNG).is_file():
        rep.section("ROC").image(eval_dir / ROC_PNG, caption="ROC curves with AUC")
    if (eval_dir / CONFUSION_CSV).is_file():
        rep.section("Confusion matrix").table(pd.read_csv(eval_dir / CONFUSION_CSV),
                                              caption="rows: truth; columns: prediction")
    if ensemble_dir is not None:
        _weights_section(rep, Path(ensemble_dir))
    items = _gradcam_items(gradcams)
    if items:
        rep.section("Grad-CAM")
        rep.paragraph("Weighted ensemble Grad-CAM on the original radiographs (each member's "
                      "map scaled to [0, 1], then combined with the ensemble weights).",
                      note=True)
        rep.gallery([(p, p.stem) for p in items])
    return rep.write(out_html)
