"""Pseudo-labelled training pairs: the ED and ES frames of confident predictions written as
PNG image + mask files (the folder layout the cmr-seg-tl seed trained fastai on).

Input is a predicted mask set (`measure.cmr.mask_index`, e.g. `predict_cmr`'s
predictions.csv written with ``native=True``) whose rows name the image each mask was
predicted from, and the confidence scores of `infer.pseudo.confidence_scores`. For every
unit (a 4D label cine, e.g. a DSB `<pid>_a`, or a patient's label stacks) whose score is at
most the loosest threshold (images: NIfTI, or ACDC HDF5 samples):

- a 4D cine (T, Z, H, W): ED and ES are the frames with the largest and smallest predicted
  LV volume (never assumed at frame 1); each of their slices becomes one pair;
- a 3D stack (Z, H, W): each slice becomes one pair, with the row's phase and frame.

Images are the source intensities stretched to 0-255 per unit (1st-99th percentile); masks
hold ACDC label values (1 RV, 2 myocardium, 3 LV cavity) whatever the prediction's label
map, so the default recipe classes apply. Files are named
``<unit>-frameTTT-sliceZZZ.png`` under ``pairs/images`` and ``pairs/masks``; existing files
are kept (an interrupted export resumes). ``pairs/manifest.csv`` lists every pair (patient =
the reference patient, so a DSB patient's `_a`/`_b` cines share a split) and, per threshold,
``confident_<t>pct/manifest.csv`` the pairs of the units at or below it: each such folder is a
source for `cinelab cmr prepare`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.errors import InputError, Problem
from cinelab.io.nifti import read_volume
from cinelab.measure.volumes import ACDC_LABELS, LabelMap, ed_es_frames, frame_volumes
from cinelab.pipelines.cmr.acdc import load_acdc_h5
from cinelab.pipelines.cmr.mask_sets import NO_FRAME, load_mask
from cinelab.pipelines.cmr.prepare import H5_SUFFIX, normalise_intensity
from cinelab.pipelines.cmr.pseudo import (
    DEFAULT_THRESHOLDS,
    SCORE_COLUMN,
    THRESHOLD_EPS,
    confident_patients,
    subset_name,
)
from cinelab.utils import atomic_path, write_csv

PAIRS_DIR, IMAGES_DIR, MASKS_DIR = "pairs", "images", "masks"
MANIFEST_FILE, PROBLEMS_FILE = "manifest.csv", "problems.csv"
PAIR_NAME = "{unit}-frame{frame:03d}-slice{slice:03d}"
CINE_DIMS = 4
STAGE = "pseudo-pairs"
SPLIT = "train"
FRAMES_PHASES, FRAMES_ALL = "phases", "all"
FRAME_CHOICES = (FRAMES_PHASES, FRAMES_ALL)


@dataclass
class PairExport:
    """What `export_pseudo_pairs` wrote: the pair manifest, one manifest per threshold (and
    its number of pairs) and the units that could not be exported (reported, then skipped)."""

    manifest: pd.DataFrame
    subsets: dict[str, Path] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def to_acdc_labels(labels: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """uint8 labels with ACDC values (LV 3, MYO 2, RV 1; anything else 0)."""
    out = np.zeros(labels.shape, np.uint8)
    target = ACDC_LABELS.values()
    for name, value in label_map.values().items():
        out[labels == value] = target[name]
    return out


def phase_frames(labels: np.ndarray, spacing: Sequence[float] | None,
                 label_map: LabelMap) -> dict[str, int]:
    """{"ED": t, "ES": t} of a label cine (T, Z, H, W): largest and smallest LV volume."""
    volumes = frame_volumes(labels, spacing, label_map)
    ed, es = ed_es_frames(volumes["LV_ml"].to_numpy())
    if ed == es:
        raise InputError(None, "LV volume", "a predicted LV cavity that changes over the "
                         "cycle", f"the same volume in all {len(volumes)} frames")
    frames = volumes["frame"].to_numpy()
    return {"ED": int(frames[ed]), "ES": int(frames[es])}


def _load_pair_source(row: pd.Series) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """(image, labels, spacing) of an index row, image and labels on the same grid."""
    image_path = str(row["image_path"])
    if not image_path:
        raise InputError(row["mask_path"], "image_path", "the image the mask was predicted "
                         "from (an index with image_path or source)", "none")
    labels, spacing = load_mask(row["mask_path"])
    image = load_acdc_h5(image_path)[0] if image_path.lower().endswith(H5_SUFFIX) else \
        read_volume(image_path, np.float32)[0]
    if image.shape != labels.shape:
        raise InputError(row["mask_path"], "shape", f"labels on the image's grid {image.shape}",
                         f"{labels.shape}", "predict on the source grid (cinelab cmr predict "
                         "--native, or predict_cmr(native=True))")
    return image, labels, spacing


def unit_phases(row: pd.Series, labels: np.ndarray, spacing: tuple | None,
                label_map: LabelMap, frames: str = FRAMES_PHASES
                ) -> list[tuple[str, int, int | None]]:
    """[(phase, frame number, time index into labels or None for a 3D stack)]: a cine's ED
    and ES frames, or with `frames` "all" every frame (phase ED/ES where it is one, else
    empty), as the paper trained on every frame of each confident patient."""
    if frames not in FRAME_CHOICES:
        raise InputError(None, "frames", f"one of {list(FRAME_CHOICES)}", repr(frames))
    if labels.ndim == CINE_DIMS:
        phases = phase_frames(labels, spacing, label_map)
        if frames == FRAMES_ALL:
            names = {t: phase for phase, t in phases.items()}
            return [(names.get(t, ""), t, t) for t in range(len(labels))]
        return [(phase, t, t) for phase, t in phases.items()]
    frame = int(row["frame"]) if int(row["frame"]) != NO_FRAME else 0
    return [(str(row["phase"]), frame, None)]


def write_png(path: Path, array: np.ndarray) -> Path:
    """A uint8 (H, W) array as a greyscale PNG, atomically; an existing file is kept."""
    if not path.exists():
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(array, np.uint8), mode="L").save(tmp,
                                                                                format="PNG")
    return path


def unit_pairs(row: pd.Series, unit: str, out: Path, label_map: LabelMap,
               frames: str = "phases") -> list[dict[str, object]]:
    """Write the pairs of one index row (a label cine or stack); their manifest rows."""
    image, labels, spacing = _load_pair_source(row)
    image8 = normalise_intensity(image)
    masks = to_acdc_labels(labels, label_map)
    rows = []
    for phase, frame, t in unit_phases(row, labels, spacing, label_map, frames):
        planes, mask = (image8, masks) if t is None else (image8[t], masks[t])
        for z in range(len(planes)):
            name = PAIR_NAME.format(unit=unit, frame=frame, slice=z + 1)
            rows.append({"sample_id": name, "unit_id": unit, "phase": phase, "frame": frame,
                         "slice": z + 1,
                         "path": str(write_png(out / IMAGES_DIR / f"{name}.png", planes[z])),
                         "mask_path": str(write_png(out / MASKS_DIR / f"{name}.png", mask[z])),
                         "lv_pixels": int(np.count_nonzero(mask[z] == ACDC_LABELS.lv))})
    return rows


def export_pseudo_pairs(index: pd.DataFrame, scores: pd.DataFrame, out: str | Path,
                        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                        label_map: LabelMap = ACDC_LABELS,
                        frames: str = "phases") -> PairExport:
    """Write the pairs of every unit scored at most max(thresholds) under out/pairs, with
    out/pairs/manifest.csv, out/confident_<t>pct/manifest.csv per threshold and
    out/pairs/problems.csv (see the module docstring). `frames`: "phases" (ED and ES of
    each cine, the default) or "all" (every frame: the paper's behaviour)."""
    if frames not in FRAME_CHOICES:
        raise InputError(None, "frames", f"one of {list(FRAME_CHOICES)}", repr(frames))
    if not len(thresholds):
        raise InputError(None, "thresholds", "at least one threshold in %", "none")
    out = Path(out).resolve()
    keep = set(confident_patients(scores, max(thresholds)))
    by_unit = scores.set_index(scores["patient_id"].astype(str))
    rows, problems = [], []
    for _, row in index.iterrows():
        unit = next((u for u in (str(row["image_id"]), str(row["patient_id"])) if u in keep),
                    None)
        if unit is None:
            continue
        try:
            pairs = unit_pairs(row, unit, out / PAIRS_DIR, label_map, frames)
        except (InputError, OSError, ValueError) as exc:
            problems.append(Problem.from_exception(row["mask_path"], STAGE, exc))
            continue
        info = {"patient_id": str(by_unit.at[unit, "reference_id"]), "modality": "cmr",
                "view": "sax", "split": SPLIT, "pseudo_label": True,
                SCORE_COLUMN: float(by_unit.at[unit, SCORE_COLUMN])}
        rows += [{**pair, **info} for pair in pairs]
    return _write_export(rows, problems, out, thresholds)


def _write_export(rows: list[dict], problems: list[Problem], out: Path,
                  thresholds: Sequence[float]) -> PairExport:
    manifest = new_manifest(rows) if rows else pd.DataFrame()
    write_csv(pd.DataFrame([vars(p) for p in problems],
                           columns=list(Problem.__dataclass_fields__)),
              out / PAIRS_DIR / PROBLEMS_FILE)
    export = PairExport(manifest, problems=problems)
    if manifest.empty:
        return export
    write_manifest(manifest, out / PAIRS_DIR / MANIFEST_FILE)
    for t in thresholds:
        kept = manifest[manifest[SCORE_COLUMN] <= float(t) + THRESHOLD_EPS]
        if len(kept):
            path = out / subset_name(t) / MANIFEST_FILE
            export.subsets[subset_name(t)] = write_manifest(kept.reset_index(drop=True), path)
            export.sizes[subset_name(t)] = len(kept)
    return export
