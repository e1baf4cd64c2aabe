"""Kaggle Second Annual Data Science Bowl (DSB) layout -> clean 4D cines, NIfTI and a manifest.

Layout under `root` (any depth, e.g. train/train/<pid>/study)::

    <pid>/study/sax_<n>/*.dcm      one single-frame MR image per time point and slice
    train.csv, validate.csv        Id, Systole, Diastole (mL)                    (optional)
    solution.csv                   Id = <pid>_Systole / <pid>_Diastole, Volume   (optional)

`read_dsb_patient` reads one patient: unreadable files are logged and skipped; a series without
PixelSpacing is logged and skipped (the patient fails with InputError only when nothing is
left); slice locations come from SliceLocation, or, when an image lacks it, from
ImagePositionPatient projected on the most common slice normal; slices not parallel to the
most common plane are removed; a completely repeated measurement (every location acquired
twice: two series per location, or one folder holding twice the time points) is split into
`<pid>_a` and `<pid>_b`; each stack is then cleaned by `dsb_clean.clean_stack`.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.errors import InputError, Problem
from cinelab.io.dicom_series import (
    MRImage,
    dicom_metadata_table,
    mode_orientation,
    read_mr_folder,
    require_spacing,
    slice_location,
    slice_normal,
)
from cinelab.io.nifti import write_volume
from cinelab.io.table import read_table
from cinelab.pipelines.cmr import dsb_clean as dc
from cinelab.pipelines.cmr.dsb_clean import CleanCine, ConversionLog, SliceSeries
from cinelab.utils import atomic_path

STUDY_DIR = "study"
SAX_PREFIX = "sax_"
VOLUME_FILES = {"train.csv": "train", "validate.csv": "val", "solution.csv": "test"}
SOLUTION_PHASES = ("Systole", "Diastole")
LOCATION_DECIMALS = 1  # images within 0.05 mm share a slice
MIN_REPEAT_SLICES = 3  # fewer duplicated locations are collisions, not a repeated stack
DOUBLED_TIME_TOLERANCE = 0.5  # of the frame interval: halves with matching trigger times
NIFTI_NAME = "sa.nii.gz"
USED_DICOMS_TSV = "used_dicoms.tsv"
USED_COLUMNS = ("cine", "patient_id", "frame", "slice", "trigger_time_ms", "slice_location_mm",
                "file")
ROT90_SUFFIX = "_rot90"
STAGE = "dsb"
MODALITY, VIEW = "cmr", "sax"


def find_dsb_patients(root: str | Path) -> list[Path]:
    """Every `<pid>` folder under `root` that holds a `study` folder, sorted by pid."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "root", "a DSB folder (<pid>/study/sax_*/*.dcm)", "no folder")
    found = []
    for folder, dirs, _ in os.walk(root):
        if STUDY_DIR in dirs:
            found.append(Path(folder))
            dirs.clear()
    return sorted(found, key=lambda p: _natural_key(p.name))


def _natural_key(name: str) -> tuple:
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def read_dsb_patient(folder: str | Path, log: ConversionLog | None = None,
                     max_size: int = dc.DSB_MAX_SIZE) -> list[CleanCine]:
    """One clean cine per acquisition: [cine], or [<pid>_a, <pid>_b] for a repeated stack."""
    folder = Path(folder)
    if folder.name == STUDY_DIR:
        folder = folder.parent
    log = log if log is not None else ConversionLog()
    pid = folder.name
    images = _read_images(folder, pid, log)
    images = _drop_unspaced(folder, pid, images, log)
    located = _locate(folder, pid, images, log)
    slices = _remove_oblique(pid, _group_slices(located), log)
    return [dc.clean_stack(name, part, log, max_size)
            for name, part in split_repeats(pid, slices, log)]


def _read_images(folder: Path, pid: str, log: ConversionLog) -> list[MRImage]:
    """Every image of every sax folder; unreadable files logged."""
    sax = sorted((folder / STUDY_DIR).glob(f"{SAX_PREFIX}*"), key=lambda p: _natural_key(
        p.name.removeprefix(SAX_PREFIX)))
    images = []
    for d in sax:
        found, problems = read_mr_folder(d)
        images += found
        for p in problems:
            log.add(pid, dc.PROBLEM_UNREADABLE, "image skipped", p.file, p.error)
    if not images:
        raise InputError(folder, "images", f"DICOM files in {STUDY_DIR}/{SAX_PREFIX}*/",
                         "no readable image")
    return images


def _series_key(im: MRImage) -> tuple[str, int]:
    return im.path.parent.name, im.series_number if im.series_number is not None else -1


