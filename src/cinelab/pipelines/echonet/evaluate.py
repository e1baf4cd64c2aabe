"""EchoNet-Dynamic evaluation: a prediction directory + labels (+ tracings) -> metrics and plots.

Prediction directory contract (written by the predict step):

- ``predictions.csv`` (the contract): sample_id, patient_id, ef (beat by beat), ef_all_clips,
  ef_one_clip, n_beats, fallback, n_frames, fps (EF columns absent or all empty are skipped);
- ``beats.csv``: sample_id, beat, ed_frame, es_frame, ed_area, es_area, ef (optional);
- ``frames.csv``: sample_id, frame, lv_area, is_ed, is_es (optional);
- ``masks/<sample_id>.npz`` with key ``mask``: uint8 (T, H, W), every frame (optional).

Metric sections of ``metrics.json`` (each metric a {value, ci_low, ci_high} entry):
``ef.<column>`` (MAE, RMSE, R², bias), ``classification.<column>.ef_lt_<t>`` (truth EF < t
positive, predicted EF the score), ``segmentation`` (Dice at the traced frames; ED is the
traced frame with the larger area; ``*_pooled`` = 2 Σ|A∩B| / Σ(|A|+|B|) over samples as in
EchoNet-Dynamic), ``phase`` (frames from each traced ED/ES frame to the nearest predicted
ED/ES flag). Sections that cannot be computed are listed under ``omitted`` with the reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError, Problem, UnreadableFileError
from cinelab.evaluate import metrics as em
from cinelab.evaluate import plots
from cinelab.measure.ef import tracing_area, tracing_mask
from cinelab.utils import atomic_path, write_json

EF_COLUMNS = ("ef", "ef_all_clips", "ef_one_clip")
EF_NAMES = {"ef": "beat-by-beat", "ef_all_clips": "all clips", "ef_one_clip": "one clip"}
FRAME_COLUMNS = ("sample_id", "frame", "lv_area", "is_ed", "is_es")
BEAT_COLUMNS = ("sample_id", "beat", "ed_frame", "es_frame", "ed_area", "es_area", "ef")
LABEL_COLUMNS = ("sample_id", "EF")
TRACING_COLUMNS = ("sample_id", "frame", "X1", "Y1", "X2", "Y2")
LINE_COLUMNS = ["X1", "Y1", "X2", "Y2"]
TRUTH_MASK_COLUMNS = ("sample_id", "mask_path")
DEFAULT_THRESHOLDS = (35, 40, 45, 50)
MASK_KEY = "mask"
PREDICTIONS_CSV, BEATS_CSV, FRAMES_CSV = "predictions.csv", "beats.csv", "frames.csv"
MASKS_DIR, OVERLAYS_DIR, PLOTS_DIR = "masks", "overlays", "plots"
METRICS_JSON, METRICS_CSV, PER_SAMPLE_CSV = "metrics.json", "metrics.csv", "per_sample.csv"
STAGE = "evaluate.echonet"
PHASES = ("ed", "es")


@dataclass(frozen=True)
class PredictionDir:
    """The tables of a prediction directory (beats/frames None when absent)."""

    root: Path
    predictions: pd.DataFrame
    beats: pd.DataFrame | None
    frames: pd.DataFrame | None

    def mask_path(self, sample_id: str) -> Path:
        """Where the predicted mask of a sample lives."""
        return self.root / MASKS_DIR / f"{sample_id}.npz"

    def load_mask(self, sample_id: str) -> np.ndarray | None:
        """Predicted (T, H, W) mask of a sample, or None when its file is absent."""
        path = self.mask_path(sample_id)
        return load_mask(path) if path.exists() else None


def load_mask(path: str | Path) -> np.ndarray:
    """The (T, H, W) array under key 'mask' of an .npz file, or a prepared store's .npy mask."""
    if Path(path).suffix == ".npy":
        return np.load(path, mmap_mode="r")
    try:
        with np.load(path) as data:
            if MASK_KEY not in data:
                raise InputError(path, "key", f"'{MASK_KEY}'", str(sorted(data.files)))
            mask = np.asarray(data[MASK_KEY])
    except (OSError, ValueError) as exc:
        raise UnreadableFileError(path, "file", "an .npz archive", str(exc)) from exc
    if mask.ndim != 3:
        raise InputError(path, MASK_KEY, "a (T, H, W) array", f"shape {mask.shape}")
    return mask


