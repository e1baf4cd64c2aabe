"""The cine MRI segmentation report: Dice and EF tables, plots and the worst cases.

Reads what `cinelab.pipelines.cmr.evaluate.evaluate_cmr` wrote into `eval_dir` (dice.csv,
dice_summary.csv, volumes.csv, ef_differences.csv, settings.json, plots/) and writes one
self-contained HTML page (every image embedded). Worst cases are the volumes with the lowest
Dice of WORST_CLASS per model, shown slice by slice: the image (or a grey mask when there is
none) with the reference outlines in green and the compared set's in red (endocardium) and
orange (epicardium).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.explain.overlay import frame_strip, overlay_masks
from cinelab.measure.volumes import ACDC_LABELS, LabelMap, parse_label_map
from cinelab.pipelines.cmr.evaluate import (
    DICE_CSV,
    EF_TABLE_CSV,
    PLOTS_DIR,
    SETTINGS_JSON,
    SUMMARY_CSV,
    VOLUMES_CSV,
)
from cinelab.pipelines.cmr.mask_sets import load_image, load_mask
from cinelab.report.html import HtmlReport
from cinelab.utils import read_json

REPORT_HTML = "report.html"
N_WORST = 3
WORST_CLASS = "LV"
MAX_SLICES = 6
TILE_HEIGHT = 128  # slices smaller than this are enlarged by a whole factor
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0
MASK_GREY = 90
TRUTH_RGB, PRED_ENDO_RGB, PRED_EPI_RGB = (40, 220, 40), (240, 40, 40), (250, 160, 30)
TRUTH_EPI_RGB = (20, 140, 20)
VOLUME_COLUMNS = ("model", "patient_id", "EDV_true", "EDV_pred", "ESV_true", "ESV_pred",
                  "EF_true", "EF_pred", "EF_absdiff")
MAX_VOLUME_ROWS = 60


# --------------------------------------------------------------------------- overlays


def _grey(image: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """uint8 (Z, H, W): the image scaled by percentiles, or the mask as grey levels."""
    if image is None or image.shape != mask.shape:
        return ((mask > 0) * MASK_GREY).astype(np.uint8)
    lo, hi = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def _shown_slices(truth: np.ndarray, pred: np.ndarray, limit: int = MAX_SLICES) -> list[int]:
    """Slices where either mask has a label, at most `limit`, evenly spread."""
    present = [k for k in range(len(truth)) if truth[k].any() or pred[k].any()]
    present = present or list(range(len(truth)))
    if len(present) <= limit:
        return present
    picks = np.linspace(0, len(present) - 1, limit).round().astype(int)
    return [present[i] for i in picks]


def case_overlay(truth: np.ndarray, pred: np.ndarray, image: np.ndarray | None = None,
                 truth_labels: LabelMap = ACDC_LABELS, pred_labels: LabelMap = ACDC_LABELS
                 ) -> bytes:
    """PNG bytes: chosen slices side by side, LV endo- and epicardium of both mask sets."""
    if truth.shape != pred.shape:
        raise InputError(None, "pred/truth", "label stacks of one shape",
                         f"{pred.shape} vs {truth.shape}")
    rgb = _grey(image, truth)
    drawn = [(truth, truth_labels, TRUTH_RGB, TRUTH_EPI_RGB),
             (pred, pred_labels, PRED_ENDO_RGB, PRED_EPI_RGB)]
    for labels, lmap, endo_rgb, epi_rgb in drawn:
        endo = labels == lmap.lv
        rgb = overlay_masks(rgb, endo | (labels == lmap.myo), epi_rgb)
        rgb = overlay_masks(rgb, endo, endo_rgb)
    strip = frame_strip(rgb, _shown_slices(truth, pred))
    scale = max(1, TILE_HEIGHT // strip.shape[0])
    big = cv2.resize(strip, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(big, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("PNG encoding of the case overlay failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- tables


def _read(eval_dir: Path, name: str) -> pd.DataFrame:
    path = eval_dir / name
    if not path.is_file():
        raise InputError(path, "file", "an evaluation output (run `cinelab cmr evaluate`)",
                         "nothing at that path")
    return pd.read_csv(path, dtype={"patient_id": str, "image_id": str}, keep_default_na=True)


def dice_pivot(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd Dice: one row per model and phase, one column per class."""
    text = summary.assign(value=[f"{m:.3f} ± {s:.3f}" if np.isfinite(s) else f"{m:.3f}"
                                 for m, s in zip(summary["mean"], summary["sd"], strict=True)])
    wide = text.pivot_table(index=["model", "phase"], columns="class", values="value",
                            aggfunc="first", sort=False)
    return wide.reset_index().rename_axis(columns=None)


