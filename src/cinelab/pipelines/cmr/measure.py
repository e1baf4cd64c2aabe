"""Mask sets of short-axis label stacks -> per-patient volumes, EF and mass; EF vs truth.

A *mask set* is any of these, turned by `mask_index` into one table (MASK_INDEX_COLUMNS, one
row per label file; `frame` -1 and `phase` '' when unknown):

- an index CSV, or a folder holding one of INDEX_NAMES (or a single CSV with a mask path
  column other than `path`): a mask path column (mask_path, pred_path, label_path or path),
  a patient column (patient_id, patient, pid, Id or sample_id), optional phase (ED/ES),
  frame, image_path (or source), sample_id and spacing_z/y/x (mm; empty = unknown, voxel
  counts); relative paths are resolved against the CSV's folder. `predict_cmr`'s
  predictions.csv (slice_spacing, pixel_spacing_y/x, source) and ACDC manifests are such;
- an ACDC folder (patientNNN/Info.cfg): the ED and ES `_gt` masks;
- a folder of ACDC HDF5 samples (patientNNN_frame01.h5 = ED, _frame02.h5 = ES; no spacing);
- a folder of NIfTI (.nii, .nii.gz) or NumPy (.npy, .npz) label files, named
  `<patient>_frameNN[_gt|_pred|_mask]`, `<patient>_ED|ES[...]`, or `<patient>[...]` for a
  4D label cine (T, Z, H, W).

Arrays are slices first ((Z, H, W) or (T, Z, H, W)); NIfTI and .npz carry their spacing,
the others take `spacing` (slice, row, column mm) or stay voxel counts. A patient's stacks
are measured together; a 4D label cine is measured on its own (DSB `<pid>_a`, `<pid>_b`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.errors import InputError, Problem
from cinelab.io.checks import check_spacing
from cinelab.io.nifti import is_nifti, read_volume
from cinelab.io.table import read_table
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
from cinelab.pipelines.cmr.acdc import find_acdc_patients, load_acdc_h5, read_acdc, read_acdc_h5
from cinelab.utils import resolve_beside

MASK_INDEX_COLUMNS = ("image_id", "patient_id", "phase", "frame", "mask_path", "image_path")
INDEX_NAMES = ("index.csv", "masks.csv", "predictions.csv", "manifest.csv")
PATH_ALIASES = ("mask_path", "pred_path", "prediction_path", "label_path", "path")
IMAGE_ALIASES = ("image_path", "path", "source")  # source: predict_cmr's input image
PATIENT_ALIASES = ("patient_id", "patient", "pid", "Id", "sample_id")
SPACING_COLUMNS = ("spacing_z", "spacing_y", "spacing_x")
PHASES = ("ED", "ES")
PHASE_ALIASES = {"ed": "ED", "es": "ES", "diastole": "ED", "systole": "ES"}
MASK_SUFFIXES = (".nii", ".nii.gz", ".npy", ".npz")
NPZ_LABELS, NPZ_SPACING = "labels", "spacing"
SPACING_ALIASES = {"slice_spacing": "spacing_z", "pixel_spacing_y": "spacing_y",
                   "pixel_spacing_x": "spacing_x"}  # predict_cmr's index columns
NAME_PATTERN = re.compile(
    r"^(?P<patient>.+?)(?:[_-](?:frame(?P<frame>\d+)|(?P<phase>ED|ES)))?"
    r"(?:[_-](?:gt|pred|mask|label|seg))?$", re.IGNORECASE)
STAGE = "cmr-measure"
NO_FRAME = -1
FLAG_COLUMNS = ("rv_ed_frame", "rv_es_frame", "flags")  # after MEASURE_COLUMNS
MIN_FRAMES = 2  # ED and ES: a unit with one stack has no EF
EF_RANGE = (0.0, 100.0)  # below 0, or 100 % and more (no cavity at end-systole): impossible


# --------------------------------------------------------------------------- mask sets


def mask_index(source: str | Path) -> pd.DataFrame:
    """One row per label file of a mask set (see the module docstring for the layouts)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _csv_index(source)
    if not source.is_dir():
        raise InputError(source, "masks", "a mask folder or an index CSV", "nothing there")
    for name in INDEX_NAMES:
        if (source / name).is_file():
            return _csv_index(source / name)
    tables = [p for p in source.glob("*.csv") if _has_mask_column(p)]
    if len(tables) == 1:
        return _csv_index(tables[0])
    if find_acdc_patients(source):
        return _acdc_index(source)
    if any(source.rglob("*.h5")):
        return _h5_index(source)
    return _file_index(source)