def _drop_unspaced(folder: Path, pid: str, images: list[MRImage],
                   log: ConversionLog) -> list[MRImage]:
    """Skip every series in which an image lacks PixelSpacing."""
    bad: dict[tuple[str, int], str] = {}
    for im in images:
        try:
            require_spacing(im)
        except InputError as exc:
            bad.setdefault(_series_key(im), str(exc))
    for key, error in bad.items():
        first = next(im for im in images if _series_key(im) == key)
        log.add(pid, dc.PROBLEM_NO_SPACING, "series skipped", first.path, error)
    kept = [im for im in images if _series_key(im) not in bad]
    if not kept:
        raise InputError(folder, "PixelSpacing", "at least one series with PixelSpacing",
                         f"none of {len(images)} images has it",
                         fix="add PixelSpacing (0028,0030) to the series")
    return kept


def _locate(folder: Path, pid: str, images: list[MRImage],
            log: ConversionLog) -> list[tuple[MRImage, float]]:
    """(image, location): SliceLocation, else ImagePositionPatient on the mode normal."""
    mode = mode_orientation(im.orientation for im in images)
    normal = None if mode is None else slice_normal(mode)
    _log_missing_geometry(pid, images, mode, log)
    project = (any(im.slice_location is None for im in images) and normal is not None
               and all(im.position is not None for im in images))
    out, fallback = [], []
    for im in images:
        try:
            loc, source = ((float(np.dot(im.position, normal)), "ImagePositionPatient")
                           if project else slice_location(im, normal))
        except InputError as exc:
            log.add(pid, dc.PROBLEM_NO_LOCATION, "image skipped", im.path, str(exc))
            continue
        out.append((im, loc))
        if im.slice_location is None:
            fallback.append(im)
    if fallback:
        log.add(pid, dc.PROBLEM_NO_LOCATION,
                "location from ImagePositionPatient on the slice normal" + (
                    " (all images)" if project else ""), fallback[0].path,
                f"{len(fallback)} of {len(images)} images without SliceLocation")
    if not out:
        raise InputError(folder, "SliceLocation", "SliceLocation or ImagePositionPatient",
                         f"neither in any of {len(images)} images")
    return out


def _log_missing_geometry(pid: str, images: list[MRImage], mode: np.ndarray | None,
                          log: ConversionLog) -> None:
    no_position = [im for im in images if im.position is None]
    if no_position:
        log.add(pid, dc.PROBLEM_NO_POSITION, "NIfTI origin not from the header",
                no_position[0].path, f"{len(no_position)} of {len(images)} images")
    no_orientation = [im for im in images if im.orientation is None]
    if no_orientation:
        log.add(pid, dc.PROBLEM_NO_ORIENTATION,
                "most common orientation assumed" if mode is not None
                else "no rotation possible", no_orientation[0].path,
                f"{len(no_orientation)} of {len(images)} images")


def _group_slices(located: list[tuple[MRImage, float]]) -> list[SliceSeries]:
    """One SliceSeries per (folder, series, location); doubled time points split in two."""
    groups: dict[tuple, list[tuple[MRImage, float]]] = defaultdict(list)
    for im, loc in located:
        groups[(*_series_key(im), round(loc, LOCATION_DECIMALS))].append((im, loc))
    expected = Counter(im.cardiac_images for im, _ in located if im.cardiac_images)
    n_expected = expected.most_common(1)[0][0] if expected else None
    out = []
    for (name, series, _), members in groups.items():
        images = [im for im, _ in members]
        location = float(np.mean([loc for _, loc in members]))
        halves = _doubled(images, n_expected)
        for repeat, part in enumerate(halves):
            out.append(SliceSeries(name if repeat == 0 else f"{name}#{repeat + 1}", series,
                                   location, _by_time(part), repeat))
    return out


def _by_instance(images: list[MRImage]) -> list[MRImage]:
    return sorted(images, key=lambda im: (im.instance_number or 0, im.path.name))


def _by_time(images: list[MRImage]) -> list[MRImage]:
    return sorted(images, key=lambda im: (im.trigger_time if im.trigger_time is not None
                                          else float("inf"), im.instance_number or 0,
                                          im.path.name))


