"""The `rvf` layout of `cinelab ingest`: how an RVF cohort folder is recognised and read.

A cohort is a folder of echo DICOMs with a class CSV (id,class) and a split CSV (id,split)
at its top level (`classes.csv`/`splits.csv`, else the narrowest CSV with such columns).
A plain DICOM folder without a class CSV is not claimed (the generic `dicom` layout reads it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError
from cinelab.formats.ingest import Ingested, Layout, register_layout
from cinelab.io.dicom import is_dicom_path
from cinelab.pipelines.rvf.layout import CLASS_COLUMNS, ID_COLUMNS, SPLIT_COLUMNS, ingest_rvf

LAYOUT_NAME = "rvf"
CLASS_FILES = ("classes.csv", "labels.csv")
SPLIT_FILES = ("splits.csv", "split.csv")

def _header(path: Path) -> list[str]:
    try:
        return [str(c).strip().lower() for c in pd.read_csv(path, nrows=0).columns]
    except (OSError, ValueError):
        return []


def _find_table(root: Path, names: tuple[str, ...], value_columns: tuple[str, ...]
                ) -> Path | None:
    """A top-level CSV of `root`: one of `names`, else the narrowest one with an id column
    and one of `value_columns` (by name)."""
    for name in names:
        if (root / name).is_file():
            return root / name
    ids = {c.lower() for c in ID_COLUMNS}
    values = {c.lower() for c in value_columns}
    found = [(len(h), p) for p in sorted(root.glob("*.csv")) if p.is_file()
             for h in [_header(p)] if ids & set(h) and values & set(h)]
    return min(found)[1] if found else None


def has_dicom(root: Path) -> bool:
    return any(p.is_file() and is_dicom_path(p) for p in root.rglob("*"))


def is_rvf_cohort(root: Path) -> bool:
    """A folder of echo DICOMs with a class CSV (id + class columns) at its top level."""
    root = Path(root)
    return root.is_dir() and _find_table(root, CLASS_FILES, CLASS_COLUMNS) is not None \
        and has_dicom(root)


def rvf_tables(root: Path, options: Mapping[str, Any]) -> tuple[Path, Path]:
    """(class CSV, split CSV) of a cohort: options "classes"/"labels" and "splits", else the
    cohort's own top-level CSVs."""
    root = Path(root)
    classes = options.get("classes") or options.get("labels") or \
        _find_table(root, CLASS_FILES, CLASS_COLUMNS)
    splits = options.get("splits") or _find_table(root, SPLIT_FILES, SPLIT_COLUMNS)
    if classes is None:
        raise InputError(root, "classes", "a class CSV (id,class) in the folder",
                         "none found", fix="pass --labels CLASSES.csv")
    if splits is None:
        raise InputError(root, "splits", "a split CSV (id,split) in the folder",
                         "none found", fix="pass --option splits=SPLITS.csv")
    return Path(classes), Path(splits)


def read_rvf_layout(root: Path, options: Mapping[str, Any]) -> Ingested:
    """The `rvf` layout reader: pseudonymised ingest written to options["out"] (the ingest
    folder), with de-identified DICOM copies that the manifest points to. Without "out" it
    refuses: a manifest of raw paths would carry folder names that may name the patient."""
    if not options.get("out"):
        raise InputError(root, "out", "the ingest folder for the de-identified DICOM copies",
                         "none given", fix="pass --option out=<the --out folder>")
    classes, splits = rvf_tables(root, options)
    manifest, problems = ingest_rvf(root, classes, splits, options["out"],
                                    positive_class=options.get("positive_class"))
    return Ingested(manifest, LAYOUT_NAME, None, problems)


RVF_LAYOUT = register_layout(Layout(
    LAYOUT_NAME, is_rvf_cohort, read_rvf_layout,
    "RV-failure echo: a folder of echo DICOMs (PatientID = study id) + a class CSV (id,class) "
    "+ a split CSV (id,split)", label_ranges={"label": (0, 1)}))
