"""A folder of ultrasound DICOMs (any nesting, any file names) -> manifest + problems.

Headers only (pixel data is not decoded). Unreadable, header-only and non-ultrasound files
are reported as Problems and skipped; files with an obviously non-DICOM suffix (.txt,
.csv, .png, ...), hidden files and DICOMDIR indexes are skipped silently.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

from cinelab.data.manifest import REQUIRED, new_manifest
from cinelab.errors import InputError, Problem
from cinelab.formats.folders import dedupe_ids, safe_id
from cinelab.io.dicom import check_ultrasound, frame_rate, read_dataset

STAGE = "ingest"
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
NOT_DICOM_SUFFIXES = (
    ".txt", ".csv", ".tsv", ".json", ".xml", ".html", ".htm", ".md", ".pdf", ".log", ".ini",
    ".yaml", ".yml", ".py", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff",
    ".avi", ".mp4", ".mov", ".mkv", ".nii", ".gz", ".zip", ".tar", ".h5", ".npy", ".npz",
    ".parquet", ".xlsx", ".xls", ".doc", ".docx",
)
SKIP_NAMES = ("DICOMDIR", "Thumbs.db")
DEFER_BYTES = 1024  # large values (pixel data) are not loaded, only located
EXTRA_COLUMNS = ("n_frames", "rows", "columns", "fps")


def read_dicom_folder(
    root: str | Path, recursive: bool = True,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Manifest of every ultrasound DICOM under `root` and the problems with other files.

    sample_id is the path relative to root without a DICOM suffix, '/' -> '__' (unique and
    deterministic); modality "echo"; extra columns n_frames, rows, columns, fps (NaN when
    no frame-rate tag).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(root, "root", "an existing folder of DICOM files", "no such folder")
    files = candidate_files(root, recursive)
    ids = sample_ids(root, files)
    rows: list[dict[str, object]] = []
    problems: list[Problem] = []
    for path in files:
        try:
            rows.append(_row(path, ids[path], problems))
        except InputError as exc:
            problems.append(Problem.from_exception(path, STAGE, exc))
    return _manifest(rows), problems


def candidate_files(root: Path, recursive: bool = True) -> list[Path]:
    """Files under root that may be DICOM, sorted (obvious non-DICOM files left out)."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.is_file() and _maybe_dicom(p, root))


def sample_ids(root: Path, files: list[Path]) -> dict[Path, str]:
    """Deterministic unique ids from relative paths; colliding stems keep their suffix."""
    short = {p: _id(p.relative_to(root), strip=True) for p in files}
    counts = Counter(short.values())
    ids = [sid if counts[sid] == 1 else _id(p.relative_to(root), strip=False)
           for p, sid in short.items()]
    return dict(zip(short, dedupe_ids(ids), strict=True))


def _maybe_dicom(path: Path, root: Path) -> bool:
    """False for hidden files, DICOMDIR and obviously non-DICOM suffixes."""
    parts = path.relative_to(root).parts
    if any(part.startswith(".") for part in parts) or path.name in SKIP_NAMES:
        return False
    return path.suffix.lower() not in NOT_DICOM_SUFFIXES


def _id(rel: Path, strip: bool) -> str:
    """Relative path to an id: DICOM suffix dropped (UID-like names keep their dots)."""
    if strip and rel.suffix.lower() in DICOM_SUFFIXES:
        rel = rel.with_suffix("")
    return safe_id("__".join(rel.parts))


def _row(path: Path, sample_id: str, problems: list[Problem]) -> dict[str, object]:
    """One manifest row from a header; a missing PatientID is reported, not fatal."""
    ds = read_dataset(path, defer_size=DEFER_BYTES)
    check_ultrasound(path, ds)
    _check_pixels(path, ds)
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        problems.append(Problem(str(path), STAGE, "PatientID: expected a patient id, found "
                                "none (patient_id set to the sample id)", column="PatientID",
                                expected="a patient id", found="missing or empty"))
        patient_id = sample_id
    fps, _ = frame_rate(ds)
    return {
        "sample_id": sample_id, "patient_id": patient_id, "path": str(path),
        "modality": "echo", "view": "", "split": "", "fold": -1,
        "n_frames": _int(ds.get("NumberOfFrames"), 1), "rows": _int(ds.get("Rows"), 0),
        "columns": _int(ds.get("Columns"), 0), "fps": np.nan if fps is None else fps,
    }


def _check_pixels(path: Path, ds: Dataset) -> None:
    """Header-only files (no PixelData) raise InputError."""
    if "PixelData" not in ds:
        raise InputError(path, "PixelData", "an image with pixel data",
                         "no PixelData element (a header-only or truncated file)")


def _int(value: object, default: int) -> int:
    """An integer header value, `default` when absent or malformed."""
    try:
        return int(value) if value not in (None, "") else default  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _manifest(rows: list[dict[str, object]]) -> pd.DataFrame:
    """new_manifest, or an empty manifest with the same columns."""
    if rows:
        return new_manifest(rows)
    return pd.DataFrame(columns=list(REQUIRED) + list(EXTRA_COLUMNS))
