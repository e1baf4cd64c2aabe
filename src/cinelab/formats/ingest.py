"""Ingest: any supported layout -> manifest (+ tracings) + problems, written to one folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.data.manifest import read_manifest, validate_manifest, write_manifest
from cinelab.errors import InputError, Problem
from cinelab.formats.dicoms import read_dicom_folder
from cinelab.formats.folders import read_video_folder
from cinelab.io.dicom import is_dicom_path
from cinelab.io.table import read_table
from cinelab.io.video import VIDEO_SUFFIXES
from cinelab.plugins import Registry
from cinelab.utils import write_csv


@dataclass
class Ingested:
    """A cohort read from disk: manifest, optional tracings, and everything that was wrong."""

    manifest: pd.DataFrame
    layout: str
    tracings: pd.DataFrame | None = None
    problems: list[Problem] = field(default_factory=list)


#: read(root, options) -> Ingested; options hold "labels" and any layout-specific keys
ReadFn = Callable[[Path, Mapping[str, Any]], Ingested]


@dataclass(frozen=True)
class Layout:
    """A dataset layout on disk: how to recognise it and how to read it into a manifest.

    `generic` layouts (any DICOM folder, any video folder) are chosen by auto-detection only
    when no specific layout recognises the folder.
    """

    name: str
    detect: Callable[[Path], bool]
    read: ReadFn
    description: str
    label_ranges: Mapping[str, tuple[float, float]] | None = None
    generic: bool = False


LAYOUTS: Registry[Layout] = Registry("layout")


def register_layout(layout: Layout) -> Layout:
    """Add a layout (a pipeline package calls this for each layout it reads)."""
    return LAYOUTS.add(layout.name, layout)


def detect_layout(root: Path) -> str:
    """The one layout that recognises `root` (specific layouts before generic ones)."""
    found = [layout for _, layout in LAYOUTS.items() if layout.detect(root)]
    specific = [layout for layout in found if not layout.generic]
    chosen = specific or found
    if len(chosen) == 1:
        return chosen[0].name
    listing = "; ".join(f"{lay.name}: {lay.description}" for _, lay in LAYOUTS.items())
    what = "no layout recognises it" if not chosen else \
        f"it looks like {' and '.join(lay.name for lay in chosen)}"
    raise InputError(root, "layout", f"one recognisable layout ({listing})", what,
                     "name it with --layout")


def ingest(root: str | Path, layout: str = "auto", labels: str | Path | None = None,
           options: Mapping[str, Any] | None = None) -> Ingested:
    """Read a cohort in any registered layout and validate its manifest."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "root", "a folder holding a cohort", "no such folder")
    name = detect_layout(root) if layout == "auto" else layout
    entry = LAYOUTS.get(name)
    result = entry.read(root, {**dict(options or {}), "labels": labels})
    result.problems += validate_manifest(result.manifest, entry.label_ranges)
    return result


def _read_dicoms(root: Path, options: Mapping[str, Any]) -> Ingested:
    manifest, problems = read_dicom_folder(root)
    return Ingested(_join_labels(manifest, options.get("labels")), "dicom", None, problems)


def _read_videos(root: Path, options: Mapping[str, Any]) -> Ingested:
    manifest, problems = read_video_folder(root, options.get("labels"))
    return Ingested(manifest, "videos", None, problems)


def _has_dicoms(root: Path) -> bool:
    return any(path.is_file() and is_dicom_path(path) for path in root.rglob("*"))


def _has_videos(root: Path) -> bool:
    return any(path.suffix.lower() in VIDEO_SUFFIXES for path in root.rglob("*"))


register_layout(Layout("dicom", _has_dicoms, _read_dicoms,
                       "a folder of ultrasound DICOMs (any nesting) + optional --labels CSV",
                       generic=True))
register_layout(Layout("videos", _has_videos, _read_videos,
                       "a folder of AVI/MP4 videos (any nesting) + optional --labels CSV",
                       generic=True))


def _join_labels(manifest: pd.DataFrame, labels: str | Path | None) -> pd.DataFrame:
    if labels is None:
        return manifest
    table = read_table(labels, dtype=str)
    key = next((c for c in ("sample_id", "patient_id") if c in table.columns), None)
    if key is None:
        raise InputError(labels, "columns", "a sample_id or patient_id column",
                         f"columns {list(table.columns)}")
    extra = [c for c in table.columns if c not in manifest.columns or c == key]
    return manifest.merge(table[extra], on=key, how="left")


def write_ingested(result: Ingested, out: str | Path) -> Path:
    """Write manifest.csv, tracings.csv (when any) and problems.csv into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(result.manifest, out / "manifest.csv")
    if result.tracings is not None:
        write_csv(result.tracings, out / "tracings.csv")
    columns = list(Problem.__dataclass_fields__)
    write_csv(pd.DataFrame([asdict(p) for p in result.problems], columns=columns),
              out / "problems.csv")
    return out


def load_ingested(path: str | Path) -> Ingested:
    """Read an ingest folder (or a bare manifest file) back."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    manifest = read_manifest(folder / "manifest.csv" if path.is_dir() else path)
    tracings_path = folder / "tracings.csv"
    tracings = pd.read_csv(tracings_path, dtype={"sample_id": str}) \
        if tracings_path.exists() else None
    return Ingested(manifest, "manifest", tracings)
