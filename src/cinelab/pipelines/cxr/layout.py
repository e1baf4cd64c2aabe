"""Chest X-ray cohorts -> manifest: the DeepCOVID-XR folder tree and a label CSV.

Folder tree (any case, the images folder optional, any nesting below the label folder)::

    <root>/Train|Validation|Test/Positive|Negative/[images/]<name>.png|.jpg|.dcm
    <root>/Positive|Negative/...                       (no split folders: split '')

Label CSV: one row per image with a file column (relative to `image_dir`, default the CSV's
folder), a label (0/1, positive/negative, or any text mapped by `positive=`) and optional
patient, split and view columns; every other column is kept.

Lung masks are found beside each image as `masks/<stem>.png`, `<stem>-mask.png` or
`<stem>_mask.png` (column `mask_path`, '' when absent); such files are never images.
`check` decides how much of each file is read: "none", "header" (default: empty files,
non-images and DICOMs without pixel data are caught) or "decode" (truncated files too).
A bad file or row is a `Problem` and is skipped; only an unusable layout raises.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from cinelab.data.manifest import REQUIRED, new_manifest, normalise_split
from cinelab.errors import InputError, Problem, UnreadableFileError
from cinelab.io.cxr_dicom import DICOM_SUFFIXES, is_dicom_file, read_cxr, read_cxr_header
from cinelab.io.image import IMAGE_SUFFIXES, probe_image
from cinelab.io.table import read_table

MODALITY = "cxr"
STAGE = "cxr-ingest"
AUTO = "auto"
CHECKS = ("none", "header", "decode")
CXR_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES
MASK_DIR = "masks"
MASK_STEM_SUFFIXES = ("-mask", "_mask")
MASK_SUFFIX = ".png"
LABEL_FOLDERS = {"positive": 1, "pos": 1, "negative": 0, "neg": 0}
LABEL_VALUES = {"1": 1, "1.0": 1, "positive": 1, "pos": 1, "true": 1, "yes": 1,
                "0": 0, "0.0": 0, "negative": 0, "neg": 0, "false": 0, "no": 0}
ID_SEPARATOR = "__"
FILE_CANDIDATES = ("file", "filename", "file_name", "path", "image", "imagename", "image_name",
                   "image_path", "Image Index", "sample_id")
LABEL_CANDIDATES = ("label", "target", "class", "covid", "finding")
PATIENT_CANDIDATES = ("patient_id", "patientid", "patient", "Patient ID")
SPLIT_CANDIDATES = ("split",)
VIEW_CANDIDATES = ("view", "ViewPosition", "View Position")
KNOWN_VIEWS = ("PA", "AP")
RENAMED_PREFIX = "csv_"


@dataclass
class CxrCohort:
    """A read CXR layout: the manifest and every problem found."""

    manifest: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    root: Path = Path(".")


def read_cxr_folders(root: str | Path, check: str = "header") -> CxrCohort:
    """Manifest of the DeepCOVID-XR tree: split from the split folder, label 1/0 from
    Positive/Negative; files outside a label folder are reported."""
    root = Path(root).resolve()
    check_mode(check)
    problems: list[Problem] = []
    images = list_images(root)
    if not images:
        raise InputError(root, "root", f"chest X-ray images ({', '.join(CXR_SUFFIXES)}) "
                         "under <split>/<Positive|Negative>/", "no image files")
    rels = _labelled_files(root, images, problems)
    ids = unique_ids([r for r, _, _ in rels])
    rows = []
    for (rel, split, label), sid in zip(rels, ids, strict=True):
        row = {"sample_id": sid, "path": str(root / rel), "split": split, "label": label}
        checked = check_row(row, check, problems)
        if checked is not None:
            rows.append(checked)
    return CxrCohort(cxr_manifest(rows), problems, root)


def read_cxr_labels(
    csv: str | Path,
    image_dir: str | Path | None = None,
    *,
    file_column: str = AUTO,
    label_column: str = AUTO,
    positive: tuple[str, ...] | list[str] | None = None,
    check: str = "header",
) -> CxrCohort:
    """Manifest from a label CSV (file, label[, split, patient, view, ...]).

    With `positive` (e.g. ("COVID-19",)) the label column holds text and a row is 1 when
    its value is one of them (any case), else 0; otherwise 0/1 or positive/negative.
    """
    csv = Path(csv).resolve()
    check_mode(check)
    table = _read_csv(csv)
    columns = list(table.columns)
    file_col = _require(csv, columns, file_column, FILE_CANDIDATES, "file_column")
    label_col = _require(csv, columns, label_column, LABEL_CANDIDATES, "label_column")
    patient_col = pick_column(columns, PATIENT_CANDIDATES)
    split_col = pick_column(columns, SPLIT_CANDIDATES)
    view_col = pick_column(columns, VIEW_CANDIDATES)
    base = Path(image_dir).resolve() if image_dir is not None else csv.parent
    problems: list[Problem] = []
    consumed = {file_col, label_col, patient_col, split_col, view_col} - {None}
    rows = []
    for i, rec in enumerate(table.to_dict("records")):
        row = _csv_row(rec, i, csv, base, (file_col, label_col, patient_col, split_col,
                                           view_col), positive, problems)
        if row is None:
            continue
        row.update(_extra_columns(rec, consumed))
        checked = check_row(row, check, problems)
        if checked is not None:
            rows.append(checked)
    rows = _drop_duplicate_ids(rows, csv, problems)
    return CxrCohort(cxr_manifest(rows), problems, base)


def list_images(root: Path) -> list[PurePosixPath]:
    """Relative paths of every CXR image under `root` (sorted; masks and hidden files out)."""
    if not root.is_dir():
        raise InputError(root, "root", "a folder of chest X-ray images", "no such folder")
    rels = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix.lower() not in CXR_SUFFIXES or any(p.startswith(".") for p in rel.parts):
            continue
        if is_mask_file(rel) or not path.is_file():
            continue
        rels.append(PurePosixPath(rel.as_posix()))
    return sorted(rels)


def is_mask_file(rel: Path | PurePosixPath) -> bool:
    """A lung-mask file by its place (a masks/ folder) or name (<stem>-mask, <stem>_mask)."""
    in_mask_dir = any(p.lower() == MASK_DIR for p in rel.parts[:-1])
    return in_mask_dir or rel.stem.lower().endswith(MASK_STEM_SUFFIXES)


def find_mask(image_path: str | Path) -> Path | None:
    """The lung mask stored beside an image, or None."""
    path = Path(image_path)
    candidates = [path.parent / MASK_DIR / f"{path.stem}{MASK_SUFFIX}"]
    candidates += [path.parent / f"{path.stem}{s}{MASK_SUFFIX}" for s in MASK_STEM_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def unique_ids(rels: list[PurePosixPath]) -> list[str]:
    """File stems; stems shared by several files use the relative path joined by '__'."""
    counts = Counter(r.stem for r in rels)
    ids = [r.stem if counts[r.stem] == 1 else ID_SEPARATOR.join(r.with_suffix("").parts)
           for r in rels]
    counts = Counter(ids)
    return [i if counts[i] == 1 else ID_SEPARATOR.join(r.parts)
            for i, r in zip(ids, rels, strict=True)]


def pick_column(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    """The first candidate column present, compared ignoring case."""
    by_case = {str(c).casefold(): c for c in reversed(columns)}
    return next((by_case[c.casefold()] for c in candidates if c.casefold() in by_case), None)


def normalise_view(value: object) -> str:
    """'PA', 'AP' (also from 'AP Supine', 'ap erect'), other views upper-cased, '' if none."""
    if value is None or pd.isna(value):  # type: ignore[arg-type]
        return ""
    text = str(value).strip().upper()
    return next((v for v in KNOWN_VIEWS if text.startswith(v)), text)


def check_file(path: Path, check: str) -> dict[str, Any]:
    """Read as much of one file as `check` says; returns rows/columns (and DICOM fields)."""
    if check == "none":
        return {}
    if is_dicom_file(path):
        header = read_cxr_header(path)
        if not header.has_pixels:
            raise UnreadableFileError(path, "PixelData", "an image with pixel data",
                                      "no PixelData element (a header-only file)")
        info = {"rows": header.rows, "columns": header.columns,
                "dicom_view": header.view, "dicom_patient": header.patient_id}
    else:
        probe = probe_image(path)
        info = {"rows": probe.height, "columns": probe.width}
    if check == "decode":
        image = read_cxr(path)
        info.update(rows=int(image.shape[0]), columns=int(image.shape[1]))
    return info


def check_mode(check: str) -> None:
    """Raise InputError unless `check` is one of CHECKS."""
    if check not in CHECKS:
        raise InputError(None, "check", f"one of {CHECKS}", repr(check))


def _labelled_files(root: Path, rels: list[PurePosixPath], problems: list[Problem]
                    ) -> list[tuple[PurePosixPath, str, int]]:
    """(relative path, split, label) of files under a Positive/Negative folder."""
    out = []
    for rel in rels:
        folders = [p.lower() for p in rel.parts[:-1]]
        labels = [LABEL_FOLDERS[p] for p in folders if p in LABEL_FOLDERS]
        splits = [s for s in (normalise_split(p) for p in folders) if s is not None]
        if len(labels) != 1 or len(splits) > 1:
            problems.append(Problem(str(root / rel), STAGE, "not inside exactly one "
                                    "Positive/Negative folder (and at most one split folder): "
                                    "skipped", expected="<split>/<Positive|Negative>/<file>",
                                    found=str(rel)))
            continue
        out.append((rel, splits[0] if splits else "", labels[0]))
    return out


def check_row(row: dict[str, Any], check: str,
              problems: list[Problem]) -> dict[str, Any] | None:
    """The row with file info, mask path and DICOM view/patient; None (and a problem) if bad."""
    path = Path(row["path"])
    try:
        info = check_file(path, check)
    except InputError as exc:
        problems.append(Problem.from_exception(path, STAGE, exc))
        return None
    mask = find_mask(path)
    row["mask_path"] = str(mask) if mask is not None else ""
    if not row.get("view") and info.get("dicom_view"):
        row["view"] = normalise_view(info["dicom_view"])
    if not row.get("patient_id") and info.get("dicom_patient"):
        row["patient_id"] = info["dicom_patient"]
    row.setdefault("rows", info.get("rows"))
    row.setdefault("columns", info.get("columns"))
    return row


def cxr_manifest(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A CXR manifest (modality 'cxr'); an empty cohort keeps the required columns."""
    if not rows:
        cols = list(REQUIRED) + ["label", "mask_path"]
        return pd.DataFrame(columns=cols)
    for row in rows:
        row["modality"] = MODALITY
        row.setdefault("view", "")
        row["patient_id"] = row.get("patient_id") or None
    df = new_manifest(rows)
    df["label"] = df["label"].astype(int)
    return df