def _summary_lines(summary: pd.DataFrame, ef_table: pd.DataFrame) -> list[str]:
    lines = []
    for model, g in summary[summary["phase"] == "all"].groupby("model", sort=False):
        dice = ", ".join(f"{c} {m:.3f}" for c, m in zip(g["class"], g["mean"], strict=True))
        ef = ef_table[ef_table["model"] == model]
        ef_text = (f"; |EF difference| {ef['mean'].iloc[0]:.2f} ± {ef['sd'].iloc[0]:.2f} "
                   f"points (n {int(ef['n'].iloc[0])})" if len(ef) else "")
        lines.append(f"{model}: mean Dice {dice}{ef_text}")
    return lines


# --------------------------------------------------------------------------- page


def _settings(eval_dir: Path) -> dict:
    path = eval_dir / SETTINGS_JSON
    return read_json(path) if path.is_file() else {}


def _worst_cases(rep: HtmlReport, dice: pd.DataFrame, settings: dict, n_worst: int) -> None:
    rep.section(f"Worst cases (lowest {WORST_CLASS} Dice)")
    rep.paragraph("Green: reference endo-/epicardium; red/orange: compared set.", note=True)
    truth_labels = parse_label_map(settings.get("truth_labels"))
    preds = settings.get("preds", {})
    scored = dice[(dice["class"] == WORST_CLASS) & dice["dice"].notna()]
    for model, g in scored.groupby("model", sort=False):
        pred_labels = parse_label_map(preds.get(str(model), {}).get("labels"))
        items = []
        for _, case in g.nsmallest(n_worst, "dice").iterrows():
            try:
                truth = load_mask(case["truth_path"])[0]
                pred = load_mask(case["pred_path"])[0]
                image_path = case.get("image_path")
                image = load_image(image_path) if isinstance(image_path, str) else None
                png = case_overlay(truth, pred, image, truth_labels, pred_labels)
            except (InputError, OSError, ValueError) as exc:
                rep.paragraph(f"{model} {case['image_id']}: no overlay ({exc})", note=True)
                continue
            items.append((png, f"{model} {case['image_id']}: {WORST_CLASS} Dice "
                               f"{case['dice']:.3f}"))
        if items:
            rep.gallery(items, pixelated=True)


def build_cmr_report(eval_dir: str | Path, out: str | Path | None = None,
                     n_worst: int = N_WORST, title: str = "Cine MRI segmentation") -> Path:
    """Write the report of an evaluated mask comparison; returns its path."""
    eval_dir = Path(eval_dir)
    dice, summary = _read(eval_dir, DICE_CSV), _read(eval_dir, SUMMARY_CSV)
    volumes, ef_table = _read(eval_dir, VOLUMES_CSV), _read(eval_dir, EF_TABLE_CSV)
    settings = _settings(eval_dir)
    models = list(dict.fromkeys(summary["model"].astype(str)))
    rep = HtmlReport(title, f"{', '.join(models)} vs reference {settings.get('truth', '')}; "
                            f"{dice['image_id'].nunique()} volumes")
    rep.section("Summary").bullets(_summary_lines(summary, ef_table))
    rep.section("Dice per class").table(dice_pivot(summary), "mean ± sd per volume")
    rep.table(summary, "n, mean, sd, median Dice per model, class and phase")
    rep.section("EF absolute difference (percentage points)").table(
        ef_table, "|EF predicted - EF reference| per model")
    plots = sorted((eval_dir / PLOTS_DIR).glob("*.png"))
    if plots:
        rep.section("Plots").gallery([(p, p.stem.replace("_", " ")) for p in plots])
    shown = volumes[[c for c in VOLUME_COLUMNS if c in volumes.columns]]
    rep.section("Volumes per patient (mL, or voxels without spacing)").table(
        shown.head(MAX_VOLUME_ROWS), f"first {min(len(shown), MAX_VOLUME_ROWS)} of "
                                     f"{len(shown)} rows; all in {VOLUMES_CSV}")
    if n_worst > 0:
        _worst_cases(rep, dice, settings, n_worst)
    return rep.write(Path(out) if out is not None else eval_dir / REPORT_HTML)