def _has_mask_column(path: Path) -> bool:
    """A CSV whose header names a mask path column other than a manifest's image `path`."""
    try:
        header = set(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError):
        return False
    return bool(header & set(PATH_ALIASES[:-1])) and bool(header & set(PATIENT_ALIASES))


def _finish(df: pd.DataFrame, where: Path) -> pd.DataFrame:
    """Canonical columns and types; at least one row."""
    if df.empty:
        raise InputError(where, "masks", "label files (NIfTI, NumPy, HDF5) or an index CSV",
                         "none")
    df = df.copy()
    for col, default in (("phase", ""), ("frame", NO_FRAME), ("image_path", "")):
        if col not in df:
            df[col] = default
    df["phase"] = df["phase"].fillna("").map(_phase)
    df["frame"] = pd.to_numeric(df["frame"], errors="coerce").fillna(NO_FRAME).astype(int)
    df["image_path"] = df["image_path"].fillna("").astype(str)
    df["patient_id"] = df["patient_id"].astype(str)
    if "image_id" not in df:
        df["image_id"] = [_image_id(p, ph, f) for p, ph, f in
                          zip(df["patient_id"], df["phase"], df["frame"], strict=True)]
    extra = [c for c in df.columns if c not in MASK_INDEX_COLUMNS]
    return df[list(MASK_INDEX_COLUMNS) + extra].reset_index(drop=True)


def _phase(value: object) -> str:
    return PHASE_ALIASES.get(str(value).strip().lower(), "")


def _image_id(patient: str, phase: str, frame: int) -> str:
    if frame != NO_FRAME:
        return f"{patient}_frame{frame:02d}"
    return f"{patient}_{phase}" if phase else patient


def _csv_index(path: Path) -> pd.DataFrame:
    df = read_table(path, dtype=str, keep_default_na=False)
    df = df.rename(columns={k: v for k, v in SPACING_ALIASES.items() if v not in df})
    path_col = next((c for c in PATH_ALIASES if c in df and (df[c] != "").any()), None)
    patient_col = next((c for c in PATIENT_ALIASES if c in df), None)
    if path_col is None or patient_col is None:
        raise InputError(path, "columns", f"a mask path column ({', '.join(PATH_ALIASES)}) "
                         f"and a patient column ({', '.join(PATIENT_ALIASES)})",
                         f"{list(df.columns)}")
    df = df[df[path_col] != ""]
    out = pd.DataFrame({"patient_id": df[patient_col],
                        "mask_path": [str(resolve_beside(p, path.parent)) for p in df[path_col]]})
    if "sample_id" in df and patient_col != "sample_id":
        out["image_id"] = df["sample_id"].to_numpy()
    for col in ("phase", "frame", *SPACING_COLUMNS):
        if col in df:
            out[col] = df[col].to_numpy()
    image_col = next((c for c in IMAGE_ALIASES if c in df and c != path_col), None)
    if image_col is not None:
        images = df[image_col]
        out["image_path"] = [str(resolve_beside(p, path.parent)) if p else "" for p in images]
    return _finish(out, path)


def _with_problems(index: pd.DataFrame, problems: list[Problem]) -> pd.DataFrame:
    """The index carrying its reader's problems in attrs["problems"] (measure_mask_set
    reports them first: a bad Info.cfg or HDF5 file is never dropped silently)."""
    index.attrs["problems"] = list(problems)
    return index


def _acdc_index(root: Path) -> pd.DataFrame:
    manifest, problems = read_acdc(root, volumes=False)
    df = manifest[manifest["mask_path"] != ""] if len(manifest) else manifest
    if df.empty:
        _no_masks(root, problems)
    return _with_problems(_finish(pd.DataFrame({
        "image_id": df["sample_id"], "patient_id": df["patient_id"], "phase": df["phase"],
        "frame": df["frame"], "mask_path": df["mask_path"], "image_path": df["path"]}), root),
        problems)


