"""The EchoNet-Dynamic run report: metrics, plots and the worst cases with LV outlines.

Reads ``eval_dir/metrics.json``, ``eval_dir/per_sample.csv`` and ``eval_dir/plots`` (from
`cinelab.pipelines.echonet.evaluate.evaluate_echonet`) and ``pred_dir/masks``,
``pred_dir/frames.csv``; writes one self-contained HTML page. Every number in metrics.json
appears in the metric tables, formatted by `cinelab.report.html.format_value`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from cinelab.errors import CinelabError
from cinelab.evaluate import plots
from cinelab.explain.overlay import overlay_masks
from cinelab.pipelines.echonet.evaluate import (
    EF_COLUMNS,
    EF_NAMES,
    METRICS_JSON,
    PER_SAMPLE_CSV,
    read_prediction_dir,
)
from cinelab.report.html import HtmlReport, format_value
from cinelab.utils import read_json

FramesSource = Callable[[str], np.ndarray]
REPORT_HTML = "report.html"
N_WORST = 10
MAX_MARKS_PER_PHASE = 3  # ED and ES frames shown per worst case, each
PRIMARY_EF_ORDER = ("ef", "ef_all_clips", "ef_one_clip")
TILE_SCALE = 2
LABEL_BAND = 14  # pixels above each tile for its label
GAP = 2
ED_RGB, ES_RGB, TEXT_RGB = (230, 40, 40), (40, 120, 240), (255, 255, 255)
FONT_SCALE = 0.35
SECTIONS = (("headline", "Headline metrics"), ("baseline", "Predict-the-mean baseline"),
            ("summary", "Cohort"), ("settings", "Settings"), ("ef", "EF regression"),
            ("classification", "Classification (true EF below threshold)"),
            ("segmentation", "Segmentation (Dice)"), ("phase", "ED/ES frame error (frames)"),
            ("uncertainty", "When not to trust it: EF interval coverage, OOD and beat-spread "
                            "flag rates"))
UNCAPTIONED = ("summary", "settings", "uncertainty")


# --------------------------------------------------------------------------- images


def _base_tile(frame: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """An RGB tile the size of the mask: the video frame when given, else the mask itself."""
    if frame is None:
        return np.repeat(((mask > 0) * 128).astype(np.uint8)[..., None], 3, axis=2)
    rgb = frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=2)
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    if rgb.shape[:2] != mask.shape:
        rgb = cv2.resize(rgb, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_AREA)
    return rgb.copy()


def _labelled(tile: np.ndarray, label: str) -> np.ndarray:
    """Upscale a tile and put a label band above it."""
    big = cv2.resize(tile, None, fx=TILE_SCALE, fy=TILE_SCALE, interpolation=cv2.INTER_NEAREST)
    band = np.zeros((LABEL_BAND, big.shape[1], 3), np.uint8)
    cv2.putText(band, label, (2, LABEL_BAND - 4), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE,
                TEXT_RGB, 1, cv2.LINE_AA)
    return np.concatenate([band, big], axis=0)


def overlay_strip(mask: np.ndarray, marks: Sequence[tuple[str, int]],
                  frames: np.ndarray | None = None) -> bytes:
    """PNG bytes of tiles side by side: LV outline (ED red, ES blue) at each marked frame."""
    tiles = []
    for phase, t in marks:
        if not 0 <= t < len(mask):
            continue
        frame = None if frames is None or t >= len(frames) else frames[t]
        tile = overlay_masks(_base_tile(frame, mask[t])[None], mask[t][None],
                             color=ED_RGB if phase == "ED" else ES_RGB)[0]
        tiles.append(_labelled(tile, f"{phase} {t}"))
        tiles.append(np.zeros((tiles[-1].shape[0], GAP, 3), np.uint8))
    strip = np.concatenate(tiles[:-1], axis=1) if tiles else np.zeros((8, 8, 3), np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding of the overlay strip failed")
    return buf.tobytes()


# --------------------------------------------------------------------------- cases


def primary_ef_column(per_sample: pd.DataFrame, ef_column: str | None = None) -> str | None:
    """The EF column ranking the worst cases: the given one, else the first present."""
    if ef_column is not None:
        return ef_column
    for col in PRIMARY_EF_ORDER:
        err = f"abs_error_{col}"
        if err in per_sample.columns and per_sample[err].notna().any():
            return col
    return None


def worst_cases(per_sample: pd.DataFrame, ef_column: str, n: int = N_WORST) -> pd.DataFrame:
    """The `n` samples with the largest |EF error| (ties by sample_id), largest first."""
    err = f"abs_error_{ef_column}"
    ranked = per_sample.dropna(subset=[err]).sort_values([err, "sample_id"],
                                                         ascending=[False, True], kind="stable")
    return ranked.head(n)


def _phase_marks(frames: pd.DataFrame | None, case: Mapping[str, Any],
                 mask: np.ndarray | None) -> tuple[list[int], list[int]]:
    """Predicted ED and ES frames of a case (flags, else traced frames, else area extremes)."""
    if frames is not None and len(frames):
        ed = frames.loc[frames["is_ed"] == 1, "frame"].astype(int).tolist()
        es = frames.loc[frames["is_es"] == 1, "frame"].astype(int).tolist()
        if ed or es:
            return ed[:MAX_MARKS_PER_PHASE], es[:MAX_MARKS_PER_PHASE]
    if pd.notna(case.get("ed_frame")) and pd.notna(case.get("es_frame")):
        return [int(case["ed_frame"])], [int(case["es_frame"])]
    if mask is not None:
        area = mask.reshape(len(mask), -1).astype(bool).sum(axis=1)
        return [int(area.argmax())], [int(area.argmin())]
    return [], []


def _frames_for(source: FramesSource | None, sid: str, notes: list[str]) -> np.ndarray | None:
    if source is None:
        return None
    try:
        return np.asarray(source(sid))
    except (CinelabError, OSError, ValueError, KeyError) as exc:
        notes.append(f"frames unavailable ({type(exc).__name__}: {exc}); showing the mask only")
        return None


def _case_area(frames: pd.DataFrame | None, mask: np.ndarray | None) -> np.ndarray | None:
    """LV area per frame: frames.csv lv_area (by frame index), else the mask pixel counts."""
    if frames is not None and len(frames):
        ordered = frames.sort_values("frame")
        area = np.full(int(ordered["frame"].max()) + 1, np.nan)
        area[ordered["frame"].astype(int).to_numpy()] = ordered["lv_area"].to_numpy(float)
        return area
    if mask is not None:
        return mask.reshape(len(mask), -1).astype(bool).sum(axis=1).astype(float)
    return None


def _case_caption(case: Mapping[str, Any], ef_column: str) -> str:
    parts = [f"true EF {format_value(case['ef_true'])}"]
    parts += [f"{EF_NAMES[c]} {format_value(case[c])}" for c in EF_COLUMNS if c in case]
    parts.append(f"|error| {format_value(case[f'abs_error_{ef_column}'])} ({EF_NAMES[ef_column]})")
    for key in ("dice_ed", "dice_es", "fallback"):
        if key in case and pd.notna(case[key]) and case[key] != "":
            parts.append(f"{key} {format_value(case[key])}")
    return "; ".join(parts)


def _add_case(rep: HtmlReport, case: Mapping[str, Any], ef_column: str, pred: Any,
              frames_source: FramesSource | None, tmp: Path) -> None:
    sid = str(case["sample_id"])
    rep.section(sid, level=3).paragraph(_case_caption(case, ef_column))
    notes: list[str] = []
    mask = None
    try:
        mask = pred.load_mask(sid)
    except CinelabError as exc:
        notes.append(f"mask unreadable: {exc}")
    own = None if pred.frames is None else pred.frames.loc[pred.frames["sample_id"] == sid]
    ed, es = _phase_marks(own, case, mask)
    items: list[tuple[bytes | Path, str]] = []
    if mask is None:
        notes.append("no predicted mask for this sample")
    else:
        video = _frames_for(frames_source, sid, notes)
        marks = sorted([("ED", t) for t in ed] + [("ES", t) for t in es], key=lambda m: m[1])
        caption = "LV outline at ED (red) and ES (blue)" + ("" if video is not None
                                                            else ", mask only")
        items.append((overlay_strip(mask, marks, video), caption))
    area = _case_area(own, mask)
    if area is not None:
        path = plots.area_curve_plot(area, ed, es, tmp / f"{sid}_area.png", title=f"{sid} LV area")
        items.append((path, "LV area per frame with ED/ES marks"))
    if items:
        rep.gallery(items)
    for note in notes:
        rep.paragraph(note, note=True)


# --------------------------------------------------------------------------- report


def _summary_text(metrics: Mapping[str, Any], ef_column: str | None) -> list[str]:
    s, cfg = metrics.get("summary", {}), metrics.get("settings", {})
    level = 100 * (1 - (cfg.get("alpha") or 0.05))
    lines = [f"{s.get('n_evaluated', 0)} videos evaluated "
             f"({s.get('n_labels_without_prediction', 0)} labelled videos without prediction).",
             f"Intervals: {level:.0f}% percentile bootstrap, {cfg.get('n_boot')} resamples, "
             f"seed {cfg.get('seed')}. Thresholds: "
             + ", ".join(f"{t:g}" for t in cfg.get("thresholds", [])) + " (EF %)."]
    if ef_column and ef_column in metrics.get("ef", {}):
        mae = metrics["ef"][ef_column]["mae"]
        lines.append(f"EF MAE ({EF_NAMES[ef_column]}): {format_value(mae['value'])} "
                     f"[{format_value(mae['ci_low'])}, {format_value(mae['ci_high'])}].")
    base = metrics.get("baseline") or {}
    if base.get("mae"):
        lines.append(f"Predict-the-mean baseline ({base.get('how')}, EF {base.get('ef'):.1f}): "
                     f"MAE {format_value(base['mae']['value'])}, "
                     f"R² {format_value(base['r2']['value'])}.")
    dice = metrics.get("segmentation", {}).get("dice_overall")
    if dice:
        lines.append(f"Dice (ED and ES): {format_value(dice['value'])}.")
    return lines


def _plot_items(eval_dir: Path, made: Mapping[str, str], prefix: str) -> list[tuple[Path, str]]:
    items = []
    for key, rel in made.items():
        if key.startswith(prefix) and (eval_dir / rel).exists():
            col = key[len(prefix):]
            items.append((eval_dir / rel, EF_NAMES.get(col, col)))
    return items


def _metric_sections(rep: HtmlReport, metrics: Mapping[str, Any], eval_dir: Path) -> None:
    made = metrics.get("plots", {})
    level = 100 * (1 - ((metrics.get("settings") or {}).get("alpha") or 0.05))
    for key, heading in SECTIONS:
        if not metrics.get(key):
            continue
        caption = f"{level:.0f}% CI" if key not in UNCAPTIONED else None
        rep.section(heading).metrics_table(metrics[key], caption=caption)
        if key == "ef":
            rep.gallery(_plot_items(eval_dir, made, "scatter_"))
            rep.gallery(_plot_items(eval_dir, made, "bland_altman_"))
        if key == "classification":
            rep.gallery(_plot_items(eval_dir, made, "roc_"))
    if metrics.get("omitted"):
        rep.section("Not computed").bullets([f"{k}: {v}" for k, v in metrics["omitted"].items()])
    if metrics.get("problems"):
        rep.section("Problems").table(pd.DataFrame(metrics["problems"]))


def build_echonet_report(
    out_html: str | Path,
    pred_dir: str | Path,
    eval_dir: str | Path,
    frames_source: FramesSource | None = None,
    n_worst: int = N_WORST,
    ef_column: str | None = None,
    title: str = "EchoNet-Dynamic evaluation",
) -> Path:
    """Write `out_html`: summary, metric tables, plots and the worst cases.

    `frames_source(sample_id)` returns the video frames (T, H, W, C) uint8 in the masks'
    pixel grid (resized when not); without it the worst cases show the masks only.
    """
    eval_dir = Path(eval_dir)
    metrics = read_json(eval_dir / METRICS_JSON)
    per_sample = pd.read_csv(eval_dir / PER_SAMPLE_CSV, dtype={"sample_id": str},
                             keep_default_na=True).fillna({"fallback": ""})
    pred = read_prediction_dir(pred_dir)
    column = primary_ef_column(per_sample, ef_column)
    rep = HtmlReport(title, subtitle=f"predictions: {Path(pred_dir).name}; "
                                     f"evaluation: {eval_dir.name}")
    warnings = [w for w in metrics.get("warnings", []) if w]
    if warnings:
        rep.section("Warnings")
        for text in warnings:
            rep.paragraph(f"WARNING: {text}")
    rep.section("Summary").bullets(_summary_text(metrics, column))
    _metric_sections(rep, metrics, eval_dir)
    if column is not None:
        worst = worst_cases(per_sample, column, n_worst)
        rep.section(f"The {len(worst)} largest EF errors ({EF_NAMES[column]})")
        shown = [c for c in ("sample_id", "ef_true", *EF_COLUMNS, f"abs_error_{column}",
                             "dice_ed", "dice_es") if c in worst.columns]
        rep.table(worst[shown])
        with tempfile.TemporaryDirectory() as tmp:
            for case in worst.to_dict("records"):
                _add_case(rep, case, column, pred, frames_source, Path(tmp))
    return rep.write(Path(out_html))
