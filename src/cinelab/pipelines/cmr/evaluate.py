"""Compare short-axis mask sets: per-image confusion counts, Dice per class, EF agreement.

Any two mask sets (`cinelab.pipelines.cmr.mask_sets.mask_index` layouts) can be compared:
prediction vs truth, observer vs observer, model vs model; each set has its own `LabelMap`,
so a model numbering its classes differently is compared structure by structure (LV, MYO,
RV).

Per image (one 2D slice of one frame) and class: TP, FP, FN, TN pixel counts (class vs rest)
and Dice = 2 TP / (2 TP + FP + FN). Per volume (all slices of a frame) the counts are summed.
Dice is NaN when the class is absent from both masks (not scored, left out of the means).
Images are paired by (patient, phase) when both sets know every phase, else by (patient,
frame), else by image id. Outputs of `evaluate_cmr` under `out`: CONFUSION_CSV, DICE_CSV,
SUMMARY_CSV, VOLUMES_CSV, EF_TABLE_CSV, METRICS_JSON, PROBLEMS_CSV and plots/*.png.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cinelab.errors import InputError, Problem
from cinelab.evaluate import plots
from cinelab.evaluate.metrics import json_safe, surface_distances
from cinelab.measure.volumes import ACDC_LABELS, STRUCTURES, LabelMap
from cinelab.pipelines.cmr.mask_sets import NO_FRAME, load_mask, mask_index
from cinelab.pipelines.cmr.measure import difference_stats, measure_mask_set, paired_measures
from cinelab.utils import atomic_path, write_csv, write_json

COUNT_COLUMNS = ("TP", "FP", "FN", "TN")
KEY_COLUMNS = ("model", "image_id", "patient_id", "phase", "frame")
CONFUSION_CSV, DICE_CSV, SUMMARY_CSV = "confusion.csv", "dice.csv", "dice_summary.csv"
VOLUMES_CSV, EF_TABLE_CSV, METRICS_JSON = "volumes.csv", "ef_differences.csv", "metrics.json"
PROBLEMS_CSV, PLOTS_DIR = "problems.csv", "plots"
PAIRS_CSV, REGIONS_CSV = "confusion_pairs.csv", "dice_regions.csv"
REGIONS = ("base", "mid", "apex")  # thirds of the truth's heart slices, first slice = base
PAIR_NAMES = {"background": "bg", "LV": "lv", "MYO": "my", "RV": "rv"}
VOLUME_VALUES = ("EDV", "ESV", "EF")
ALL_PHASES = "all"
STAGE = "cmr-evaluate"
BOX_FIGSIZE = (6.0, 3.5)
DPI = 100
FONT_SIZE = 8
DICE_AXIS_TOP = 1.02
SETTINGS_JSON = "settings.json"
DEFAULT_MODEL = "model"

MaskSource = str | Path | pd.DataFrame


# --------------------------------------------------------------------------- arrays


def confusion_counts(pred: np.ndarray, true: np.ndarray, pred_labels: LabelMap = ACDC_LABELS,
                     true_labels: LabelMap = ACDC_LABELS) -> pd.DataFrame:
    """Per slice (first axis of (Z, H, W); a 2D mask is one slice) and class present in both
    label maps: slice, class, TP, FP, FN, TN, dice."""
    p, t = np.asarray(pred), np.asarray(true)
    p, t = (p[None], t[None]) if p.ndim == 2 else (p, t)
    if p.shape != t.shape or p.ndim != 3:
        raise InputError(None, "pred/true", "masks of one shape (Z, H, W) or (H, W)",
                         f"{p.shape} vs {t.shape}")
    pv, tv = pred_labels.values(), true_labels.values()
    parts = []
    for name in (s for s in STRUCTURES if s in pv and s in tv):
        a, b = p == pv[name], t == tv[name]
        tp = (a & b).sum(axis=(1, 2))
        fp, fn = (a & ~b).sum(axis=(1, 2)), (~a & b).sum(axis=(1, 2))
        tn = a[0].size - tp - fp - fn
        parts.append(pd.DataFrame({"slice": np.arange(len(p)), "class": name, "TP": tp,
                                   "FP": fp, "FN": fn, "TN": tn}))
    out = pd.concat(parts, ignore_index=True)
    out["dice"] = dice_from_counts(out)
    return out


def class_pair_counts(pred: np.ndarray, true: np.ndarray, pred_labels: LabelMap = ACDC_LABELS,
                      true_labels: LabelMap = ACDC_LABELS) -> dict[str, int]:
    """The K x K class-pair confusion of one image or volume: `<true>_<pred>` -> pixel count
    for every pair of classes (bg, lv, my[, rv]) the two label maps share, e.g. ``lv_my`` =
    true LV pixels labelled myocardium. Values outside a map count as background."""
    p, t = np.asarray(pred), np.asarray(true)
    if p.shape != t.shape:
        raise InputError(None, "pred/true", "masks of one shape", f"{p.shape} vs {t.shape}")
    pv, tv = pred_labels.values(), true_labels.values()
    names = ["background", *(s for s in STRUCTURES if s in pv and s in tv)]
    p_idx, t_idx = np.zeros(p.shape, np.int64), np.zeros(t.shape, np.int64)
    for k, name in enumerate(names[1:], start=1):
        p_idx[p == pv[name]] = k
        t_idx[t == tv[name]] = k
    k = len(names)
    table = np.bincount((t_idx * k + p_idx).ravel(), minlength=k * k).reshape(k, k)
    return {f"{PAIR_NAMES[a]}_{PAIR_NAMES[b]}": int(table[i, j])
            for i, a in enumerate(names) for j, b in enumerate(names)}


def dice_from_counts(counts: pd.DataFrame) -> np.ndarray:
    """2 TP / (2 TP + FP + FN); NaN where the class is in neither mask."""
    tp, fp, fn = (counts[c].to_numpy(dtype=float) for c in ("TP", "FP", "FN"))
    den = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of every slice of (Z, H, W) labels to (H', W')."""
    return np.stack([cv2.resize(s.astype(np.int16), (shape[1], shape[0]),
                                interpolation=cv2.INTER_NEAREST) for s in labels])


