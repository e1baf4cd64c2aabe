"""Mask sets (`cinelab.pipelines.cmr.mask_sets`) -> per-patient volumes, EF and mass; EF
vs truth.

A patient's stacks are measured together; a 4D label cine is measured on its own (DSB
`<pid>_a`, `<pid>_b`); ED and ES are found by LV volume over a unit's frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.errors import InputError, Problem
from cinelab.measure.volumes import (
    ACDC_LABELS,
    MEASURE_COLUMNS,
    UNITS_ML,
    UNITS_VOXELS,
    LabelMap,
    ejection_fraction,
    frame_volumes,
    measures_from_volumes,
)
from cinelab.pipelines.cmr.mask_sets import NO_FRAME, load_mask, mask_index, row_spacing

STAGE = "cmr-measure"
FLAG_COLUMNS = ("rv_ed_frame", "rv_es_frame", "flags")  # after MEASURE_COLUMNS
MIN_FRAMES = 2  # ED and ES: a unit with one stack has no EF
EF_RANGE = (0.0, 100.0)  # below 0, or 100 % and more (no cavity at end-systole): impossible


# --------------------------------------------------------------------------- measures


def _stack_volumes(labels: np.ndarray, found: Sequence[float] | None, row: pd.Series,
                   position: int, label_map: LabelMap) -> pd.DataFrame:
    """Per-frame volumes of one label file, named by image id, frame and phase."""
    vols = frame_volumes(labels, found, label_map)
    if labels.ndim == 4:
        vols["image_id"] = [f"{row['image_id']}_t{t:02d}" for t in vols["frame"]]
        vols["phase"] = ""
    else:
        vols["frame"] = row["frame"] if row["frame"] != NO_FRAME else row["phase"] or position
        vols["image_id"], vols["phase"] = row["image_id"], row["phase"]
    return vols


def patient_frame_volumes(rows: pd.DataFrame, spacing: Sequence[float] | None,
                          label_map: LabelMap) -> list[tuple[str, pd.DataFrame, bool]]:
    """Measurement units of one patient's label files: [(id, per-frame volumes, physical)].
    The patient's stacks form one unit (id = patient); each 4D cine is its own (id = its
    image id, e.g. a DSB `<pid>_a`). `physical`: every file of the unit had a spacing."""
    stacks, physical, units = [], True, []
    for position, (_, row) in enumerate(rows.iterrows()):
        labels, file_spacing = load_mask(row["mask_path"])
        found = row_spacing(row, spacing, file_spacing)
        vols = _stack_volumes(labels, found, row, position, label_map)
        if labels.ndim == 4:
            units.append((str(row["image_id"]), vols, found is not None))
        else:
            stacks.append(vols)
            physical &= found is not None
    if stacks:
        units.insert(0, (str(rows["patient_id"].iloc[0]), pd.concat(stacks, ignore_index=True),
                         physical))
    return units


def measure_mask_set(source: str | Path | pd.DataFrame, label_map: LabelMap = ACDC_LABELS,
                     spacing: Sequence[float] | None = None, report_single: bool = True
                     ) -> tuple[pd.DataFrame, pd.DataFrame, list[Problem]]:
    """(per-unit table: patient_id, patient, n_frames, ed/es image, MEASURE_COLUMNS;
    per-frame volumes; problems). A unit is a patient's stacks, or one 4D cine (patient_id
    then is the cine's image id); ED/ES are found by LV volume over the unit's frames. A
    unit with one frame only (a patient's ED or ES file missing) is not measured (it would
    give EF 0.0) and, with `report_single`, is a problem row."""
    index = source if isinstance(source, pd.DataFrame) else mask_index(source)
    rows, frames = [], []
    problems: list[Problem] = list(index.attrs.get("problems", []))
    for patient, group in index.groupby("patient_id", sort=True):
        try:
            units = patient_frame_volumes(group, spacing, label_map)
            for unit, volumes, physical in units:
                if len(volumes) < MIN_FRAMES:  # its volume is kept, no EF from it
                    frames.append(volumes.assign(patient_id=unit))
                    problems += [_one_frame_problem(unit, group)] if report_single else []
                    continue
                measures = measures_from_volumes(volumes, UNITS_ML if physical else UNITS_VOXELS)
                measures = checked_measures({**measures, **rv_phases(volumes)})
                ed, es = volumes["LV_ml"].idxmax(), volumes["LV_ml"].idxmin()
                rows.append({"patient_id": unit, "patient": patient, "n_frames": len(volumes),
                             "ed_image": volumes.at[ed, "image_id"],
                             "es_image": volumes.at[es, "image_id"], **measures})
                frames.append(volumes.assign(patient_id=unit))
                if measures["flags"]:
                    problems.append(Problem(
                        str(group["mask_path"].iloc[0]), STAGE,
                        f"{unit}: impossible values not reported ({measures['flags']})",
                        column="flags", expected="volumes > 0 and EF in [0, 100) %",
                        found=str(measures["flags"])))
        except (InputError, OSError, ValueError) as exc:
            problems.append(Problem.from_exception(group["mask_path"].iloc[0], STAGE, exc))
    columns = ["patient_id", "patient", "n_frames", "ed_image", "es_image", *MEASURE_COLUMNS,
               *FLAG_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    per_frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(per_frame):
        first = ["patient_id", "image_id", "phase", "frame"]
        per_frame = per_frame[first + [c for c in per_frame.columns if c not in first]]
    return table, per_frame, problems


def _one_frame_problem(unit: str, group: pd.DataFrame) -> Problem:
    """A unit with a single label stack (its ED or ES file missing): not measured, since
    ED = ES would give EF 0.0."""
    found = ", ".join(f"{p or '?'} ({Path(m).name})" for p, m in
                      zip(group["phase"], group["mask_path"], strict=True))
    return Problem(str(group["mask_path"].iloc[0]), STAGE,
                   f"{unit}: one label stack only (ED or ES missing): not measured",
                   column="phase", expected="ED and ES label stacks (or a label cine)",
                   found=found)


def rv_phases(volumes: pd.DataFrame) -> dict[str, object]:
    """RV end-diastole and end-systole from the RV's own volume curve (its largest and
    smallest frame), not the LV's: RV_EDV, RV_ESV, RV_EF, rv_ed_frame, rv_es_frame."""
    if "RV_ml" not in volumes or not len(volumes):
        return {"rv_ed_frame": None, "rv_es_frame": None}
    rv = volumes["RV_ml"].to_numpy(float)
    ed, es = int(np.nanargmax(rv)), int(np.nanargmin(rv))
    edv, esv = float(rv[ed]), float(rv[es])
    return {"RV_EDV": edv, "RV_ESV": esv, "RV_EF": ejection_fraction(edv, esv),
            "rv_ed_frame": volumes["frame"].iloc[ed], "rv_es_frame": volumes["frame"].iloc[es]}


