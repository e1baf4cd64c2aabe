"""Any folder of videos (any nesting) + an optional label CSV -> manifest.

The label CSV is keyed by file name (with or without suffix) or by the path relative to the
folder; a patient column ("patient_id"/"PatientID") and a split column are used when present
and every other column becomes a label. Unmatched videos and labels are reported, never fatal.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path, PurePosixPath

import pandas as pd

from cinelab.data.manifest import new_manifest, normalise_split
from cinelab.errors import InputError, Problem
from cinelab.io.table import read_table
from cinelab.io.video import VIDEO_SUFFIXES

STAGE = "folders"
AUTO = "auto"
ID_CANDIDATES = ("FileName", "file_name", "file", "filepath", "path", "video", "video_path",
                 "name", "sample_id", "id")
PATIENT_CANDIDATES = ("patient_id", "PatientID")
SPLIT_CANDIDATES = ("split",)
ID_SEPARATOR = "__"
SAFE_ID_MAX = 128  # the manifest's sample-id length limit
DEFAULT_MODALITY = "echo"
OVERRIDES = ("modality", "view", "fold")  # CSV columns that set the manifest's own columns
RENAMED_PREFIX = "csv_"  # CSV columns named like other manifest columns are kept renamed


def read_video_folder(
    root: str | Path,
    labels_csv: str | Path | None = None,
    id_column: str = AUTO,
    split_column: str | None = AUTO,
    *,
    modality: str = DEFAULT_MODALITY,
    view: str = "",
) -> tuple[pd.DataFrame, list[Problem]]:
    """Manifest of every video under `root` joined to the optional label CSV, plus problems.

    `id_column="auto"` picks the first of ID_CANDIDATES present (any case);
    `split_column="auto"` uses a "split" column when present, None ignores splits.
    """
    root = Path(root).resolve()
    rels = _find_videos(root)
    ids = _unique_ids(rels)
    base = pd.DataFrame({"sample_id": ids, "patient_id": ids,
                         "path": [str(root / r) for r in rels], "modality": modality,
                         "view": view, "split": "", "fold": -1})
    if labels_csv is None:
        return new_manifest(base.to_dict("records")), []
    problems: list[Problem] = []
    labels = _join_labels(base, rels, root, Path(labels_csv), id_column, split_column,
                          problems)
    return new_manifest(labels.to_dict("records")), problems


def _find_videos(root: Path) -> list[PurePosixPath]:
    """Relative paths of every video under `root`, sorted; hidden files/folders skipped."""
    if not root.is_dir():
        raise InputError(root, "folder", "a folder of videos", "nothing at that path")
    rels = sorted(PurePosixPath(p.relative_to(root).as_posix()) for p in root.rglob("*")
                  if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not rels:
        raise InputError(root, "folder", f"at least one video ({', '.join(VIDEO_SUFFIXES)})",
                         "no video files")
    return rels


def safe_id(text: str) -> str:
    """A file-derived name as a safe sample id: characters other than letters, digits, '.',
    '_' and '-' become '_', '..' becomes '_', a leading '.'/'_'/'-' gets an 's' prefix and
    ids longer than SAFE_ID_MAX keep their start plus a hash of the whole (stays unique)."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    while ".." in out:
        out = out.replace("..", "_")
    if not out or not out[0].isalnum():
        out = "s" + out
    if len(out) > SAFE_ID_MAX:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        out = f"{out[:SAFE_ID_MAX - 13]}-{digest}"
    return out


def _flatten(rel: PurePosixPath) -> str:
    return safe_id(ID_SEPARATOR.join(rel.parts))


def _unique_ids(rels: list[PurePosixPath]) -> list[str]:
    """File stems (made safe); colliding stems use the relative path (then with its suffix)."""
    ids = [safe_id(r.stem) for r in rels]
    counts = Counter(ids)
    ids = [i if counts[i] == 1 else _flatten(r.with_suffix("")) for i, r in zip(ids, rels,
                                                                                strict=True)]
    counts = Counter(ids)
    ids = [i if counts[i] == 1 else _flatten(r) for i, r in zip(ids, rels, strict=True)]
    return dedupe_ids(ids)


def dedupe_ids(ids: list[str]) -> list[str]:
    """Ids still equal after making them safe ('a b' and 'a_b') get -2, -3, ... suffixes."""
    seen: Counter[str] = Counter()
    out = []
    for sid in ids:
        seen[sid] += 1
        out.append(sid if seen[sid] == 1 else f"{sid}-{seen[sid]}")
    return out


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...],
                 path: Path, field: str) -> str | None:
    """The named column, or the first candidate present (any case) for 'auto'."""
    if wanted is None:
        return None
    if wanted != AUTO:
        if wanted not in columns:
            raise InputError(path, field, f"a column named {wanted!r}",
                             f"columns {columns}", f"pass the right {field}=")
        return wanted
    by_case = {c.casefold(): c for c in reversed(columns)}
    return next((by_case[c.casefold()] for c in candidates if c.casefold() in by_case), None)