# --------------------------------------------------------------------------- pairing


def pair_images(pred: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Inner join of two mask indexes on (patient, phase), (patient, frame) or image id;
    columns of both with suffixes _pred / _truth, plus the shared key columns."""
    for keys in (("patient_id", "phase"), ("patient_id", "frame"), ("image_id",)):
        if all(_known(df, k) for df in (pred, truth) for k in keys):
            break
    else:
        keys = ("image_id",)
    left = pred.rename(columns={c: f"{c}_pred" for c in pred.columns if c not in keys})
    right = truth.rename(columns={c: f"{c}_truth" for c in truth.columns if c not in keys})
    out = left.merge(right, on=list(keys), how="inner")
    for col in ("image_id", "patient_id", "phase", "frame"):
        if col not in out:
            out[col] = out[f"{col}_truth"]
    return out


def _known(df: pd.DataFrame, column: str) -> bool:
    values = df[column]
    return bool(len(values)) and not (values.astype(str).isin(["", str(NO_FRAME)])).any()


def _load_pair(row: pd.Series, spacing: Sequence[float] | None,
               resize: bool) -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth) label stacks of one pair, the prediction resized when asked."""
    return _load_pair_spacing(row, spacing, resize)[:2]


def _load_pair_spacing(row: pd.Series, spacing: Sequence[float] | None, resize: bool
                       ) -> tuple[np.ndarray, np.ndarray, Sequence[float] | None]:
    """_load_pair + the truth's spacing (slice, row, column mm; None when unknown)."""
    pred = load_mask(row["mask_path_pred"], spacing)[0]
    truth, truth_spacing = load_mask(row["mask_path_truth"], spacing)
    if pred.ndim != 3 or truth.ndim != 3:
        raise InputError(row["mask_path_pred"], "labels", "(Z, H, W) stacks to pair",
                         f"{pred.shape} and {truth.shape}")
    if resize and pred.shape[0] == truth.shape[0] and pred.shape != truth.shape:
        pred = resize_labels(pred, truth.shape[1:])
    if pred.shape != truth.shape:
        raise InputError(row["mask_path_pred"], "shape", f"the truth's {truth.shape}",
                         f"{pred.shape}", "predict on the source grid (predict_cmr "
                         "native=True), or resize=True when only the pixel size differs")
    return pred, truth, truth_spacing


def slice_regions(true: np.ndarray) -> np.ndarray:
    """Per slice of a (Z, H, W) truth stack: "base", "mid" or "apex" (the truth's slices
    holding any label split into thirds in slice order, the first slice being the base as
    in ACDC), "" for slices without the heart."""
    regions = np.full(len(true), "", dtype=object)
    heart = np.flatnonzero(np.asarray(true).reshape(len(true), -1).any(axis=1))
    for name, part in zip(REGIONS, np.array_split(heart, len(REGIONS)), strict=True):
        regions[part] = name
    return regions


def region_dice(per_image: pd.DataFrame) -> pd.DataFrame:
    """Dice per model, class and region (base/mid/apex, `slice_regions`), pooled over the
    slices of every volume (the counts summed), with the number of volumes."""
    rows = per_image[per_image["region"] != ""]
    if rows.empty:
        return pd.DataFrame(columns=["model", "class", "region", "n", *COUNT_COLUMNS, "dice"])
    out = rows.groupby(["model", "class", "region"], sort=False).agg(
        n=("image_id", "nunique"), **{c: (c, "sum") for c in COUNT_COLUMNS}).reset_index()
    out["dice"] = dice_from_counts(out)
    return out


def _distances(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float] | None,
               pred_labels: LabelMap, true_labels: LabelMap) -> dict[str, dict[str, float]]:
    """{class: {"hd95": ..., "assd": ...}} of one volume (mm with a spacing, else voxels)."""
    pv, tv = pred_labels.values(), true_labels.values()
    out = {}
    for name in (s for s in STRUCTURES if s in pv and s in tv):
        found = surface_distances(pred == pv[name], true == tv[name], spacing)
        out[name] = {"hd95": found["hd"], "assd": found["assd"]}
    return out