def _doubled(images: list[MRImage], n_expected: int | None) -> list[list[MRImage]]:
    """Split a slice holding two acquisitions (in instance order) into its halves."""
    n = len(images)
    ordered = _by_instance(images)
    if n < 4 or n % 2:
        return [images]
    first, second = ordered[: n // 2], ordered[n // 2:]
    if n_expected is not None and n == 2 * n_expected:
        return [first, second]
    t1 = [im.trigger_time for im in first]
    t2 = [im.trigger_time for im in second]
    if None in t1 or None in t2:
        return [images]
    step = float(np.median(np.diff(sorted(t1)))) if len(t1) > 1 else 0.0
    same = np.abs(np.sort(t1) - np.sort(t2)) <= DOUBLED_TIME_TOLERANCE * step
    return [first, second] if step > 0 and bool(same.all()) else [images]


def _remove_oblique(pid: str, slices: list[SliceSeries], log: ConversionLog) -> list:
    """Drop slices whose plane is not parallel to the most common one."""
    mode = mode_orientation(s.images[0].orientation for s in slices)
    if mode is None:
        return slices
    normal = slice_normal(mode)
    kept = []
    for s in slices:
        own = s.images[0].orientation
        cos = 1.0 if own is None else abs(float(np.dot(slice_normal(own), normal)))
        if np.isclose(cos, 1.0, atol=1e-3):
            kept.append(s)
        else:
            log.add(pid, dc.PROBLEM_ORIENTATION, "slice removed", s.file,
                    f"angle between normals {np.degrees(np.arccos(min(cos, 1.0))):.2f} degrees")
    return kept


def split_repeats(pid: str, slices: list[SliceSeries],
                  log: ConversionLog) -> list[tuple[str, list[SliceSeries]]]:
    """[(pid, slices)], or [(pid_a, first acquisitions), (pid_b, second ones)] when every
    location (at least MIN_REPEAT_SLICES of them) was acquired exactly twice."""
    ordered = sorted(slices, key=lambda s: s.location)
    clusters: list[list[SliceSeries]] = []
    for s in ordered:
        if clusters and s.location - clusters[-1][-1].location < dc.COLLISION_MM:
            clusters[-1].append(s)
        else:
            clusters.append([s])
    if len(clusters) < MIN_REPEAT_SLICES or any(len(c) != 2 for c in clusters):
        return [(pid, slices)]
    pairs = [sorted(c, key=lambda s: s.rank) for c in clusters]
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    log.add(pid, dc.PROBLEM_REPEAT, f"split into {pid}_a and {pid}_b", b[0].file,
            f"{len(clusters)} locations acquired twice; a: {sorted({s.name for s in a})}, "
            f"b: {sorted({s.name for s in b})}")
    return [(f"{pid}_a", a), (f"{pid}_b", b)]


def read_dsb_volumes(root: str | Path) -> pd.DataFrame:
    """Id, Systole, Diastole (mL) and split from train/validate/solution CSVs under `root`."""
    root = Path(root)
    frames = []
    for name, split in VOLUME_FILES.items():
        for path in sorted(root.rglob(name)):
            frames.append(_volume_table(path).assign(split=split))
    if not frames:
        return pd.DataFrame(columns=["Id", "Systole", "Diastole", "split"])
    out = pd.concat(frames, ignore_index=True)
    return out.drop_duplicates("Id", keep="first").reset_index(drop=True)


def _volume_table(path: Path) -> pd.DataFrame:
    """A wide (Id, Systole, Diastole) or long (Id = <pid>_<phase>, Volume) volume CSV."""
    df = read_table(path, dtype={"Id": str})
    if {"Id", "Systole", "Diastole"} <= set(df.columns):
        return df[["Id", "Systole", "Diastole"]].astype({"Id": str})
    if {"Id", "Volume"} <= set(df.columns):
        if df.empty:
            return pd.DataFrame(columns=["Id", *SOLUTION_PHASES])
        parts = df["Id"].str.rsplit("_", n=1, expand=True)
        long = pd.DataFrame({"Id": parts[0], "phase": parts[1], "Volume": df["Volume"]})
        long = long[long["phase"].isin(SOLUTION_PHASES)]
        wide = long.pivot_table(index="Id", columns="phase", values="Volume").reset_index()
        return wide.reindex(columns=["Id", *SOLUTION_PHASES])
    raise InputError(path, "columns", "Id, Systole, Diastole or Id, Volume",
                     f"{list(df.columns)}")


@dataclass
class DsbConversion:
    """What `convert_dsb` produced: manifest of the cines, log, dimensions, skipped patients."""

    manifest: pd.DataFrame
    log: pd.DataFrame
    dimensions: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)


