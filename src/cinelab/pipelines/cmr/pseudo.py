"""Pseudo-labels: keep the predicted masks of patients whose predicted volumes agree with
reference volumes (the cmr-seg-tl recipe on the Kaggle DSB data).

Per patient, the confidence score is the larger absolute percentage deviation of the
predicted EDV and ESV from the reference ones (e.g. DSB train/validate/solution.csv:
Diastole, Systole): 100 |pred - ref| / ref. Lower is more trustworthy; a threshold of 5, 10
or 15 % keeps the patients at or below it, and with them their training images.

Predicted ids may be DSB cine ids (`<pid>_a`, `<pid>_b`, `<pid>_rot90`): they are matched
to the reference `<pid>` when the id itself is not a reference id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.data.manifest import new_manifest
from cinelab.errors import InputError
from cinelab.io.table import read_table
from cinelab.measure.volumes import ACDC_LABELS, LabelMap
from cinelab.pipelines.cmr.dsb import read_dsb_volumes
from cinelab.pipelines.cmr.mask_sets import mask_index
from cinelab.pipelines.cmr.measure import measure_mask_set
from cinelab.utils import atomic_path, write_csv

DEFAULT_THRESHOLDS = (5.0, 10.0, 15.0)
PERCENT = 100.0
SCORE_COLUMN = "confidence_pct"
THRESHOLD_EPS = 1e-9  # a score at the threshold (up to rounding) is kept
SCORE_COLUMNS = ("patient_id", "reference_id", "EDV_pred", "ESV_pred", "EDV_ref", "ESV_ref",
                 "EDV_dev_pct", "ESV_dev_pct", SCORE_COLUMN)
DSB_SUFFIX = re.compile(r"(?:_rot90)?(?:_[ab])?(?:_rot90)?$")
REFERENCE_ID_ALIASES = ("patient_id", "Id", "pid", "sample_id")
SCORES_CSV = "confidence.csv"
THRESHOLDS_CSV = "thresholds.csv"


def reference_volumes(source: str | Path | pd.DataFrame, id_column: str | None = None
                      ) -> pd.DataFrame:
    """(reference_id, EDV_ref, ESV_ref) from a DSB folder (train/validate/solution.csv), a
    CSV or table with Id/Systole/Diastole, or one with an id column and EDV/ESV."""
    if isinstance(source, pd.DataFrame):
        df, where = source, None
    else:
        where = Path(source)
        if where.is_dir():
            df = read_dsb_volumes(where)
            if df.empty:
                raise InputError(where, "volumes", "train.csv, validate.csv or solution.csv "
                                 "with Systole/Diastole", "none")
        elif where.is_file():
            df = read_table(where, dtype={c: str for c in REFERENCE_ID_ALIASES})
        else:
            raise InputError(where, "reference", "a DSB folder or a volume CSV", "nothing there")
    if {"Systole", "Diastole"} <= set(df.columns):
        df = df.rename(columns={"Diastole": "EDV", "Systole": "ESV"})
    key = id_column or next((c for c in REFERENCE_ID_ALIASES if c in df.columns), None)
    if key is None or key not in df.columns or not {"EDV", "ESV"} <= set(df.columns):
        raise InputError(where, "columns", "an id column (Id, patient_id, pid) and "
                         "EDV/ESV (or Diastole/Systole)", f"{list(df.columns)}")
    return pd.DataFrame({"reference_id": df[key].astype(str),
                         "EDV_ref": pd.to_numeric(df["EDV"], errors="coerce"),
                         "ESV_ref": pd.to_numeric(df["ESV"], errors="coerce")})


def reference_id(sample_id: str, known: set[str]) -> str:
    """`sample_id` when it is a reference id, else it without DSB suffixes (_a, _b, _rot90)."""
    return sample_id if sample_id in known else DSB_SUFFIX.sub("", sample_id)


def percent_deviation(pred: np.ndarray | pd.Series, ref: np.ndarray | pd.Series) -> np.ndarray:
    """100 |pred - ref| / ref; NaN where the reference is not positive."""
    p, r = np.asarray(pred, dtype=float), np.asarray(ref, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, PERCENT * np.abs(p - r) / np.where(r > 0, r, 1.0), np.nan)


def confidence_scores(pred: pd.DataFrame, reference: pd.DataFrame | str | Path,
                      on: str = "patient_id") -> pd.DataFrame:
    """SCORE_COLUMNS per predicted patient: the larger |% deviation| of EDV and ESV
    (`confidence_pct`, NaN without a reference), sorted by it (most confident first)."""
    ref = reference if isinstance(reference, pd.DataFrame) and "reference_id" in reference \
        else reference_volumes(reference)
    missing = [c for c in (on, "EDV", "ESV") if c not in pred.columns]
    if missing:
        raise InputError(None, "predicted volumes", f"columns {on}, EDV, ESV",
                         f"missing {missing} in {list(pred.columns)}")
    known = set(ref["reference_id"])
    out = pd.DataFrame({"patient_id": pred[on].astype(str),
                        "EDV_pred": pred["EDV"].astype(float),
                        "ESV_pred": pred["ESV"].astype(float)})
    out["reference_id"] = [reference_id(p, known) for p in out["patient_id"]]
    out = out.merge(ref.drop_duplicates("reference_id"), on="reference_id", how="left")
    out["EDV_dev_pct"] = percent_deviation(out["EDV_pred"], out["EDV_ref"])
    out["ESV_dev_pct"] = percent_deviation(out["ESV_pred"], out["ESV_ref"])
    devs = out[["EDV_dev_pct", "ESV_dev_pct"]].to_numpy()
    out[SCORE_COLUMN] = np.where(np.isnan(devs).any(axis=1), np.nan,
                                 np.nanmax(np.where(np.isnan(devs), 0, devs), axis=1))
    out = out.sort_values([SCORE_COLUMN, "patient_id"], na_position="last", kind="stable")
    return out[list(SCORE_COLUMNS)].reset_index(drop=True)


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not np.isfinite(value) or value < 0:
        raise InputError(None, "threshold", "a non-negative percentage (e.g. 5, 10, 15)",
                         repr(threshold))
    return value


def confident_patients(scores: pd.DataFrame, threshold: float) -> list[str]:
    """Predicted patient ids whose confidence score is at most `threshold` percent."""
    limit = _check_threshold(threshold)
    keep = scores[SCORE_COLUMN].notna() & (scores[SCORE_COLUMN] <= limit + THRESHOLD_EPS)
    return scores.loc[keep, "patient_id"].astype(str).tolist()


def filter_manifest(manifest: pd.DataFrame, scores: pd.DataFrame, threshold: float,
                    column: str | None = None) -> pd.DataFrame:
    """The manifest rows (training images) of the confident patients. Rows are matched on
    `column`, by default the first of patient_id / sample_id whose values meet the scores'."""
    keep = set(confident_patients(scores, threshold))
    column = column or _match_column(manifest, set(scores["patient_id"].astype(str)))
    if column not in manifest.columns:
        raise InputError(None, "column", f"a manifest column ({list(manifest.columns)})",
                         repr(column))
    return manifest[manifest[column].astype(str).isin(keep)].reset_index(drop=True)