def compare_mask_sets(pred: MaskSource, truth: MaskSource, pred_labels: LabelMap = ACDC_LABELS,
                      truth_labels: LabelMap = ACDC_LABELS, model: str = DEFAULT_MODEL,
                      resize: bool = False
                      ) -> tuple[pd.DataFrame, pd.DataFrame, list[Problem]]:
    """(per-image confusion table, per-volume table with Dice and file paths, problems)."""
    return _compare(pred, truth, pred_labels, truth_labels, model, resize)[:3]


def _compare(pred: MaskSource, truth: MaskSource, pred_labels: LabelMap,
             truth_labels: LabelMap, model: str, resize: bool
             ) -> tuple[pd.DataFrame, pd.DataFrame, list[Problem], pd.DataFrame]:
    """compare_mask_sets + the K x K class-pair counts per volume (`class_pair_counts`)."""
    pairs = pair_images(_index(pred), _index(truth))
    slices, volumes, problems, pair_rows = [], [], [], []
    for _, row in pairs.iterrows():
        try:
            pred_mask, true_mask, spacing = _load_pair_spacing(row, None, resize)
            counts = confusion_counts(pred_mask, true_mask, pred_labels, truth_labels)
            counts["region"] = slice_regions(true_mask)[counts["slice"].to_numpy()]
            distances = _distances(pred_mask, true_mask, spacing, pred_labels, truth_labels)
            pair_counts = class_pair_counts(pred_mask, true_mask, pred_labels, truth_labels)
        except (InputError, OSError, ValueError) as exc:
            problems.append(Problem.from_exception(row["mask_path_pred"], STAGE, exc))
            continue
        keys = {"model": model, **{k: row[k] for k in KEY_COLUMNS[1:]}}
        slices.append(counts.assign(**keys))
        vol = counts.groupby("class", sort=False, as_index=False)[list(COUNT_COLUMNS)].sum()
        vol["dice"] = dice_from_counts(vol)
        vol["hd95"] = [distances[c]["hd95"] for c in vol["class"]]
        vol["assd"] = [distances[c]["assd"] for c in vol["class"]]
        vol["distance_unit"] = "mm" if spacing is not None else "voxels"
        pair_rows.append({**keys, **pair_counts})
        volumes.append(vol.assign(**keys, pred_path=row["mask_path_pred"],
                                  truth_path=row["mask_path_truth"],
                                  image_path=_image_path(row)))
    if not slices:
        first = f"; first: {problems[0].error}" if problems else ""
        raise InputError(None, "pairs", "predicted and true masks of the same images",
                         f"{len(pairs)} pair(s), {len(problems)} unusable{first}")
    per_image = pd.concat(slices, ignore_index=True)
    per_volume = pd.concat(volumes, ignore_index=True)
    return (_ordered(per_image, [*KEY_COLUMNS, "slice", "class"]),
            _ordered(per_volume, [*KEY_COLUMNS, "class"]), problems, pd.DataFrame(pair_rows))