def _read_labels(path: Path) -> pd.DataFrame:
    """The label CSV with id-like, patient and split columns read as text."""
    if not path.is_file():
        raise InputError(path, "labels_csv", "an existing CSV file", "nothing at that path")
    return read_table(path, text_columns=(*ID_CANDIDATES, *PATIENT_CANDIDATES,
                                          *SPLIT_CANDIDATES))


def _video_keys(rels: list[PurePosixPath]) -> list[dict[str, list[int]]]:
    """Lookups from most to least specific: relative path, path w/o suffix, name, stem."""
    lookups: list[dict[str, list[int]]] = [{}, {}, {}, {}]
    for i, r in enumerate(rels):
        for table, key in zip(lookups, (str(r), str(r.with_suffix("")), r.name, r.stem),
                              strict=True):
            table.setdefault(key.casefold(), []).append(i)
    return lookups


def _normalise_key(value: object, root: Path) -> str:
    """A label id as a relative POSIX path: backslashes, './' and the root prefix removed."""
    text = str(value).strip().replace("\\", "/")
    if Path(text).is_absolute() and Path(text).is_relative_to(root):
        text = Path(text).relative_to(root).as_posix()
    while text.startswith("./"):
        text = text[2:]
    return text.casefold()


def _match(keys: pd.Series, rels: list[PurePosixPath], root: Path, path: Path, column: str,
           problems: list[Problem]) -> dict[int, int]:
    """video index -> label row; unmatched, ambiguous and repeated labels are reported."""
    lookups = _video_keys(rels)
    assigned: dict[int, int] = {}
    for row, value in enumerate(keys):
        key = "" if pd.isna(value) else _normalise_key(value, root)
        hits = next((t[key] for t in lookups if key in t), [])
        if len(hits) != 1:
            found = "no video" if not hits else f"{len(hits)} videos: " + ", ".join(
                str(rels[i]) for i in hits)
            problems.append(Problem(str(path), STAGE, f"label row {value!r} matches {found}: "
                                    "dropped", row=row, column=column,
                                    expected="exactly one video under the folder", found=found))
        elif hits[0] in assigned:
            problems.append(Problem(str(path), STAGE, f"second label row for {rels[hits[0]]}: "
                                    f"kept row {assigned[hits[0]]}", row=row, column=column,
                                    expected="one label row per video", found=repr(value)))
        else:
            assigned[hits[0]] = row
    return assigned


def _split(value: object, row: int, path: Path, column: str, problems: list[Problem]) -> str:
    """train/val/test from any case; empty stays ''; unknown -> '' and a problem."""
    if pd.isna(value) or not str(value).strip():
        return ""
    split = normalise_split(value)
    if split is None:
        problems.append(Problem(str(path), STAGE, f"unknown split {value!r}: set to ''",
                                row=row, column=column, expected="train, val or test",
                                found=repr(value)))
        return ""
    return split


def _join_labels(base: pd.DataFrame, rels: list[PurePosixPath], root: Path, path: Path,
                 id_column: str, split_column: str | None,
                 problems: list[Problem]) -> pd.DataFrame:
    """Videos joined to their label rows: patient, split and label columns filled in."""
    table = _read_labels(path)
    columns = list(table.columns)
    id_col = _pick_column(columns, id_column, ID_CANDIDATES, path, "id_column")
    if id_col is None:
        raise InputError(path, "id_column", f"one of the columns {list(ID_CANDIDATES)}",
                         f"columns {columns}", "name the file-name column with id_column=")
    split_col = _pick_column(columns, split_column, SPLIT_CANDIDATES, path, "split_column")
    patient_col = _pick_column(columns, AUTO, PATIENT_CANDIDATES, path, "patient_id")
    assigned = _match(table[id_col], rels, root, path, id_col, problems)
    for i in sorted(set(range(len(rels))) - set(assigned)):
        problems.append(Problem(base["path"].iat[i], STAGE, f"video {rels[i]} has no label row",
                                column=id_col, expected=f"a row in {path}", found="no row"))
    out = base.copy()
    for vid, row in assigned.items():
        if patient_col is not None and pd.notna(table[patient_col].iat[row]):
            out.loc[vid, "patient_id"] = str(table[patient_col].iat[row]).strip()
        if split_col is not None:
            out.loc[vid, "split"] = _split(table[split_col].iat[row], row, path, split_col,
                                           problems)
    label_cols = [c for c in columns if c not in (id_col, split_col, patient_col)]
    labels = table.iloc[list(assigned.values())][label_cols]
    labels.index = list(assigned.keys())
    for col in OVERRIDES:
        if col in labels.columns:
            present = labels[col].dropna()
            out.loc[present.index, col] = present
            labels = labels.drop(columns=col)
    labels = labels.rename(columns={c: f"{RENAMED_PREFIX}{c}" for c in labels.columns
                                    if c in out.columns})
    return pd.concat([out, labels.reindex(range(len(rels)))], axis=1)