def _h5_index(root: Path) -> pd.DataFrame:
    manifest, problems = read_acdc_h5(root)
    if manifest.empty:
        _no_masks(root, problems)
    return _with_problems(_finish(pd.DataFrame({
        "image_id": manifest["sample_id"], "patient_id": manifest["patient_id"],
        "phase": manifest["phase"], "frame": manifest["frame"],
        "mask_path": manifest["path"], "image_path": manifest["path"]}), root), problems)


def _no_masks(root: Path, problems: list[Problem]) -> None:
    """InputError for a layout with no usable label file, quoting its first problem."""
    first = f": {problems[0].error}" if problems else ""
    raise InputError(root, "masks", "at least one readable label file",
                     f"none ({len(problems)} problem(s){first})")


def _file_index(root: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.name
        suffix = next((s for s in MASK_SUFFIXES if name.lower().endswith(s)), None)
        if suffix is None:
            continue
        match = NAME_PATTERN.match(name[: -len(suffix)])
        if match is None:
            continue
        rows.append({"patient_id": match.group("patient"), "phase": match.group("phase") or "",
                     "frame": match.group("frame") or NO_FRAME, "mask_path": str(path)})
    return _finish(pd.DataFrame(rows), root)


def load_mask(path: str | Path, spacing: Sequence[float] | None = None
              ) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """(labels (Z, H, W) or (T, Z, H, W) int, spacing (slice, row, column) mm or None).

    NIfTI and .npz (`labels`, `spacing`) keep their own spacing; HDF5 (`label`) and .npy
    take `spacing`."""
    path = Path(path)
    name = path.name.lower()
    if is_nifti(path):
        labels, file_spacing = read_volume(path)
        found: tuple[float, ...] | None = tuple(file_spacing[-3:])
    elif name.endswith(".h5"):
        labels, found = load_acdc_h5(path)[1], None
    elif name.endswith(".npy"):
        labels, found = np.load(path), None
    elif name.endswith(".npz"):
        labels, found = _load_npz(path)
    else:
        raise InputError(path, "suffix", "a .nii, .nii.gz, .npy, .npz or ACDC .h5 label file",
                         repr(path.suffix))
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim not in (3, 4) or not np.issubdtype(labels.dtype, np.number):
        raise InputError(path, "labels", "integer labels (Z, H, W) or (T, Z, H, W)",
                         f"{labels.dtype} {labels.shape}")
    return np.rint(labels).astype(np.int16), found if found is not None else _spacing(spacing)


def _load_npz(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """`labels` (else the first array) and `spacing` (last three values) of an .npz file."""
    with np.load(path) as data:
        if not data.files:
            raise InputError(path, "arrays", "a 'labels' array", "an empty archive")
        labels = data[NPZ_LABELS if NPZ_LABELS in data.files else data.files[0]]
        spacing = data[NPZ_SPACING] if NPZ_SPACING in data.files else None
    return labels, None if spacing is None else check_spacing(spacing[-3:], path, NPZ_SPACING)


def _spacing(spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if spacing is None else tuple(float(s) for s in spacing)


def load_image(path: str | Path) -> np.ndarray | None:
    """The intensity stack (Z, H, W) float32 behind a mask (NIfTI or ACDC HDF5), else None."""
    path = Path(path)
    if not str(path) or not path.is_file():
        return None
    if path.name.lower().endswith(".h5"):
        return load_acdc_h5(path)[0]
    if is_nifti(path):
        image = read_volume(path, np.float32)[0]
        return image if image.ndim == 3 else None
    return None


def row_spacing(row: pd.Series, spacing: Sequence[float] | None,
                file_spacing: Sequence[float] | None = None) -> Sequence[float] | None:
    """The spacing of an index row's labels: its spacing_z/y/x when all set; `spacing` (None:
    voxel counts) when the index has those columns but leaves them empty (the file's header
    may hold a placeholder, e.g. unit spacing); else the file's own, else `spacing`."""
    if all(c in row.index for c in SPACING_COLUMNS):
        values = [str(row[c]).strip() for c in SPACING_COLUMNS]
        if all(v not in ("", "nan", "None") for v in values):
            return check_spacing(values, row.get("mask_path"), "spacing_z/y/x")
        return spacing
    return file_spacing if file_spacing is not None else spacing


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