def _index(source: MaskSource) -> pd.DataFrame:
    return source if isinstance(source, pd.DataFrame) else mask_index(source)


def _image_path(row: pd.Series) -> str:
    for col in ("image_path_truth", "image_path_pred"):
        if str(row.get(col, "") or ""):
            return str(row[col])
    return ""


def _ordered(df: pd.DataFrame, first: Sequence[str]) -> pd.DataFrame:
    return df[list(first) + [c for c in df.columns if c not in first]]


# --------------------------------------------------------------------------- summaries


def dice_summary(per_volume: pd.DataFrame) -> pd.DataFrame:
    """Per model, class and phase (and over all phases): n, mean, sd, median Dice."""
    both = pd.concat([per_volume, per_volume.assign(phase=ALL_PHASES)], ignore_index=True)
    both["phase"] = both["phase"].replace("", "unknown")
    stats = both.groupby(["model", "class", "phase"], sort=False)["dice"].agg(
        n="count", mean="mean", sd="std", median="median").reset_index()
    return stats


def volume_agreement(pred: MaskSource, truth: MaskSource, pred_labels: LabelMap,
                     truth_labels: LabelMap, model: str = DEFAULT_MODEL,
                     spacing: Sequence[float] | None = None
                     ) -> tuple[pd.DataFrame, list[Problem]]:
    """Per patient: EDV, ESV, EF of both sets (ED/ES by LV volume) and their differences."""
    p, _, p_problems = measure_mask_set(_index(pred), pred_labels, spacing)
    t, _, t_problems = measure_mask_set(_index(truth), truth_labels, spacing)
    paired = paired_measures(p.assign(model=model), t, values=VOLUME_VALUES)
    return paired, p_problems + t_problems


