"""Ingest: any supported layout -> manifest (+ tracings) + problems, written to one folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from cinelab.data.manifest import read_manifest, validate_manifest, write_manifest
from cinelab.errors import InputError, Problem
from cinelab.utils import write_csv

LAYOUTS = ("echonet", "dicom", "videos")
LABEL_RANGES = {"echonet": {"EF": (0.0, 100.0)}}


@dataclass
class Ingested:
    """A cohort read from disk: manifest, optional tracings, and everything that was wrong."""

    manifest: pd.DataFrame
    layout: str
    tracings: pd.DataFrame | None = None
    problems: list[Problem] = field(default_factory=list)


def detect_layout(root: Path) -> str:
    """echonet when FileList.csv is present, dicom when DICOM files are, else videos."""
    from cinelab.prep.prepare import is_dicom_path

    if (root / "FileList.csv").exists():
        return "echonet"
    for path in root.rglob("*"):
        if path.is_file() and is_dicom_path(path):
            return "dicom"
    return "videos"


def ingest(root: str | Path, layout: str = "auto", labels: str | Path | None = None) -> Ingested:
    """Read a cohort in any supported layout and validate its manifest."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "root", "a folder holding a cohort", "no such folder")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "echonet":
        from cinelab.formats.echonet import read_echonet

        cohort = read_echonet(root)
        result = Ingested(cohort.manifest, layout, cohort.tracings, list(cohort.problems))
    elif layout == "dicom":
        from cinelab.formats.dicoms import read_dicom_folder

        manifest, problems = read_dicom_folder(root)
        result = Ingested(_join_labels(manifest, labels), layout, None, problems)
    elif layout == "videos":
        from cinelab.formats.folders import read_video_folder

        manifest, problems = read_video_folder(root, labels)
        result = Ingested(manifest, layout, None, problems)
    else:
        raise InputError(root, "layout", f"one of {('auto',) + LAYOUTS}", repr(layout))
    result.problems += validate_manifest(result.manifest, LABEL_RANGES.get(layout))
    return result


def _join_labels(manifest: pd.DataFrame, labels: str | Path | None) -> pd.DataFrame:
    if labels is None:
        return manifest
    table = pd.read_csv(labels, dtype=str)
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
