"""NIH ChestX-ray14 -> multi-label manifest, and seeded patient-wise splits.

Layout under `root` (the public release; images may sit in images/ or images_001/images/...)::

    Data_Entry_2017.csv    Image Index, Finding Labels, Follow-up #, Patient ID,
                           Patient Age, Patient Gender, View Position, ...
    test_list.txt          optional official test images (one name a line)
    **/<Image Index>       the PNGs, found anywhere below `image_dir` (default `root`)

`Finding Labels` holds '|'-separated findings; each of the 14 in `NIH_FINDINGS` becomes a 0/1
column ("No Finding" = all zero). Unknown findings, missing images and rows without a patient
are reported as problems; the row is dropped.

Splits (`split=`): "official" puts the test_list.txt images in test and splits the rest into
train/val by patient; "random" splits every patient by `fractions`; "none" leaves '' for a
later splitter. Every split is patient-wise and deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.manifest import SPLITS
from cinelab.errors import InputError, Problem
from cinelab.io.image import IMAGE_SUFFIXES
from cinelab.io.table import read_table
from cinelab.pipelines.cxr.layout import (
    CxrCohort,
    check_mode,
    check_row,
    cxr_manifest,
    is_mask_file,
    normalise_view,
)

NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema",
                "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
FINDING_SEPARATOR = "|"
NIH_CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
TEST_LIST = "test_list.txt"
IMAGE_COLUMN, FINDINGS_COLUMN, PATIENT_COLUMN = "Image Index", "Finding Labels", "Patient ID"
REQUIRED_COLUMNS = (IMAGE_COLUMN, FINDINGS_COLUMN, PATIENT_COLUMN)
EXTRA_COLUMNS = {"View Position": "view", "Follow-up #": "follow_up", "Patient Age": "age",
                 "Patient Gender": "sex"}
SPLIT_MODES = ("official", "random", "none")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test (by images, assigned by patient)
OFFICIAL_VAL_FRACTION = 0.125  # of the official train_val images
STAGE = "nih-ingest"


def parse_findings(text: object) -> tuple[dict[str, int], list[str]]:
    """The 14 binary targets from a 'Finding Labels' cell, and any unknown findings."""
    values = dict.fromkeys(NIH_FINDINGS, 0)
    if text is None or (not isinstance(text, str) and pd.isna(text)):  # type: ignore[arg-type]
        return values, ["<empty>"]
    unknown = []
    for item in (s.strip() for s in str(text).split(FINDING_SEPARATOR)):
        if item in values:
            values[item] = 1
        elif item.replace(" ", "_") in values:  # "Pleural Thickening"
            values[item.replace(" ", "_")] = 1
        elif item != NO_FINDING:
            unknown.append(item)
    return values, unknown


def findings_text(values: dict[str, int]) -> str:
    """The 'Finding Labels' cell for 0/1 targets (the inverse of parse_findings)."""
    present = [f for f in NIH_FINDINGS if values.get(f)]
    return FINDING_SEPARATOR.join(present) if present else NO_FINDING


def read_nih(
    root: str | Path,
    csv: str | Path | None = None,
    image_dir: str | Path | None = None,
    *,
    split: str = "official",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    check: str = "none",
) -> CxrCohort:
    """Multi-label manifest of an NIH ChestX-ray14 layout (see the module docstring)."""
    root = Path(root).resolve()
    check_mode(check)
    if split not in SPLIT_MODES:
        raise InputError(None, "split", f"one of {SPLIT_MODES}", repr(split))
    csv = Path(csv) if csv is not None else _find_csv(root)
    table = _read_table(csv)
    images = _index_images(Path(image_dir).resolve() if image_dir is not None else root)
    problems: list[Problem] = []
    rows = []
    for i, rec in enumerate(table.to_dict("records")):
        row = _row(rec, i, csv, images, problems)
        if row is not None and (row := check_row(row, check, problems)) is not None:
            rows.append(row)
    manifest = cxr_manifest(rows)
    manifest = _assign_splits(manifest, root, split, fractions, seed)
    return CxrCohort(manifest, problems, root)


def patient_split(
    patients: Sequence[object],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    names: Sequence[str] = SPLITS,
) -> dict[str, str]:
    """Patient -> split name, shuffled by `seed`; split sizes follow `fractions` by image
    count (each patient weighs its number of entries in `patients`)."""
    fr = np.asarray(fractions, dtype=float)
    if len(fr) != len(names) or (fr < 0).any() or fr.sum() <= 0:
        raise InputError(None, "fractions", f"{len(names)} non-negative numbers, not all 0",
                         repr(list(fractions)))
    ids, counts = np.unique(np.asarray([str(p) for p in patients]), return_counts=True)
    order = np.random.default_rng(seed).permutation(len(ids))
    # a patient goes to the split its middle image falls in, along the shuffled order
    middle = (np.cumsum(counts[order]) - counts[order] / 2.0) / counts.sum()
    bounds = np.cumsum(fr / fr.sum())
    which = np.minimum(np.searchsorted(bounds, middle, side="right"), len(names) - 1)
    return {str(ids[o]): names[int(w)] for o, w in zip(order, which, strict=True)}


def assign_patient_splits(
    manifest: pd.DataFrame,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    only_missing: bool = True,
) -> pd.DataFrame:
    """A copy of the manifest with patient-wise splits. With `only_missing`, rows that have a
    split keep it, rows of a patient who already has one split join it, and only patients
    without any split are distributed by `fractions`."""
    out = manifest.copy()
    patients = out["patient_id"].astype(str)
    todo = out["split"].eq("") if only_missing else pd.Series(True, index=out.index)
    if only_missing:
        known = out.loc[~todo].groupby(patients[~todo])["split"].agg(
            lambda s: s.iat[0] if s.nunique() == 1 else "")
        inherit = todo & patients.isin(known.index)
        out.loc[inherit, "split"] = patients[inherit].map(known)
        todo &= ~patients.isin(known.index)
    if not todo.any():
        return out
    mapping = patient_split(patients[todo].tolist(), fractions, seed)
    out.loc[todo, "split"] = patients[todo].map(mapping)
    return out


def _find_csv(root: Path) -> Path:
    for name in NIH_CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise InputError(root, "csv", f"one of {NIH_CSV_NAMES} in the folder",
                     "no such file", fix="pass csv= to name the label table")


def _read_table(csv: Path) -> pd.DataFrame:
    if not csv.is_file():
        raise InputError(csv, "csv", "an existing NIH label CSV", "nothing at that path")
    table = read_table(csv, dtype={IMAGE_COLUMN: str, FINDINGS_COLUMN: str,
                                   PATIENT_COLUMN: str})
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(csv, ", ".join(missing), f"columns {list(REQUIRED_COLUMNS)}",
                         f"columns {list(table.columns)}")
    return table


def _index_images(image_dir: Path) -> dict[str, Path]:
    """File name -> path of every image below `image_dir` (first found wins; masks out)."""
    if not image_dir.is_dir():
        raise InputError(image_dir, "image_dir", "a folder holding the NIH images",
                         "no such folder")
    out: dict[str, Path] = {}
    for path in sorted(image_dir.rglob("*")):
        rel = path.relative_to(image_dir)
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") \
                and not is_mask_file(rel):
            out.setdefault(path.name, path)
    return out


def _row(rec: dict[str, Any], i: int, csv: Path, images: dict[str, Path],
         problems: list[Problem]) -> dict[str, Any] | None:
    """One NIH row as a manifest row; None (and a problem) when unusable."""
    name = str(rec[IMAGE_COLUMN]).strip()
    values, unknown = parse_findings(rec[FINDINGS_COLUMN])
    patient = rec[PATIENT_COLUMN]
    error = None
    if unknown:
        error = (FINDINGS_COLUMN, f"findings from {list(NIH_FINDINGS)} or {NO_FINDING!r}",
                 f"{unknown}")
    elif patient is None or pd.isna(patient) or not str(patient).strip():
        error = (PATIENT_COLUMN, "a patient id", repr(patient))
    elif name not in images:
        error = (IMAGE_COLUMN, "an image file below the image folder", f"no file {name!r}")
    if error is not None:
        problems.append(Problem(str(csv), STAGE, f"expected {error[1]}, found {error[2]}: "
                                "row dropped", row=i, column=error[0], expected=error[1],
                                found=error[2]))
        return None
    row = {"sample_id": Path(name).stem, "path": str(images[name]),
           "patient_id": str(patient).strip(), "split": "", "label": int(any(values.values())),
           "findings": str(rec[FINDINGS_COLUMN]), **values}
    for column, key in EXTRA_COLUMNS.items():
        if column in rec:
            row[key] = normalise_view(rec[column]) if key == "view" else rec[column]
    return row


def _assign_splits(manifest: pd.DataFrame, root: Path, split: str,
                   fractions: Sequence[float], seed: int) -> pd.DataFrame:
    if manifest.empty or split == "none":
        return manifest
    test_list = root / TEST_LIST
    if split == "random" or not test_list.is_file():
        return assign_patient_splits(manifest, fractions, seed, only_missing=False)
    test_ids = {Path(s.strip()).stem for s in test_list.read_text().splitlines() if s.strip()}
    out = manifest.copy()
    out.loc[out["sample_id"].isin(test_ids), "split"] = "test"
    val = OFFICIAL_VAL_FRACTION
    return assign_patient_splits(out, (1.0 - val, val, 0.0), seed, only_missing=True)