def convert_dsb(root: str | Path, out: str | Path, max_size: int = dc.DSB_MAX_SIZE,
                metadata: bool = False) -> DsbConversion:
    """Clean every patient under `root`; write out/nifti/<id>/sa.nii.gz (+ <id>_rot90 for
    landscape cines), conversion_log.tsv, used_dicoms.tsv (which DICOM file went into
    which frame and slice of each cine), patient_dimensions.tsv, manifest.csv and, with
    `metadata`, dicom_metadata.csv (one row per image)."""
    out = Path(out).resolve()  # manifest paths hold from any working folder
    log, problems, rows, dims, used = ConversionLog(), [], [], [], []
    volumes = read_dsb_volumes(root).set_index("Id")
    for folder in find_dsb_patients(root):
        try:
            cines = read_dsb_patient(folder, log, max_size)
        except Exception as exc:  # noqa: BLE001 - one bad patient never stops the cohort
            log.add(folder.name, dc.PROBLEM_SKIPPED, "no cine written", folder, str(exc))
            problems.append(Problem.from_exception(folder, STAGE, exc))
            continue
        for cine in cines:
            rows.append(_write_cine(cine, folder.name, out / "nifti", volumes))
            dims.append(cine.dims_row())
            used.append(used_dicoms(cine, folder.name))
    log.write(out / "conversion_log.tsv")
    _write_tsv(pd.concat(used, ignore_index=True) if used else
               pd.DataFrame(columns=list(USED_COLUMNS)), out / USED_DICOMS_TSV)
    dimensions = pd.DataFrame(dims, columns=list(dc.DIMENSION_COLUMNS))
    _write_tsv(dimensions, out / "patient_dimensions.tsv")
    manifest = new_manifest(rows) if rows else pd.DataFrame()
    if rows:
        write_manifest(manifest, out / "manifest.csv")
    if metadata:
        problems += export_dicom_metadata(root, out / "dicom_metadata.csv")
    return DsbConversion(manifest, log.to_frame(), dimensions, problems)


def used_dicoms(cine: CleanCine, patient: str) -> pd.DataFrame:
    """Which DICOM file went into which (frame, slice) of a written cine: one row per image,
    with its trigger time and slice location (USED_COLUMNS)."""
    sources = np.asarray(cine.sources)
    t, z = np.meshgrid(np.arange(sources.shape[0]), np.arange(sources.shape[1]),
                       indexing="ij")
    times = np.asarray(cine.trigger_times, float)
    locations = np.asarray(cine.slice_locations, float)
    return pd.DataFrame({"cine": cine.pid, "patient_id": patient, "frame": t.ravel(),
                         "slice": z.ravel(), "trigger_time_ms": times[t.ravel()],
                         "slice_location_mm": locations[z.ravel()],
                         "file": [str(f) for f in sources.ravel()]}, columns=list(USED_COLUMNS))


def _write_tsv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def _write_cine(cine: CleanCine, patient: str, out: Path, volumes: pd.DataFrame) -> dict:
    """Write the NIfTI (and its rotated copy); return the manifest row."""
    spacing = (_time_step_s(cine), *cine.spacing)
    path = write_volume(out / cine.pid / NIFTI_NAME, cine.array, spacing, cine.affine())
    rot90 = ""
    if cine.landscape:
        rot90 = str(write_volume(out / f"{cine.pid}{ROT90_SUFFIX}" / NIFTI_NAME, cine.rot90(),
                                 (spacing[0], spacing[1], spacing[3], spacing[2])))
    row = {"sample_id": cine.pid, "patient_id": patient, "path": str(path),
           "modality": MODALITY, "view": VIEW, "rot90_path": rot90,
           "frames": cine.array.shape[0], "slices": cine.array.shape[1],
           **{k: v for k, v in cine.dims_row().items() if k != "pid"}}
    if patient in volumes.index:
        vol = volumes.loc[patient]
        edv, esv = float(vol["Diastole"]), float(vol["Systole"])
        row.update(split=vol["split"], EDV=edv, ESV=esv,
                   EF=100.0 * (edv - esv) / edv if edv > 0 else np.nan)
    return row


def _time_step_s(cine: CleanCine) -> float:
    """Median frame interval in seconds (1 when unknown)."""
    steps = np.diff(cine.trigger_times)
    step = float(np.median(steps)) / 1000.0 if len(steps) else 0.0
    return step if step > 0 else 1.0


def export_dicom_metadata(root: str | Path, path: str | Path) -> list[Problem]:
    """Write a CSV of every image's DICOM header (plus pid and sax folder); returns problems."""
    files = [f for p in find_dsb_patients(root)
             for f in sorted((p / STUDY_DIR).glob(f"{SAX_PREFIX}*/*.dcm"))]
    table, problems = dicom_metadata_table(files)
    if len(table):
        paths = table["file"].map(Path)
        table.insert(1, "dir", paths.map(lambda p: p.parent.name))
        table.insert(1, "pid", paths.map(lambda p: p.parents[2].name))
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return problems