def _check_columns(df: pd.DataFrame, required: Iterable[str], where: str | Path | None,
                   what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(where, "columns", f"{what} columns {list(required)}",
                         f"missing {missing} (have {list(df.columns)})")


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"sample_id": str, "fallback": str}, keep_default_na=True)
    _check_columns(df, required, path, path.name)
    return df


def read_prediction_dir(pred_dir: str | Path) -> PredictionDir:
    """Read predictions.csv (required) and beats.csv / frames.csv (when present)."""
    root = Path(pred_dir)
    path = root / PREDICTIONS_CSV
    if not path.exists():
        raise InputError(path, "file", "a predictions.csv", "no such file",
                         "point pred_dir at the output folder of the predict step")
    preds = _read_csv(path, ["sample_id"])
    if not any(c in preds.columns for c in EF_COLUMNS):
        raise InputError(path, "columns", f"at least one of {list(EF_COLUMNS)}",
                         str(list(preds.columns)))
    if "fallback" in preds.columns:
        preds["fallback"] = preds["fallback"].fillna("")
    beats = _read_csv(root / BEATS_CSV, BEAT_COLUMNS) if (root / BEATS_CSV).exists() else None
    frames = _read_csv(root / FRAMES_CSV, FRAME_COLUMNS) if (root / FRAMES_CSV).exists() else None
    return PredictionDir(root, preds, beats, frames)