def _match_column(manifest: pd.DataFrame, ids: set[str]) -> str:
    """The id column of the manifest sharing the most values with the scored ids."""
    candidates = [c for c in ("patient_id", "sample_id", "cine_id") if c in manifest.columns]
    if not candidates:
        raise InputError(None, "manifest", "a patient_id or sample_id column",
                         f"{list(manifest.columns)}")
    return max(candidates, key=lambda c: len(ids & set(manifest[c].astype(str))))


def threshold_summary(scores: pd.DataFrame,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Per threshold: patients kept, scored, share kept (%)."""
    scored = int(scores[SCORE_COLUMN].notna().sum())
    rows = []
    for t in thresholds:
        kept = len(confident_patients(scores, t))
        rows.append({"threshold_pct": float(t), "patients": kept, "scored": scored,
                     "kept_pct": PERCENT * kept / scored if scored else np.nan})
    return pd.DataFrame(rows, columns=["threshold_pct", "patients", "scored", "kept_pct"])


def subset_name(threshold: float) -> str:
    """File stem of a threshold's subset, e.g. 'confident_5pct', 'confident_7.5pct'."""
    return f"confident_{float(threshold):g}pct"


def pseudo_label_manifest(predictions: pd.DataFrame, scores: pd.DataFrame,
                          threshold: float) -> pd.DataFrame:
    """A manifest of the confident patients' predicted masks (`mask_path`) with the images
    they were predicted from (`path`), ready to prepare as pseudo-labelled training data.
    `predictions` is a mask index (`measure.cmr.mask_index`); only ED/ES stacks with their
    image are listed (empty result when there is none): label cines become training data
    as ED/ES image + mask pairs (`infer.pseudo_pairs`)."""
    keep = set(confident_patients(scores, threshold))
    score = scores.set_index("patient_id")[SCORE_COLUMN]
    rows = predictions[predictions["patient_id"].astype(str).isin(keep)
                       & (predictions["image_path"].astype(str) != "")
                       & predictions["phase"].isin(["ED", "ES"])]
    if rows.empty:
        return pd.DataFrame()
    return new_manifest({"sample_id": r.image_id, "patient_id": r.patient_id,
                         "path": r.image_path, "mask_path": r.mask_path, "modality": "cmr",
                         "view": "sax", "phase": r.phase, "frame": r.frame,
                         "pseudo_label": True, SCORE_COLUMN: score.get(str(r.patient_id))}
                        for r in rows.itertuples())


def write_pseudo_labels(scores: pd.DataFrame, out: str | Path,
                        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                        manifest: pd.DataFrame | None = None,
                        column: str | None = None,
                        predictions: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write confidence.csv, thresholds.csv and per threshold the kept patient ids
    (<subset>.txt), with a manifest its subset (<subset>_manifest.csv) and with the
    predictions' mask index the pseudo-label manifest (<subset>_pseudo.csv)."""
    out = Path(out)
    written = {"scores": write_csv(scores, out / SCORES_CSV),
               "thresholds": write_csv(threshold_summary(scores, thresholds),
                                       out / THRESHOLDS_CSV)}
    for t in thresholds:
        name = subset_name(t)
        ids = confident_patients(scores, t)
        with atomic_path(out / f"{name}.txt") as tmp:
            tmp.write_text("".join(f"{i}\n" for i in ids))
        written[name] = out / f"{name}.txt"
        if manifest is not None:
            subset = filter_manifest(manifest, scores, t, column)
            written[f"{name}_manifest"] = write_csv(subset, out / f"{name}_manifest.csv")
        pseudo = (pseudo_label_manifest(predictions, scores, t) if predictions is not None
                  else pd.DataFrame())
        if len(pseudo):
            written[f"{name}_pseudo"] = write_csv(pseudo, out / f"{name}_pseudo.csv")
    return written


def is_volume_table(source: str | Path) -> bool:
    """A CSV of predicted volumes (EDV, ESV columns), not a mask set."""
    path = Path(source)
    return path.is_file() and path.suffix.lower() == ".csv" and \
        {"EDV", "ESV"} <= set(pd.read_csv(path, nrows=0).columns)


def predicted_volumes(source: str | Path | pd.DataFrame, label_map: LabelMap = ACDC_LABELS,
                      spacing: Sequence[float] | None = None
                      ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(per-patient EDV/ESV, mask index or None): a table or CSV that has the volumes (e.g.
    `cinelab cmr measure`'s volumes.csv), else measured from a mask set."""
    if isinstance(source, pd.DataFrame):
        return source, None
    path = Path(source)
    if is_volume_table(path):
        return pd.read_csv(path, dtype={"patient_id": str}), None
    index = mask_index(path)
    return measure_mask_set(index, label_map, spacing)[0], index


def pseudo_labels(pred: str | Path | pd.DataFrame, reference: str | Path | pd.DataFrame,
                  out: str | Path, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                  manifest: pd.DataFrame | None = None, label_map: LabelMap = ACDC_LABELS,
                  spacing: Sequence[float] | None = None,
                  reference_id_column: str | None = None) -> pd.DataFrame:
    """Score predicted volumes (or a predicted mask set) against reference volumes (ids
    from `reference_id_column` or the first of REFERENCE_ID_ALIASES) and write the
    pseudo-label subsets under `out` (`write_pseudo_labels`); returns the scores."""
    volumes, index = predicted_volumes(pred, label_map, spacing)
    if volumes.empty:
        raise InputError(None if isinstance(pred, pd.DataFrame) else pred, "predictions",
                         "at least one patient with predicted volumes", "none")
    scores = confidence_scores(volumes, reference_volumes(reference, reference_id_column))
    write_pseudo_labels(scores, out, thresholds, manifest, predictions=index)
    return scores
