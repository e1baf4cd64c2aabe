"""The manifest: one row per sample, the one contract between data and everything after it.

Required columns: sample_id, patient_id, path, modality, view, split, fold.
Every other column is a label (EF, EDV, class, age, ...) or sample metadata (fps, frames).
Stored as CSV or Parquet, chosen by suffix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.errors import CinelabError, InputError, Problem
from cinelab.io.table import read_table
from cinelab.utils import atomic_path

REQUIRED = ("sample_id", "patient_id", "path", "modality", "view", "split", "fold")
SPLITS = ("train", "val", "test")
_TEXT_COLUMNS = ("modality", "view", "split")
PATH_SUFFIX = "_path"  # columns named *_path hold optional file paths ('' when absent)
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "validate": "val",
    "test": "test", "testing": "test", "holdout": "test",
}


#: The one safe sample-id pattern: it becomes a file name in stores and outputs, so no path
#: separators, no leading dot (no '..', no hidden files), no spaces or control characters.
SAMPLE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SAMPLE_ID = re.compile(SAMPLE_ID_PATTERN)
SAMPLE_ID_RULE = ("a sample id of letters, digits, '.', '_' or '-' (1-128 characters, starting "
                  "with a letter or digit; no '/', '\\' or '..')")


def sample_id_error(value: object) -> str | None:
    """Why `value` is not a safe sample id (None when it is)."""
    if not isinstance(value, str):
        return f"{type(value).__name__} {value!r}"
    if not _SAMPLE_ID.fullmatch(value):
        return repr(value)
    if ".." in value:
        return f"{value!r} (holds '..')"
    return None


def validate_sample_id(value: object, path: str | Path | None = None) -> str:
    """`value` if it is a safe sample id, else InputError (it would become a path component)."""
    found = sample_id_error(value)
    if found is not None:
        raise InputError(path, "sample_id", SAMPLE_ID_RULE, found,
                         "rename the sample (ids become file names in the output folder)")
    return str(value)


def validate_sample_ids(values: Iterable[object], path: str | Path | None = None) -> list[str]:
    """Every id checked (the first bad one raises InputError) and unique."""
    ids = [validate_sample_id(v, path) for v in values]
    seen: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if sid in seen:
            raise InputError(path, "sample_id", "a unique sample id",
                             f"{sid!r} in rows {seen[sid]} and {i}",
                             "give each sample its own id")
        seen[sid] = i
    return ids


class ManifestError(CinelabError):
    """A manifest failed validation; `problems` lists every problem found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in the manifest"]
        lines += [f"  row {p.row}, column {p.column}: {p.error}" for p in problems[:20]]
        if len(problems) > 20:
            lines.append(f"  ... and {len(problems) - 20} more")
        super().__init__("\n".join(lines))


def normalise_split(value: object) -> str | None:
    """Map split strings in any case ('TRAIN', 'Validation', ...) to train/val/test."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return _SPLIT_ALIASES.get(str(value).strip().lower())


def new_manifest(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Build a manifest from row dicts, filling absent required columns with defaults."""
    df = pd.DataFrame(list(rows))
    if df.empty and not len(df.columns):
        df = pd.DataFrame(columns=["sample_id", "path"])
    defaults = {"patient_id": None, "modality": "", "view": "", "split": "", "fold": -1}
    for col in REQUIRED:
        if col not in df.columns:
            if col in ("sample_id", "path"):
                raise InputError(None, col, "a value in every row", "no such column")
            df[col] = defaults[col]
    df["patient_id"] = df["patient_id"].where(df["patient_id"].notna(), df["sample_id"])
    df["fold"] = df["fold"].fillna(-1).astype(int)
    df["split"] = df["split"].fillna("").astype(str)
    others = [c for c in df.columns if c not in REQUIRED]
    return df[list(REQUIRED) + others].reset_index(drop=True)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest from CSV or Parquet; missing required columns raise InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file", "an existing manifest file", "nothing at that path")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        header = read_table(path, nrows=0).columns
        text = [c for c in header if c in ("sample_id", "patient_id", *_TEXT_COLUMNS)
                or _is_path_column(c)]
        df = read_table(path, dtype={c: str for c in text}, keep_default_na=True)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(path, ", ".join(missing), f"columns {list(REQUIRED)}",
                         f"columns {list(df.columns)}")
    for col in [*_TEXT_COLUMNS, *filter(_is_path_column, df.columns)]:
        df[col] = df[col].fillna("").astype(str)
    df["fold"] = df["fold"].fillna(-1).astype(int)
    return df


