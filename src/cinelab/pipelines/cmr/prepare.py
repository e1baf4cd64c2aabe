"""Cine MRI short-axis data into the prepared store: one sample per stack, slices as frames.

What a sample holds, by source (the manifest row's `path`):

- a 3D NIfTI frame (ACDC `patientNNN_frameNN.nii.gz`, mask in `mask_path`) or an ACDC HDF5
  sample (`patientNNN_frameNN.h5`, image + label): one (patient, phase) stack; frames are
  its slices, uint8 (Z, H, W, C), mask uint8 (Z, H, W) with the source's label values
  (ACDC: 0 background, 1 RV, 2 myocardium, 3 LV cavity; a recipe maps them to classes);
- a 4D NIfTI cine (a cleaned DSB `sa.nii.gz`, (t, z, y, x)): one sample per cine, no mask;
  frames are the T x Z images in time-major order (frame index = t * Z + z) and
  meta["cine_shape"] = [T, Z] (`cine_frames` reshapes them back to (T, Z, H, W, C));
- a PNG image with its mask (`formats.pngmasks`): one sample of a single slice (Z = 1).

Optionally (``spec.crop = "centre:<f>"``) a centred square of f x the larger side is kept
first (the heart at a finer scale); ``"none"`` keeps the whole slice; ``"spacing:<mm>"``
resamples every slice to that in-plane pixel spacing instead (nnU-Net / MONAI style; a
centred field of view of size x mm, cropped or zero-padded; needs the source's spacing).
Intensities are normalised per volume (the whole cine for 4D): the 1st-99th percentile range
of the kept region to 0-255. Every slice is scaled so its larger side is `spec.size`, then
zero-padded (centred) to size x size: the aspect ratio is kept. Masks are resized class by
class (area / linear interpolation of each label's indicator, then the most likely label),
which keeps volumes closer than nearest neighbour. meta records the transform
(`restore_labels` maps store-size labels back to the source grid), the in-plane pixel
spacing after resizing (`pixel_spacing_mm`, (y, x)) and the slice spacing
(`slice_spacing_mm`), both None when the source keeps no spacing (ACDC HDF5, PNG): volumes
are then voxel counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from cinelab.data.store import channel_stats, write_sample
from cinelab.errors import InputError, Problem
from cinelab.io.image import read_image
from cinelab.io.nifti import is_nifti, read_volume
from cinelab.pipelines.cmr.acdc import LABEL_VALUES, load_acdc_h5
from cinelab.pipelines.cmr.layout import assign_splits, read_cmr_source
from cinelab.prep.prepare import PrepSpec, prepare

PERCENTILES = (1.0, 99.0)  # intensity range mapped to 0-255, per volume
CROP_WHOLE = ("none", "auto", "never", "")
CROP_CENTRE = ("centre", "center")
CROP_SPACING = "spacing"  # "spacing:<mm>": resample every slice to that in-plane spacing
UINT8_MAX = 255
KIND_STACK, KIND_CINE, KIND_SLICE = "stack", "cine", "slice"
H5_SUFFIX, PNG_SUFFIX = ".h5", ".png"
STACK_DIMS, CINE_DIMS = 3, 4
VOXEL_UNIT, ML_UNIT = "voxels", "mL"
ML_PER_MM3 = 1e-3
LV_LABEL = 3
PHASES = ("ED", "ES")
STAGE = "prepare"


@dataclass
class CmrSource:
    """One source volume before preparation: image (Z, H, W) or (T, Z, H, W) float32,
    labels (Z, H, W) uint8 or None, spacing (z, y, x) mm or None, time step (s) or None."""

    image: np.ndarray
    labels: np.ndarray | None
    spacing: tuple[float, float, float] | None
    kind: str
    time_step_s: float | None = None


# -- intensity and geometry ---------------------------------------------------------------------


def normalise_intensity(volume: np.ndarray, percentiles: tuple[float, float] = PERCENTILES,
                        box: Sequence[int] | None = None) -> np.ndarray:
    """uint8 copy of `volume` (..., H, W): the percentile range of its in-plane `box`
    (y0, x0, y1, x1; default all) stretched to 0-255 (clipped)."""
    volume = np.asarray(volume, dtype=np.float32)
    region = volume if box is None else volume[..., box[0]:box[2], box[1]:box[3]]
    lo, hi = np.percentile(region, percentiles)
    if not hi > lo:
        lo, hi = float(region.min()), float(region.max())
    if not hi > lo:
        return np.zeros(volume.shape, np.uint8)
    scaled = (volume - lo) * (UINT8_MAX / (hi - lo))
    return np.clip(np.rint(scaled), 0, UINT8_MAX).astype(np.uint8)


def crop_box(shape: tuple[int, int], crop: str | None) -> list[int]:
    """In-plane box (y0, x0, y1, x1) that `crop` keeps: "none" (or "auto", "") the whole
    slice, "centre:<f>" a centred square of side f x the larger side (clipped to the slice;
    short-axis acquisitions centre the heart, so f = 0.6-0.7 keeps it at a finer scale)."""
    height, width = int(shape[0]), int(shape[1])
    text = (crop or "none").strip().lower()
    if text in CROP_WHOLE:
        return [0, 0, height, width]
    name, _, value = text.partition(":")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if name not in CROP_CENTRE or not 0 < fraction <= 1:
        raise InputError(None, "crop", "'none' or 'centre:<fraction in (0, 1]>'", repr(crop))
    side = fraction * max(height, width)
    y0, x0 = max(0, int(round((height - side) / 2))), max(0, int(round((width - side) / 2)))
    return [y0, x0, height - y0, width - x0]


def fit_transform(shape: tuple[int, int], size: int,
                  box: Sequence[int] | None = None,
                  scale: Sequence[float] | None = None) -> dict[str, Any]:
    """How an (H, W) slice becomes size x size: keep `box` (default all), scale its larger
    side to `size` (or by `scale` (y, x), which must keep it within `size`), pad centred."""
    box = [0, 0, int(shape[0]), int(shape[1])] if box is None else [int(b) for b in box]
    height, width = box[2] - box[0], box[3] - box[1]
    if scale is None:
        scale = (size / max(height, width),) * 2
    resized = [min(size, max(1, int(round(height * scale[0])))),
               min(size, max(1, int(round(width * scale[1]))))]
    top, left = (size - resized[0]) // 2, (size - resized[1]) // 2
    return {"original_shape": [int(shape[0]), int(shape[1])], "box": box, "size": int(size),
            "resized_shape": resized, "scale": [resized[0] / height, resized[1] / width],
            "pad": [top, left]}


def spacing_transform(shape: tuple[int, int], size: int, pixel_mm: Sequence[float],
                      target_mm: float) -> dict[str, Any]:
    """Resampling to a fixed in-plane spacing (nnU-Net / MONAI style): every pixel becomes
    `target_mm` x `target_mm`; a centred field of view of size x target_mm mm is kept
    (cropped when the slice is larger, zero-padded when smaller)."""
    if not target_mm > 0:
        raise InputError(None, "crop", "'spacing:<mm>' with a positive spacing", repr(target_mm))
    box = [0, 0, int(shape[0]), int(shape[1])]
    for axis in (0, 1):
        keep = min(int(shape[axis]), int(np.floor(size * target_mm / float(pixel_mm[axis]))))
        start = (int(shape[axis]) - keep) // 2
        box[axis], box[axis + 2] = start, start + keep
    return fit_transform(shape, size, box, [float(p) / target_mm for p in pixel_mm])


def _in_box(planes: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    y0, x0, y1, x1 = transform.get("box") or [0, 0, *transform["original_shape"]]
    return planes[..., y0:y1, x0:x1]


def _resize(plane: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """One float32 plane to (h, w): area averaging to shrink, linear to enlarge."""
    if tuple(plane.shape) == tuple(hw):
        return plane
    shrink = hw[0] * hw[1] < plane.shape[0] * plane.shape[1]
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(plane, (int(hw[1]), int(hw[0])), interpolation=method)


def resize_slices(slices: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    """(N, H, W) values -> (N, size, size) float32: resized, then zero-padded."""
    size, (h, w), (top, left) = transform["size"], transform["resized_shape"], transform["pad"]
    out = np.zeros((len(slices), size, size), np.float32)
    for i, plane in enumerate(_in_box(np.asarray(slices, dtype=np.float32), transform)):
        out[i, top:top + h, left:left + w] = _resize(plane, (h, w))
    return out


def _resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Labels (N, H, W) to (N, h, w): each label's indicator interpolated, then the argmax."""
    values = np.unique(labels)
    if len(values) == 1:
        return np.full((len(labels), *hw), values[0], np.uint8)
    scores = np.stack([np.stack([_resize((plane == v).astype(np.float32), hw)
                                 for plane in labels]) for v in values])
    return values[np.argmax(scores, axis=0)].astype(np.uint8)


