"""CXR cohorts from any of their sources, the two layouts `cinelab ingest` recognises, and
label tables for evaluation.

* `load_cxr_cohort`: a DeepCOVID-XR folder tree, a label CSV (images under the folder), an
  ingest folder or a manifest -> `CxrCohort`.
* Layouts registered by the package (`LAYOUTS`): ``cxr-folders`` (the DeepCOVID-XR tree,
  ``<split>/<Positive|Negative>/...``) and ``nih`` (NIH ChestX-ray14, Data_Entry_2017.csv).
* `cxr_label_table`: what `cinelab evaluate --labels` may name (a folder tree, an ingest
  folder, a manifest or any label CSV) as one table for
  `cinelab.evaluate.classification.join_labels`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.data.manifest import normalise_split, read_manifest
from cinelab.evaluate.classification import read_labels
from cinelab.formats.ingest import Ingested, Layout
from cinelab.pipelines.cxr.layout import (
    CXR_SUFFIXES,
    LABEL_FOLDERS,
    CxrCohort,
    read_cxr_folders,
    read_cxr_labels,
)
from cinelab.pipelines.cxr.nih import NIH_CSV_NAMES, TEST_LIST, read_nih

MANIFEST = "manifest.csv"
FOLDERS_LAYOUT, NIH_LAYOUT = "cxr-folders", "nih"
LABEL_RANGE = {"label": (0.0, 1.0)}


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] \
        if folder.is_dir() else []


def _is_label_folder(folder: Path) -> bool:
    """A Positive/Negative folder holding at least one chest X-ray image file."""
    return folder.name.lower() in LABEL_FOLDERS and \
        any(p.suffix.lower() in CXR_SUFFIXES for p in folder.rglob("*"))


def is_cxr_tree(root: Path) -> bool:
    """A DeepCOVID-XR tree: Positive/Negative folders of images at the top or under split
    folders."""
    dirs = _subdirs(Path(root))
    if any(_is_label_folder(d) for d in dirs):
        return True
    return any(normalise_split(d.name) is not None and any(map(_is_label_folder, _subdirs(d)))
               for d in dirs)


def is_nih(root: Path) -> bool:
    """An NIH ChestX-ray14 release: its Data_Entry_2017 table at the top."""
    return any((Path(root) / name).is_file() for name in NIH_CSV_NAMES)


def read_tree_layout(root: Path, options: Mapping[str, Any]) -> Ingested:
    """`cinelab ingest` reader of the folder tree (or of a label CSV over its images)."""
    labels = options.get("labels")
    cohort = read_cxr_labels(labels, image_dir=root) if labels else read_cxr_folders(root)
    return Ingested(cohort.manifest, FOLDERS_LAYOUT, None, cohort.problems)


def read_nih_layout(root: Path, options: Mapping[str, Any]) -> Ingested:
    """`cinelab ingest` reader of the NIH layout (official test list when present)."""
    split = "official" if (Path(root) / TEST_LIST).is_file() else "random"
    cohort = read_nih(root, csv=options.get("labels"), split=options.get("split") or split)
    return Ingested(cohort.manifest, NIH_LAYOUT, None, cohort.problems)


LAYOUTS = (
    Layout(FOLDERS_LAYOUT, is_cxr_tree, read_tree_layout,
           "DeepCOVID-XR chest X-rays: [Train|Validation|Test/]Positive|Negative/<images>",
           label_ranges=LABEL_RANGE),
    Layout(NIH_LAYOUT, is_nih, read_nih_layout,
           "NIH ChestX-ray14: Data_Entry_2017.csv + images (14 findings)"),
)


def load_cxr_cohort(source: str | Path, labels: str | Path | None = None,
                    label_column: str = "auto",
                    positive: tuple[str, ...] | list[str] | None = None) -> CxrCohort:
    """A CxrCohort from a folder tree, a label CSV (images under `source`; text labels are
    1 when one of `positive`), an ingest folder or a manifest file."""
    source = Path(source)
    if labels is not None:
        return read_cxr_labels(labels, image_dir=source, label_column=label_column,
                               positive=positive or None)
    if source.is_file() or (source / MANIFEST).is_file():
        path = source if source.is_file() else source / MANIFEST
        return CxrCohort(read_manifest(path), [], path.parent)
    return read_cxr_folders(source)


def cxr_label_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Labels from a folder tree, an ingest folder, a manifest or a label CSV (a table)."""
    if isinstance(source, pd.DataFrame):
        return read_labels(source)
    path = Path(source)
    if path.is_dir():
        return load_cxr_cohort(path).manifest if (path / MANIFEST).is_file() \
            else read_cxr_folders(path, check="none").manifest
    return read_labels(path)