def _is_path_column(name: object) -> bool:
    """Optional file columns ('mask_path', 'truth_path', ...): text, '' when absent."""
    return str(name).endswith(PATH_SUFFIX)


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest atomically as CSV or Parquet (by suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return path


def validate_manifest(
    df: pd.DataFrame,
    label_ranges: Mapping[str, tuple[float, float]] | None = None,
    root: str | Path | None = None,
    check_files: bool = True,
) -> list[Problem]:
    """Every problem at once: missing files, duplicate ids, bad labels, bad splits, leakage."""
    problems: list[Problem] = []
    problems += _missing_columns(df)
    if problems:
        return problems
    problems += _bad_ids(df)
    problems += _duplicate_ids(df)
    problems += _bad_splits(df)
    if check_files:
        problems += _missing_files(df, root)
    for column, (lo, hi) in (label_ranges or {}).items():
        problems += _bad_labels(df, column, lo, hi)
    problems += _leakage(df)
    return problems


def check_manifest(df: pd.DataFrame, source: str = "manifest", **kwargs: object) -> None:
    """Validate and raise ManifestError listing every problem, if any."""
    problems = validate_manifest(df, **kwargs)  # type: ignore[arg-type]
    if problems:
        raise ManifestError(source, problems)


def _problem(row: int, column: str, expected: str, found: str, file: str = "") -> Problem:
    return Problem(file=file, stage="manifest", row=row, column=column, expected=expected,
                   found=found, error=f"expected {expected}, found {found}")


def _missing_columns(df: pd.DataFrame) -> list[Problem]:
    return [_problem(-1, c, "a required column", "no such column")
            for c in REQUIRED if c not in df.columns]


def _bad_ids(df: pd.DataFrame) -> list[Problem]:
    out = []
    for i, value in enumerate(df["sample_id"]):
        found = sample_id_error(value)
        if found is not None:
            out.append(_problem(i, "sample_id", SAMPLE_ID_RULE, found))
    return out


def _duplicate_ids(df: pd.DataFrame) -> list[Problem]:
    dup = df["sample_id"].duplicated(keep="first")
    first = {sid: i for i, sid in reversed(list(enumerate(df["sample_id"])))}
    return [_problem(int(i), "sample_id", "a unique sample id",
                     f"'{df['sample_id'].iat[i]}' already in row {first[df['sample_id'].iat[i]]}")
            for i in np.flatnonzero(dup.to_numpy())]


def _bad_splits(df: pd.DataFrame) -> list[Problem]:
    out = []
    for i, value in enumerate(df["split"]):
        if value not in ("",) + SPLITS:
            out.append(_problem(i, "split", "one of train/val/test (or empty)", repr(value)))
    return out


def _missing_files(df: pd.DataFrame, root: str | Path | None) -> list[Problem]:
    out = []
    base = Path(root) if root is not None else None
    for i, p in enumerate(df["path"]):
        if not isinstance(p, str) or not p:
            out.append(_problem(i, "path", "a file path", repr(p)))
            continue
        full = Path(p) if base is None or Path(p).is_absolute() else base / p
        if not full.exists():
            out.append(_problem(i, "path", "an existing file", f"no file at {full}", str(full)))
    return out


def _bad_labels(df: pd.DataFrame, column: str, lo: float, hi: float) -> list[Problem]:
    if column not in df.columns:
        return [_problem(-1, column, "a label column", "no such column")]
    values = pd.to_numeric(df[column], errors="coerce")
    out = []
    for i, (raw, v) in enumerate(zip(df[column], values, strict=True)):
        if pd.isna(v):
            out.append(_problem(i, column, f"a number in [{lo}, {hi}]", repr(raw)))
        elif not lo <= v <= hi:
            out.append(_problem(i, column, f"a number in [{lo}, {hi}]", f"{v:g}"))
    return out


def _leakage(df: pd.DataFrame) -> list[Problem]:
    labelled = df.reset_index(drop=True)
    labelled = labelled[labelled["split"].isin(SPLITS)]  # bad splits are reported apart
    splits = labelled.groupby("patient_id")["split"].agg(lambda s: sorted(set(s)))
    out = []
    for pid, names in splits.items():
        if len(names) > 1:
            rows = [int(r) for r in labelled.index[labelled["patient_id"] == pid]]
            out.append(_problem(rows[0], "patient_id", "each patient in one split",
                                f"patient '{pid}' in splits {names} (rows {rows})"))
    return out
