"""The cine MRI route: a study of short-axis MR instances -> the form ``cmr`` predict reads,
and its predicted label volumes -> DICOM SEGs on the source instances.

`cine_input` lays the study's instances out as one Data Science Bowl patient (one
``sax_<n>`` folder per series, links only) and converts it with the DSB reader
(`cinelab.pipelines.cmr.dsb.convert_dsb`: slice locations, time order, cleaning), whose
``used_dicoms.tsv`` records which instance became which (frame, slice) of the cine.
`cine_segs` writes the end-diastolic and end-systolic frames (largest and smallest left
ventricle) of every predicted cine as SEGs, one per phase and source series, each
referencing its source instances. Images are never downscaled, so the native masks lie on
the source grids; a slice the cleaning turned onto the stack's grid (another in-plane
orientation) is left out when its shape changed (a row flip of the same shape is not
detected: such stacks are rare within one short-axis study).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from cinelab.errors import InputError
from cinelab.io.nifti import read_volume
from cinelab.pipelines.cmr.dsb import STUDY_DIR, USED_DICOMS_TSV, convert_dsb
from cinelab.serve.arrival import DICOM_SUFFIX
from cinelab.serve.seg import write_label_seg

CMR_PIPELINE = "cmr"
SAX_FOLDER = "sax_{}"
LV_CLASS = "LV"
#: the DSB reader downscales larger images to this side: high enough never to, so that the
#: masks stay on the source grids
NO_DOWNSCALE = 1 << 16


def cine_input(incoming: Path, work: Path, sample: str) -> Path:
    """Convert the DICOM instances of `incoming` into a DSB conversion folder under `work`
    (manifest.csv, NIfTI cines, used_dicoms.tsv), the patient named `sample`."""
    series: dict[str, list[Path]] = {}
    for path in sorted(incoming.glob(f"*{DICOM_SUFFIX}")):
        series.setdefault(_series_of(path), []).append(path)
    if not series:
        raise InputError(incoming, "instances", "MR DICOM instances", "none")
    patient = work / "dsb" / sample / STUDY_DIR
    for number, key in enumerate(sorted(series), 1):
        folder = patient / SAX_FOLDER.format(number)
        folder.mkdir(parents=True)
        for path in series[key]:
            (folder / path.name).symlink_to(path.resolve())
    out = work / "cine"
    conversion = convert_dsb(work / "dsb", out, max_size=NO_DOWNSCALE)
    if conversion.manifest.empty:
        reason = conversion.problems[0].error if conversion.problems else "no cine"
        raise InputError(None, "series", "a short-axis cine (slices x time points)",
                         str(reason))
    return out


def _series_of(path: Path) -> str:
    """SeriesInstanceUID of one stored instance (header only)."""
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    return str(header.get("SeriesInstanceUID", ""))


def _classes(out: Path) -> dict[str, int]:
    """Class name -> label value of the checkpoint that predicted into `out` (run.json)."""
    run = json.loads((out / "run.json").read_text())
    return {str(k): int(v) for k, v in (run.get("classes") or {}).items()}


def _frame_sources(conversion: Path, sample: str) -> pd.DataFrame:
    """(frame, slice, sop) of every instance that went into cine `sample`."""
    used = pd.read_csv(conversion / USED_DICOMS_TSV, sep="\t", dtype={"cine": str})
    used = used[used["cine"] == sample]
    sops = [Path(f).name.removesuffix(DICOM_SUFFIX) for f in used["file"].astype(str)]
    return used.assign(sop=sops)[["frame", "slice", "sop"]]


def key_frames(labels: np.ndarray, lv: int | None) -> list[int]:
    """End-diastolic then end-systolic frame of a (T, Z, H, W) label cine: largest and
    smallest left ventricle (all foreground without an LV class); [0] for one frame."""
    inside = labels == lv if lv is not None else labels > 0
    counts = inside.reshape(len(labels), -1).sum(axis=1)
    ed, es = int(np.argmax(counts)), int(np.argmin(counts))
    return [ed] if ed == es else [ed, es]


def cine_segs(partial: Path, name: str, conversion: Path, sources: dict[str, Dataset],
              series_uid: str) -> list[str]:
    """SEGs of the key frames of every cine model `name` predicted (masks on the source
    grids); their file names. Sources without a Frame of Reference get none."""
    out = partial / name
    classes = _classes(out)
    if not classes:
        return []
    table = pd.read_csv(out / "predictions.csv", dtype={"sample_id": str})
    files: list[str] = []
    for sid, mask_path in zip(table["sample_id"], table.get("mask_path", []), strict=False):
        labels, _ = read_volume(str(mask_path))
        if labels.ndim != 4:
            continue
        used = _frame_sources(conversion, sid)
        for frame in key_frames(labels, classes.get(LV_CLASS)):
            rows = used[used["frame"] == frame].sort_values("slice")
            files += _frame_segs(partial, f"{name}-{sid}-{frame}", labels[frame], rows,
                                 sources, classes, series_uid, len(files))
    return files


def _frame_segs(partial: Path, stem: str, labels: np.ndarray, rows: pd.DataFrame,
                sources: dict[str, Dataset], classes: dict[str, int], series_uid: str,
                done: int) -> list[str]:
    """One SEG per source series of one frame ((Z, H, W) labels, `rows` its instances)."""
    picked = [(int(z), sources[s]) for z, s in zip(rows["slice"], rows["sop"], strict=True)
              if s in sources]
    by_series: dict[str, list[tuple[int, Dataset]]] = {}
    for z, ds in picked:  # slices the cleaning rotated onto another grid are left out
        if "FrameOfReferenceUID" in ds and labels[z].shape == (ds.Rows, ds.Columns):
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append((z, ds))
    files = []
    for k, group in enumerate(by_series.values()):
        number = done + len(files) + 1
        path = partial / f"seg-{stem}-{k + 1}.dcm"
        write_label_seg(path, [ds for _, ds in group],
                        np.stack([labels[z] for z, _ in group]), classes, series_uid, number)
        files.append(path.name)
    return files
