"""Mask sets of short-axis label stacks: their index and their label and image files.

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
the others take `spacing` (slice, row, column mm) or stay voxel counts; `load_image` reads the
intensity stack behind a mask, `row_spacing` the spacing an index row's labels have.
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
NO_FRAME = -1


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