def dice_box_plot(per_volume: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Box plots of per-volume Dice: one box per class and model."""
    fig = Figure(figsize=BOX_FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups = [(f"{c}\n{m}", g["dice"].dropna().to_numpy())
              for (m, c), g in per_volume.groupby(["model", "class"], sort=False)]
    groups = [(name, values) for name, values in groups if len(values)]
    if groups:
        ax.boxplot([v for _, v in groups], tick_labels=[n for n, _ in groups])
        ax.set_ylim(max(0.0, min(v.min() for _, v in groups) - 0.05), DICE_AXIS_TOP)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.tick_params(labelsize=FONT_SIZE)
    ax.set_ylabel("Dice", fontsize=FONT_SIZE)
    if title:
        ax.set_title(title, fontsize=FONT_SIZE + 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def write_plots(per_volume: pd.DataFrame, volumes: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Dice box plots and, per model, EF scatter and Bland-Altman plots under `out`."""
    made = {"dice_box": dice_box_plot(per_volume, out / "dice_box.png", "Dice per volume")}
    for model, g in volumes.groupby("model", sort=False):
        made[f"ef_scatter_{model}"] = plots.scatter_plot(
            g["EF_true"], g["EF_pred"], out / f"ef_scatter_{model}.png", "EF (%)", str(model))
        made[f"ef_bland_altman_{model}"] = plots.bland_altman_plot(
            g["EF_true"], g["EF_pred"], out / f"ef_bland_altman_{model}.png",
            ("reference EF", f"{model} EF"), str(model))
    return made


# --------------------------------------------------------------------------- pipeline


@dataclass
class CmrEvaluation:
    """What `evaluate_cmr` wrote and computed."""

    out: Path
    confusion: pd.DataFrame
    dice: pd.DataFrame
    summary: pd.DataFrame
    volumes: pd.DataFrame
    ef_table: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # K x K counts per volume
    regions: pd.DataFrame = field(default_factory=pd.DataFrame)  # base/mid/apex Dice


def _labels_for(labels: LabelMap | Mapping[str, LabelMap], model: str) -> LabelMap:
    return labels if isinstance(labels, LabelMap) else labels.get(model, ACDC_LABELS)


def evaluate_cmr(preds: Mapping[str, MaskSource], truth: MaskSource, out: str | Path,
                 pred_labels: LabelMap | Mapping[str, LabelMap] = ACDC_LABELS,
                 truth_labels: LabelMap = ACDC_LABELS, spacing: Sequence[float] | None = None,
                 resize: bool = False) -> CmrEvaluation:
    """Compare each named mask set in `preds` with `truth`; write tables, metrics and plots."""
    if not preds:
        raise InputError(None, "preds", "at least one named mask set", "none")
    out = Path(out)
    truth_index = _index(truth)
    confusion, dice, volumes, problems, pair_tables = [], [], [], [], []
    for model, source in preds.items():
        labels = _labels_for(pred_labels, model)
        index = _index(source)
        per_image, per_volume, found, pair_table = _compare(index, truth_index, labels,
                                                            truth_labels, model, resize)
        pair_tables.append(pair_table)
        paired, vol_problems = volume_agreement(index, truth_index, labels, truth_labels,
                                                model, spacing)
        confusion.append(per_image)
        dice.append(per_volume)
        volumes.append(paired)
        problems += found + vol_problems
    result = CmrEvaluation(out, pd.concat(confusion, ignore_index=True),
                           pd.concat(dice, ignore_index=True), pd.DataFrame(),
                           pd.concat(volumes, ignore_index=True), pd.DataFrame(),
                           problems=problems, pairs=pd.concat(pair_tables, ignore_index=True))
    result.summary = dice_summary(result.dice)
    result.regions = region_dice(result.confusion)
    result.ef_table = difference_stats(result.volumes, "EF_absdiff", by="model")
    _write(result)
    write_json(out / SETTINGS_JSON, {
        "truth": str(truth) if not isinstance(truth, pd.DataFrame) else "table",
        "truth_labels": truth_labels.to_text(), "resize": resize,
        "spacing": None if spacing is None else list(spacing),
        "preds": {m: {"source": str(s) if not isinstance(s, pd.DataFrame) else "table",
                      "labels": _labels_for(pred_labels, m).to_text()}
                  for m, s in preds.items()}})
    return result


def _write(result: CmrEvaluation) -> None:
    out = result.out
    write_csv(result.confusion, out / CONFUSION_CSV)
    write_csv(result.dice, out / DICE_CSV)
    write_csv(result.pairs, out / PAIRS_CSV)
    write_csv(result.regions, out / REGIONS_CSV)
    write_csv(result.summary, out / SUMMARY_CSV)
    write_csv(result.volumes, out / VOLUMES_CSV)
    write_csv(result.ef_table, out / EF_TABLE_CSV)
    write_csv(pd.DataFrame([vars(p) for p in result.problems],
                           columns=list(Problem.__dataclass_fields__)), out / PROBLEMS_CSV)
    result.plots = write_plots(result.dice, result.volumes, out / PLOTS_DIR)
    write_json(out / METRICS_JSON, json_safe(cmr_metrics(result)))


def cmr_metrics(result: CmrEvaluation) -> dict[str, object]:
    """{model: {dice: {class: {phase: mean}}, ef_absdiff: {mean, sd, median, iqr}, n}}."""
    metrics: dict[str, object] = {}
    for model, g in result.summary.groupby("model", sort=False):
        dice = {str(c): {str(p): float(m) for p, m in zip(gc["phase"], gc["mean"], strict=True)}
                for c, gc in g.groupby("class", sort=False)}
        ef = result.ef_table[result.ef_table["model"] == model]
        metrics[str(model)] = {
            "dice": dice,
            "ef_absdiff": ef[["mean", "sd", "median", "iqr"]].iloc[0].to_dict() if len(ef)
            else {},
            "class_pairs": _pair_totals(result.pairs, model),
            "distances": _distance_means(result.dice, model),
            "dice_regions": {f"{r['class']}_{r['region']}": float(r["dice"]) for _, r in
                             result.regions[result.regions["model"] == model].iterrows()}
            if len(result.regions) else {},
            "n_images": int(result.dice.loc[result.dice["model"] == model, "image_id"]
                            .nunique())}
    return metrics


def _pair_totals(pairs: pd.DataFrame, model: object) -> dict[str, int]:
    """The K x K class-pair counts of one model summed over its volumes."""
    if pairs.empty:
        return {}
    rows = pairs[pairs["model"] == model]
    columns = [c for c in rows.columns if c not in KEY_COLUMNS]
    return {c: int(rows[c].sum()) for c in columns}


def _distance_means(dice: pd.DataFrame, model: object) -> dict[str, dict[str, float]]:
    """{class: {"hd95": mean, "assd": mean}} over one model's volumes (NaN left out)."""
    rows = dice[dice["model"] == model]
    if "hd95" not in rows:
        return {}
    return {str(c): {"hd95": float(g["hd95"].mean()), "assd": float(g["assd"].mean())}
            for c, g in rows.groupby("class", sort=False)}