INDEXED = ("EDV", "ESV", "LVM", "RV_EDV", "RV_ESV")


def bsa_mosteller(height_cm: float, weight_kg: float) -> float:
    """Body surface area (m^2, Mosteller): sqrt(height cm x weight kg / 3600); NaN when
    either is missing or not positive."""
    try:
        h, w = float(height_cm), float(weight_kg)
    except (TypeError, ValueError):
        return float("nan")
    return float(np.sqrt(h * w / 3600.0)) if h > 0 and w > 0 else float("nan")


def indexed_measures(measures: dict[str, object], height_cm: object,
                     weight_kg: object) -> dict[str, float]:
    """bsa_m2 and each of INDEXED divided by it (`<name>_index`, mL/m^2 or g/m^2) when the
    volumes are in mL and height and weight are known (ACDC Info.cfg), else NaN."""
    bsa = bsa_mosteller(height_cm, weight_kg)  # type: ignore[arg-type]
    physical = measures.get("units") == UNITS_ML and not np.isnan(bsa)
    out = {"bsa_m2": bsa}
    for name in INDEXED:
        value = measures.get(name)
        out[f"{name}_index"] = float(value) / bsa if physical and value is not None \
            and not np.isnan(float(value)) else float("nan")  # type: ignore[arg-type]
    return out