def _read_csv(csv: Path) -> pd.DataFrame:
    if not csv.is_file():
        raise InputError(csv, "labels_csv", "an existing CSV file", "nothing at that path")
    return read_table(csv, text_columns=(*FILE_CANDIDATES, *PATIENT_CANDIDATES,
                                         *SPLIT_CANDIDATES))


def _require(csv: Path, columns: list[str], wanted: str, candidates: tuple[str, ...],
             field: str) -> str:
    """The named column (it must exist) or the first candidate present for 'auto'."""
    if wanted != AUTO:
        if wanted not in columns:
            raise InputError(csv, field, f"a column named {wanted!r}", f"columns {columns}")
        return wanted
    found = pick_column(columns, candidates)
    if found is None:
        raise InputError(csv, field, f"one of the columns {list(candidates)}",
                         f"columns {columns}", fix=f"name the column with {field}=")
    return found


def _csv_row(rec: dict[str, Any], i: int, csv: Path, base: Path,
             cols: tuple[str, str, str | None, str | None, str | None],
             positive: tuple[str, ...] | list[str] | None,
             problems: list[Problem]) -> dict[str, Any] | None:
    """One label row as a manifest row; None (and a problem) when unusable."""
    file_col, label_col, patient_col, split_col, view_col = cols
    value = rec[file_col]
    if value is None or pd.isna(value) or not str(value).strip():
        problems.append(Problem(str(csv), STAGE, "no file name: row dropped", row=i,
                                column=file_col, expected="a file name", found=repr(value)))
        return None
    path = base / str(value).strip().replace("\\", "/")
    if not path.is_file():
        problems.append(Problem(str(path), STAGE, "no such image: row dropped", row=i,
                                column=file_col, expected=f"a file under {base}",
                                found="nothing at that path"))
        return None
    label = parse_label(rec[label_col], positive)
    if label is None:
        problems.append(Problem(str(csv), STAGE, f"unreadable label {rec[label_col]!r}: "
                                "row dropped", row=i, column=label_col,
                                expected="0/1 or positive/negative (or pass positive=)",
                                found=repr(rec[label_col])))
        return None
    return {"sample_id": path.stem, "path": str(path), "label": label,
            "patient_id": _text(rec.get(patient_col)) if patient_col else None,
            "split": _split(rec.get(split_col), i, csv, split_col, problems),
            "view": normalise_view(rec.get(view_col)) if view_col else ""}