def _join_labels(preds: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Predictions with the true EF (inner join on sample_id) and the counts."""
    _check_columns(labels, LABEL_COLUMNS, None, "labels")
    keep = [c for c in ("sample_id", "EF", "split") if c in labels.columns]
    lab = labels.loc[:, keep].rename(columns={"EF": "ef_true"})
    lab["sample_id"] = lab["sample_id"].astype(str)
    table = lab.merge(preds, on="sample_id", how="inner")
    if table.empty:
        raise InputError(None, "sample_id", "prediction ids that match label ids",
                         f"no overlap (predictions e.g. {preds.sample_id.head(3).tolist()}, "
                         f"labels e.g. {lab.sample_id.head(3).tolist()})",
                         "use the same ids on both sides (e.g. without a .avi suffix)")
    summary = {"n_predictions": int(len(preds)), "n_labels": int(len(lab)),
               "n_evaluated": int(len(table)),
               "n_predictions_without_label": int((~preds.sample_id.isin(lab.sample_id)).sum()),
               "n_labels_without_prediction": int((~lab.sample_id.isin(preds.sample_id)).sum())}
    if "fallback" in table.columns:
        summary["n_fallback"] = int((table["fallback"].astype(str) != "").sum())
    return table, summary


# --------------------------------------------------------------------------- per sample


def traced_frames(lines: pd.DataFrame) -> tuple[int, int, dict[int, np.ndarray]]:
    """(ED frame, ES frame, lines per frame) of one sample's tracings; ED has the larger area."""
    by_frame = {int(f): g[LINE_COLUMNS].to_numpy(float) for f, g in lines.groupby("frame")}
    if len(by_frame) < 2:
        raise InputError(None, "frame", "at least 2 traced frames (ED and ES)",
                         f"{len(by_frame)} frame(s): {sorted(by_frame)}")
    areas = {f: tracing_area(v) for f, v in by_frame.items()}
    return max(areas, key=areas.get), min(areas, key=areas.get), by_frame


def _tracing_dice(mask: np.ndarray, ed: int, es: int,
                  by_frame: Mapping[int, np.ndarray]) -> dict[str, float]:
    """Dice, intersection and size sum of the predicted mask at the traced ED and ES frames."""
    row: dict[str, float] = {}
    for phase, frame in zip(PHASES, (ed, es), strict=True):
        if not 0 <= frame < len(mask):
            raise InputError(None, "frame", f"a traced frame within the {len(mask)} mask frames",
                             str(frame))
        truth = tracing_mask(by_frame[frame], mask.shape[1:])
        pred = mask[frame] > 0
        row[f"dice_{phase}"] = em.dice(pred, truth)
        row[f"inter_{phase}"] = float(np.logical_and(pred, truth).sum())
        row[f"size_{phase}"] = float(pred.sum() + truth.sum())
    return row


def _all_frames_dice(mask: np.ndarray, truth_path: str | Path) -> float:
    truth = load_mask(truth_path)
    if truth.shape != mask.shape:
        raise InputError(truth_path, MASK_KEY, f"truth mask shape {mask.shape} (as predicted)",
                         str(truth.shape))
    return float(em.dice_per_frame(mask, truth).mean())


def _phase_errors(ed: int, es: int, frames: pd.DataFrame) -> dict[str, float]:
    """Frames from each traced ED/ES frame to the nearest predicted ED/ES flag (NaN: none)."""
    row = {}
    for phase, frame in zip(PHASES, (ed, es), strict=True):
        flagged = frames.loc[frames[f"is_{phase}"].astype(int) == 1, "frame"].to_numpy(float)
        row[f"{phase}_frame_error"] = float(np.abs(flagged - frame).min()) if flagged.size \
            else float("nan")
    return row


_EXTRA_COLUMNS = ["ed_frame", "es_frame", "dice_ed", "dice_es", "dice_all_frames",
                  "ed_frame_error", "es_frame_error", "inter_ed", "size_ed", "inter_es",
                  "size_es"]


def _traced_parts(row: dict[str, Any], mask: np.ndarray | None, tracing: pd.DataFrame,
                  frames: pd.DataFrame | None) -> None:
    ed, es, by_frame = traced_frames(tracing)
    row.update(ed_frame=ed, es_frame=es)
    if frames is not None:
        row.update(_phase_errors(ed, es, frames))
    if mask is not None:
        row.update(_tracing_dice(mask, ed, es, by_frame))
        if frames is not None and "lv_area" in frames.columns:  # not segmented (fastbeats):
            skipped = set(frames.loc[frames["lv_area"].isna(), "frame"].astype(int))  # no Dice
            for phase, frame in zip(PHASES, (ed, es), strict=True):
                if frame in skipped:
                    row.update({f"{k}_{phase}": float("nan") for k in ("dice", "inter", "size")})


def _guarded(problems: list[Problem], where: str | Path, fn: Any, *args: Any) -> Any:
    """fn(*args), or None with a Problem recorded when it fails on bad input."""
    try:
        return fn(*args)
    except (InputError, OSError, ValueError) as exc:
        problems.append(Problem.from_exception(where, STAGE, exc))
        return None


def _sample_extras(pdir: PredictionDir, sid: str, tracing: pd.DataFrame | None,
                   frames: pd.DataFrame | None, truth_path: str | None,
                   problems: list[Problem]) -> dict[str, Any]:
    """Dice and phase errors of one sample; each failure is a Problem, never a crash."""
    row: dict[str, Any] = {"sample_id": sid}
    mask = _guarded(problems, pdir.mask_path(sid), pdir.load_mask, sid)
    if tracing is not None:
        _guarded(problems, f"{sid}: tracings", _traced_parts, row, mask, tracing, frames)
    partial = frames is not None and "lv_area" in frames.columns and \
        bool(frames["lv_area"].isna().any())  # some frames not segmented: no all-frames Dice
    if truth_path is not None and mask is not None and not partial:
        row["dice_all_frames"] = _guarded(problems, truth_path, _all_frames_dice, mask,
                                          truth_path)
    return row


def _groups(df: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    if df is None:
        return {}
    return dict(tuple(df.assign(sample_id=df["sample_id"].astype(str)).groupby("sample_id")))


def per_sample_extras(pdir: PredictionDir, sample_ids: Iterable[str],
                      tracings: pd.DataFrame | None, truth_masks: pd.DataFrame | None
                      ) -> tuple[pd.DataFrame, list[Problem]]:
    """Per-sample Dice (traced frames, all frames) and ED/ES frame errors, plus problems."""
    if tracings is not None:
        _check_columns(tracings, TRACING_COLUMNS, None, "tracings")
    paths: dict[str, str] = {}
    if truth_masks is not None:
        _check_columns(truth_masks, TRUTH_MASK_COLUMNS, None, "truth_masks")
        paths = dict(zip(truth_masks["sample_id"].astype(str), truth_masks["mask_path"],
                         strict=True))
    traced, frames = _groups(tracings), _groups(pdir.frames)
    problems: list[Problem] = []
    rows = [_sample_extras(pdir, sid, traced.get(sid), frames.get(sid), paths.get(sid),
                           problems) for sid in sample_ids]
    table = pd.DataFrame(rows, columns=["sample_id", *_EXTRA_COLUMNS])
    return table.astype({c: float for c in _EXTRA_COLUMNS}), problems


# --------------------------------------------------------------------------- metrics


def _ci(fn: Any, *arrays: np.ndarray, boot: Mapping[str, Any]) -> dict[str, float]:
    return em.metric_entry(*em.bootstrap_ci(fn, *arrays, **boot))


def segmentation_metrics(t: pd.DataFrame, boot: Mapping[str, Any]) -> dict[str, Any]:
    """Mean and pooled Dice at ED, ES and both, over samples with both traced frames scored."""
    s = t.dropna(subset=["dice_ed", "dice_es"])
    out: dict[str, Any] = {"n": int(len(s))}
    if len(s):
        cols = {p: s[[f"dice_{p}", f"inter_{p}", f"size_{p}"]].to_numpy(float).T for p in PHASES}
        for p, (d, inter, size) in cols.items():
            out[f"dice_{p}"] = _ci(em.mean, d, boot=boot)
            out[f"dice_{p}_pooled"] = _ci(em.pooled_dice, inter, size, boot=boot)
        (d_ed, i_ed, s_ed), (d_es, i_es, s_es) = cols["ed"], cols["es"]
        out["dice_overall"] = _ci(em.mean, (d_ed + d_es) / 2.0, boot=boot)
        out["dice_overall_pooled"] = _ci(em.pooled_dice, i_ed + i_es, s_ed + s_es, boot=boot)
    all_frames = t["dice_all_frames"].dropna().to_numpy(float)
    if all_frames.size:
        out["n_all_frames"] = int(all_frames.size)
        out["dice_all_frames"] = _ci(em.mean, all_frames, boot=boot)
    return out


def phase_metrics(t: pd.DataFrame, boot: Mapping[str, Any]) -> dict[str, Any]:
    """Mean and median ED/ES frame error (frames) over samples with a predicted flag."""
    out: dict[str, Any] = {}
    for p in PHASES:
        err = t[f"{p}_frame_error"].dropna().to_numpy(float)
        out[f"n_{p}"] = int(err.size)
        if err.size:
            out[f"{p}_frame_error_mean"] = _ci(em.mean, err, boot=boot)
            out[f"{p}_frame_error_median"] = _ci(em.median, err, boot=boot)
    return out


def classification_metrics(t: pd.DataFrame, col: str, thresholds: Sequence[float],
                           boot: Mapping[str, Any], notes: dict[str, str]) -> dict[str, Any]:
    """Binary report for truth EF < t at each threshold, with predicted EF as the score."""
    out = {}
    sub = t.dropna(subset=["ef_true", col])
    for thr in thresholds:
        y = (sub["ef_true"] < thr).to_numpy(float)
        pred = sub[col].to_numpy(float)
        key = f"ef_lt_{thr:g}"
        if 0 < y.sum() < len(y):
            out[key] = em.binary_report(y, -pred, threshold=thr, y_pred=pred < thr, **boot)
        else:
            notes[f"classification.{col}.{key}"] = f"one class only ({int(y.sum())} of {len(y)})"
    return out


def _roc_curves(t: pd.DataFrame, col: str, thresholds: Sequence[float]) -> dict[str, tuple]:
    sub = t.dropna(subset=["ef_true", col])
    curves = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for thr in thresholds:
            y, score = (sub["ef_true"] < thr).to_numpy(float), -sub[col].to_numpy(float)
            fpr, tpr, _ = em.roc_curve(y, score)
            curves[f"EF < {thr:g}%"] = (fpr, tpr, em.roc_auc(y, score))
    return curves


def _write_plots(t: pd.DataFrame, ef_cols: Sequence[str], thresholds: Sequence[float],
                 out_dir: Path) -> dict[str, str]:
    """Scatter, Bland-Altman and ROC plots per EF column; {name: path relative to out_dir}."""
    made = {}
    for col in ef_cols:
        name, y, p = EF_NAMES[col], t["ef_true"], t[col]
        path = out_dir / PLOTS_DIR
        made[f"scatter_{col}"] = plots.scatter_plot(
            y, p, path / f"scatter_{col}.png", label="EF (%)", title=f"EF, {name}")
        made[f"bland_altman_{col}"] = plots.bland_altman_plot(
            y, p, path / f"bland_altman_{col}.png", labels=("true EF", "predicted EF"),
            title=f"Bland-Altman, {name}")
        made[f"roc_{col}"] = plots.roc_plot(_roc_curves(t, col, thresholds),
                                            path / f"roc_{col}.png", title=f"ROC, {name}")
    return {key: val.relative_to(out_dir).as_posix() for key, val in made.items()}


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _omissions(pdir: PredictionDir, tracings: Any, truth_masks: Any, seg: dict, phase: dict,
               ef_cols: Sequence[str]) -> dict[str, str]:
    """Why each metric group that is absent from the report could not be computed."""
    out = {f"ef.{c}": "column absent or empty in predictions.csv"
           for c in EF_COLUMNS if c not in ef_cols}
    traced, all_frames = "segmentation.traced_frames", "segmentation.dice_all_frames"
    if tracings is None:
        out[traced] = out["phase"] = "no tracings given"
    elif not (pdir.root / MASKS_DIR).is_dir():
        out[traced] = "no masks folder in the prediction directory"
    elif not seg.get("n"):
        out[traced] = "no sample has both a predicted mask and two usable traced frames"
    if truth_masks is None:
        out[all_frames] = "no truth masks given"
    elif "dice_all_frames" not in seg:
        out[all_frames] = "no sample has both a predicted mask and a readable truth mask"
    if tracings is not None and pdir.frames is None:
        out["phase"] = "no frames.csv in the prediction directory"
    elif tracings is not None and not (phase.get("n_ed") or phase.get("n_es")):
        out["phase"] = "no traced sample has predicted ED/ES flags"
    return out


def evaluate_echonet(
    pred_dir: str | Path,
    labels: pd.DataFrame,
    tracings: pd.DataFrame | None = None,
    truth_masks: pd.DataFrame | None = None,
    out_dir: str | Path | None = None,
    n_boot: int = em.DEFAULT_N_BOOT,
    seed: int = 0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    alpha: float = em.DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Metrics of an EchoNet prediction directory against labels (and tracings / truth masks).

    Writes metrics.json, metrics.csv, per_sample.csv and plots/*.png under `out_dir` when
    given; returns the metrics.json content (NaN written as null).
    """
    pdir = read_prediction_dir(pred_dir)
    table, summary = _join_labels(pdir.predictions, labels)
    ef_cols = [c for c in EF_COLUMNS if c in table.columns and table[c].notna().any()]
    for col in ef_cols:
        table[f"abs_error_{col}"] = (table[col] - table["ef_true"]).abs()
    extras, problems = per_sample_extras(pdir, table["sample_id"], tracings, truth_masks)
    table = table.merge(extras, on="sample_id", how="left")
    boot = {"n_boot": n_boot, "seed": seed, "alpha": alpha}
    notes: dict[str, str] = {}
    seg = segmentation_metrics(table, boot)
    seg = seg if len(seg) > 1 else {}
    phase = phase_metrics(table, boot)
    phase = phase if phase["n_ed"] or phase["n_es"] else {}
    metrics: dict[str, Any] = {
        "summary": {**summary, "n_masks": int(sum(pdir.mask_path(s).exists()
                                                  for s in table["sample_id"]))},
        "settings": {"n_boot": n_boot, "seed": seed, "alpha": alpha,
                     "thresholds": [float(t) for t in thresholds]},
        "ef": {c: em.regression_report(table["ef_true"], table[c], **boot) for c in ef_cols},
        "classification": {c: classification_metrics(table, c, thresholds, boot, notes)
                           for c in ef_cols},
        "segmentation": seg, "phase": phase,
    }
    metrics["omitted"] = {**_omissions(pdir, tracings, truth_masks, seg, phase, ef_cols), **notes}
    metrics["problems"] = [asdict(p) for p in problems]
    if out_dir is not None:
        out = Path(out_dir)
        metrics["plots"] = _write_plots(table, ef_cols, thresholds, out)
        _write_csv(em.metrics_table(metrics), out / METRICS_CSV)
        internal = [c for c in table.columns if c.startswith(("inter_", "size_"))]
        _write_csv(table.drop(columns=internal), out / PER_SAMPLE_CSV)
        write_json(out / METRICS_JSON, em.json_safe(metrics))
    return em.json_safe(metrics)