def resize_labels(labels: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    """uint8 label slices (N, H, W) -> (N, size, size) like `resize_slices` (padding = 0)."""
    size, (h, w), (top, left) = transform["size"], transform["resized_shape"], transform["pad"]
    out = np.zeros((len(labels), size, size), np.uint8)
    out[:, top:top + h, left:left + w] = _resize_labels(_in_box(np.asarray(labels), transform),
                                                        (h, w))
    return out


def restore_labels(labels: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    """Store-size labels (N, size, size) back on the source grid (N, H, W)."""
    (h, w), (top, left) = transform["resized_shape"], transform["pad"]
    labels = np.asarray(labels)
    expected = (transform["size"], transform["size"])
    if labels.ndim != 3 or labels.shape[1:] != expected:
        raise InputError(None, "labels", f"(N, {expected[0]}, {expected[1]}) store-size labels",
                         f"shape {labels.shape}")
    y0, x0, y1, x1 = transform.get("box") or [0, 0, *transform["original_shape"]]
    out = np.zeros((len(labels), *transform["original_shape"]), np.uint8)
    out[:, y0:y1, x0:x1] = _resize_labels(labels[:, top:top + h, left:left + w],
                                          (y1 - y0, x1 - x0))
    return out


def pixel_spacing_after(spacing: tuple[float, float], transform: dict[str, Any]) -> list[float]:
    """In-plane pixel spacing (y, x) mm of the resized slices."""
    return [float(spacing[0]) / transform["scale"][0], float(spacing[1]) / transform["scale"][1]]


# -- sources ------------------------------------------------------------------------------------


def _is_h5(path: Path) -> bool:
    return path.suffix.lower() == H5_SUFFIX


def _read_png_labels(path: Path) -> np.ndarray:
    """Label values of a mask PNG (palette indices or grey values, never colour-converted)."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except OSError as exc:
        raise InputError(path, "mask", "a readable PNG label mask", str(exc)) from exc
    return (array[..., 0] if array.ndim == 3 else array).astype(np.uint8)


def _nifti_source(path: Path, mask_path: str) -> CmrSource:
    image, spacing = read_volume(path, np.float32)
    if image.ndim == CINE_DIMS:
        return CmrSource(image, None, tuple(float(s) for s in spacing[1:]), KIND_CINE,
                         float(spacing[0]))
    if image.ndim != STACK_DIMS:
        raise InputError(path, "dimensions", "a 3D stack (z, y, x) or a 4D cine (t, z, y, x)",
                         f"shape {image.shape}")
    labels = None
    if mask_path:
        labels, _ = read_volume(mask_path, labels=LABEL_VALUES)  # none outside the set
        if labels.shape != image.shape:
            raise InputError(mask_path, "shape", f"the image's {image.shape}", str(labels.shape))
        labels = labels.astype(np.uint8)
    return CmrSource(image, labels, tuple(float(s) for s in spacing), KIND_STACK)


def load_cmr_source(row: dict[str, Any]) -> CmrSource:
    """The image (and labels, spacing) of one manifest row: NIfTI, ACDC HDF5 or PNG pair."""
    path = Path(str(row["path"]))
    mask_path = row.get("mask_path") if isinstance(row.get("mask_path"), str) else ""
    if _is_h5(path):
        image, labels = load_acdc_h5(path)
        return CmrSource(image, labels, None, KIND_STACK)
    if is_nifti(path):
        return _nifti_source(path, mask_path or "")
    if path.suffix.lower() == PNG_SUFFIX:
        image = read_image(path).astype(np.float32)[None]
        labels = _read_png_labels(Path(mask_path))[None] if mask_path else None
        if labels is not None and labels.shape != image.shape:
            raise InputError(mask_path, "shape", f"the image's {image.shape[1:]}",
                             str(labels.shape[1:]))
        return CmrSource(image, labels, None, KIND_SLICE)
    raise InputError(path, "path", "a NIfTI stack or cine (.nii/.nii.gz), an ACDC .h5 sample "
                     "or a .png image with a mask_path", f"suffix {path.suffix!r}")


def cine_frames(frames: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """A cine sample's (T*Z, H, W, C) frames as (T, Z, H, W, C) (a view, no copy)."""
    shape = meta.get("cine_shape")
    if not shape:
        raise InputError(None, "cine_shape", "a cine sample (meta['cine_shape'] = [T, Z])",
                         f"a {meta.get('kind', 'stack')} sample")
    return frames.reshape(int(shape[0]), int(shape[1]), *frames.shape[1:])


# -- the preparer -------------------------------------------------------------------------------


def preprocess_cmr(source: CmrSource, size: int, channels: int = 1,
                   crop: str | None = None) -> tuple[np.ndarray, np.ndarray | None,
                                                     dict[str, Any]]:
    """(frames uint8 (N, size, size, channels), mask uint8 (N, size, size) or None, meta)."""
    name, _, value = (crop or "").strip().lower().partition(":")
    if name == CROP_SPACING:
        if source.spacing is None:
            raise InputError(None, "crop", "a source with pixel spacing to resample to "
                             f"{value} mm", "no spacing (HDF5 or PNG)", "use crop 'none'")
        try:
            target = float(value)
        except ValueError:
            target = -1.0
        transform = spacing_transform(source.image.shape[-2:], size, source.spacing[1:], target)
        box = transform["box"]
    else:
        box = crop_box(source.image.shape[-2:], crop)
        transform = fit_transform(source.image.shape[-2:], size, box)
    image = normalise_intensity(source.image, box=box)
    planes = image.reshape(-1, *image.shape[-2:])
    resized = np.clip(np.rint(resize_slices(planes, transform)), 0, UINT8_MAX).astype(np.uint8)
    frames = np.repeat(resized[..., None], channels, axis=-1)
    mask = None if source.labels is None else resize_labels(source.labels, transform)
    spacing = source.spacing
    meta: dict[str, Any] = {
        "kind": source.kind, "original_shape": list(source.image.shape), "transform": transform,
        "pixel_spacing_mm": None if spacing is None else pixel_spacing_after(spacing[1:],
                                                                             transform),
        "slice_spacing_mm": None if spacing is None else float(spacing[0]),
        "fps": None if not source.time_step_s else 1.0 / source.time_step_s}
    if source.kind == KIND_CINE:
        meta["cine_shape"] = [int(source.image.shape[0]), int(source.image.shape[1])]
    return frames, mask, meta


def prepare_cmr_sample(task: dict[str, Any]) -> dict[str, Any]:
    """Prepare one CMR manifest row into the store; never raises (failures -> problem)."""
    row, root, spec = task["row"], Path(task["root"]), task["spec"]
    path = Path(str(row["path"]))
    try:
        source = load_cmr_source(row)
        frames, mask, meta = preprocess_cmr(source, int(spec["size"]),
                                            int(spec.get("channels") or 1), spec.get("crop"))
        meta.update(source=str(path), source_hash=task["hash"], spec=spec,
                    phase=row.get("phase") or None, stats=channel_stats(frames))
        meta = write_sample(root, str(row["sample_id"]), frames, meta, mask)
        return {"sample_id": row["sample_id"], "meta": meta}
    except Exception as exc:  # one bad file is reported and skipped
        return {"sample_id": row["sample_id"],
                "problem": asdict(Problem.from_exception(path, STAGE, exc))}


# -- manifests ----------------------------------------------------------------------------------


def cmr_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """A CMR manifest ready for `prepare`: modality "cmr", a `group` column (from ACDC's
    Group), and EDV/ESV/EF per patient from `lv_voxels` (HDF5 samples) when absent, with
    `volume_unit` ("mL" or "voxels")."""
    out = manifest.copy()
    out["modality"] = "cmr"
    if "group" not in out.columns:
        out["group"] = out["Group"] if "Group" in out.columns else ""
    if "phase" not in out.columns:
        out["phase"] = ""
    if "EF" not in out.columns and "lv_voxels" in out.columns:
        out = _voxel_volumes(out)
    if "EF" in out.columns and "volume_unit" not in out.columns:
        out["volume_unit"] = ML_UNIT
    return out


def _voxel_volumes(manifest: pd.DataFrame) -> pd.DataFrame:
    """EDV/ESV (LV voxel counts of the ED/ES rows) and EF per patient."""
    counts = manifest.pivot_table(index="patient_id", columns="phase", values="lv_voxels",
                                  aggfunc="first")
    if not set(PHASES) <= set(counts.columns):
        return manifest
    edv, esv = counts["ED"], counts["ES"]
    ef = 100.0 * (edv - esv) / edv.where(edv > 0)
    out = manifest.copy()
    out["EDV"] = out["patient_id"].map(edv)
    out["ESV"] = out["patient_id"].map(esv)
    out["EF"] = out["patient_id"].map(ef)
    out["volume_unit"] = VOXEL_UNIT
    return out


def prepare_cmr(manifest: pd.DataFrame, out: str | Path, size: int = 128, channels: int = 1,
                crop: str = "none", workers: int | None = None, force: bool = False,
                problems: Sequence[Problem] = ()) -> Any:
    """`cmr_manifest` + `prep.prepare.prepare` at `size` px, `channels` and `crop` (see
    `crop_box`); the reader's `problems` go first into the store's problems.csv; returns the
    prepare summary."""
    spec = PrepSpec(size=size, channels=channels, crop=crop, blank=False)
    if manifest.empty:
        raise InputError(None, "samples", "at least one readable CMR sample",
                         f"none ({len(problems)} problem(s): "
                         f"{problems[0].error if problems else 'an empty source'})")
    return prepare(cmr_manifest(manifest), out, spec, workers=workers, force=force,
                   problems=problems)


def prepare_cmr_folder(source: str | Path, out: str | Path, size: int = 128,
                       channels: int = 1, crop: str = "none", test_fraction: float = 0.0,
                       seed: int = 0, workers: int | None = None, force: bool = False) -> Any:
    """Any CMR source (`layout.read_cmr_source`: ACDC, HDF5, DSB conversion,
    PNG pairs, pseudo-label subset, manifest CSV) into a store, rows without a split given
    one by patient (`assign_splits`); returns the prepare summary."""
    manifest, problems = read_cmr_source(source)
    manifest = assign_splits(manifest, test_fraction, seed) if len(manifest) else manifest
    return prepare_cmr(manifest, out, size=size, channels=channels, crop=crop,
                       workers=workers, force=force, problems=problems)


def sample_volume_ml(labels: np.ndarray, meta: dict[str, Any], label: int = LV_LABEL) -> float:
    """Volume of `label` in store-size labels (mL from meta spacing; voxels when absent)."""
    count = float(np.count_nonzero(np.asarray(labels) == label))
    pixel, slice_mm = meta.get("pixel_spacing_mm"), meta.get("slice_spacing_mm")
    if pixel is None or slice_mm is None:
        return count
    return count * float(pixel[0]) * float(pixel[1]) * float(slice_mm) * ML_PER_MM3