def checked_measures(measures: dict[str, object]) -> dict[str, object]:
    """Impossible values flagged, never reported: a negative or zero end-diastolic volume
    (the structure is missing), a negative volume or mass, an EF below 0 or of 100 % and
    more (no cavity left at end-systole). Each
    such value becomes NaN (and the EF/SV derived from it); `flags` names them ('' if none),
    e.g. "EDV<=0;EF>=100"."""
    out, flags = dict(measures), []
    for prefix in ("", "RV_"):
        edv, esv, ef = (out.get(f"{prefix}{k}") for k in ("EDV", "ESV", "EF"))
        if edv is None or (isinstance(edv, float) and np.isnan(edv)):
            continue
        bad = []
        if float(edv) <= 0:
            bad.append(f"{prefix}EDV<=0")
        if esv is not None and float(esv) < 0:
            bad.append(f"{prefix}ESV<0")
        if ef is not None and not np.isnan(float(ef)):
            if float(ef) < EF_RANGE[0]:
                bad.append(f"{prefix}EF<0")
            elif float(ef) >= EF_RANGE[1]:
                bad.append(f"{prefix}EF>=100")
        if bad:
            flags += bad
            out[f"{prefix}EF"] = np.nan
            if not prefix:
                out["SV"] = np.nan
            for name in ("EDV", "ESV"):
                if any(f.startswith(f"{prefix}{name}") for f in bad):
                    out[f"{prefix}{name}"] = np.nan
    for name in ("myo_ml", "LVM"):
        value = out.get(name)
        if value is not None and not np.isnan(float(value)) and float(value) < 0:
            flags.append(f"{name}<0")
            out[name] = np.nan
    out["flags"] = ";".join(flags)
    return out


# --------------------------------------------------------------------------- vs truth


def paired_measures(pred: pd.DataFrame, truth: pd.DataFrame, on: str = "patient_id",
                    truth_on: str | None = None,
                    values: Sequence[str] = ("EDV", "ESV", "EF")) -> pd.DataFrame:
    """Predicted and true values side by side: <v>_pred, <v>_true, <v>_diff (pred - true),
    <v>_absdiff, for each patient in both tables (every other pred column kept)."""
    truth_on = truth_on or on
    for df, key, name in ((pred, on, "pred"), (truth, truth_on, "truth")):
        missing = [c for c in (key, *values) if c not in df.columns]
        if missing:
            raise InputError(None, f"{name} columns", f"{key} and {list(values)}",
                             f"missing {missing} in {list(df.columns)}")
    right = truth[[truth_on, *values]].copy()
    right[truth_on] = right[truth_on].astype(str)
    right.columns = ["_key", *[f"{v}_true" for v in values]]
    left = pred.rename(columns={v: f"{v}_pred" for v in values})
    left = left.assign(_key=left[on].astype(str))
    out = left.merge(right, on="_key", how="inner").drop(columns="_key")
    for v in values:
        out[f"{v}_diff"] = out[f"{v}_pred"] - out[f"{v}_true"]
        out[f"{v}_absdiff"] = out[f"{v}_diff"].abs()
    return out


def ef_difference_table(pred: pd.DataFrame, truth: pd.DataFrame, by: str | None = "model",
                        on: str = "patient_id", truth_on: str | None = None,
                        value: str = "EF") -> pd.DataFrame:
    """|pred - truth| of `value` per group `by` (the paper's EF table): n, mean, sd, median,
    q1, q3, iqr. Without a `by` column every row is one group named 'all'."""
    paired = paired_measures(pred, truth, on, truth_on, (value,))
    return difference_stats(paired, f"{value}_absdiff", by)


def difference_stats(paired: pd.DataFrame, column: str, by: str | None = "model"
                     ) -> pd.DataFrame:
    """n, mean, sd, median, q1, q3, iqr of `column` per group `by` ('all' without it)."""
    key = by if by is not None and by in paired.columns else None
    groups = paired.groupby(key, sort=False) if key else [("all", paired)]
    rows = []
    for name, group in groups:
        d = group[column].dropna()
        q1, q3 = (float(d.quantile(q)) for q in (0.25, 0.75)) if len(d) else (np.nan, np.nan)
        rows.append({by or "model": name, "n": len(d), "mean": float(d.mean()),
                     "sd": float(d.std(ddof=1)) if len(d) > 1 else np.nan,
                     "median": float(d.median()), "q1": q1, "q3": q3, "iqr": q3 - q1})
    return pd.DataFrame(rows, columns=[by or "model", "n", "mean", "sd", "median", "q1", "q3",
                                       "iqr"])