def parse_label(value: object, positive: tuple[str, ...] | list[str] | None = None) -> int | None:
    """1/0 from a label cell; None when it cannot be read."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):  # type: ignore[arg-type]
        return None
    text = str(value).strip().casefold()
    if positive is not None:
        return int(text in {p.casefold() for p in positive}) if text else None
    return LABEL_VALUES.get(text)


def _split(value: object, row: int, csv: Path, column: str | None,
           problems: list[Problem]) -> str:
    if column is None or value is None or pd.isna(value) or not str(value).strip():  # type: ignore[arg-type]
        return ""
    split = normalise_split(value)
    if split is None:
        problems.append(Problem(str(csv), STAGE, f"unknown split {value!r}: set to ''",
                                row=row, column=column, expected="train, val or test",
                                found=repr(value)))
        return ""
    return split


def _extra_columns(rec: dict[str, Any], consumed: set[str]) -> dict[str, Any]:
    """Unconsumed CSV columns; names clashing with manifest columns get the 'csv_' prefix."""
    taken = set(REQUIRED) | {"label", "mask_path", "rows", "columns"}
    return {(f"{RENAMED_PREFIX}{k}" if k in taken else k): v
            for k, v in rec.items() if k not in consumed}


def _drop_duplicate_ids(rows: list[dict[str, Any]], csv: Path,
                        problems: list[Problem]) -> list[dict[str, Any]]:
    """Rows whose file appears twice are reported; a stem clash uses the parent folder."""
    seen: dict[str, dict[str, Any]] = {}
    paths: set[str] = set()
    for row in rows:
        if row["path"] in paths:
            problems.append(Problem(str(csv), STAGE, f"{row['path']} listed twice: kept the "
                                    "first row", expected="one row per image",
                                    found="a repeated file"))
            continue
        sid = row["sample_id"]
        if sid in seen:
            sid = ID_SEPARATOR.join(Path(row["path"]).with_suffix("").parts[-2:])
        row["sample_id"] = sid
        seen[sid] = row
        paths.add(row["path"])
    return list(seen.values())


def _text(value: object) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):  # type: ignore[arg-type]
        return None
    text = str(value).strip()
    return text or None
