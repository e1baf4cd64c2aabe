"""Single-frame MR DICOM images and the geometry tags of a short-axis cine series.

Each image is read once into an `MRImage`: float32 pixels (modality LUT applied) plus the
tags the stack cleaning needs. Geometry tags may be absent; they come back as None and the
helpers here say what can be derived instead:

- slice location: `SliceLocation`, else the projection of `ImagePositionPatient` on the
  slice normal (row x column direction cosines of `ImageOrientationPatient`);
- slice normal: from `ImageOrientationPatient` of the image, else a normal the caller knows
  (e.g. the most common one in the series).
Missing `PixelSpacing` has no fallback: `require_spacing` raises InputError naming the file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom.pixels as dpx
from pydicom.dataset import Dataset

from cinelab.errors import InputError, Problem, UnreadableFileError
from cinelab.io.dicom import (
    check_pixel_header,
    decode_pixels_checked,
    read_dataset,
    read_header,
)

DICOM_SUFFIX = ".dcm"
STAGE = "dicom_series"
ORIENTATION_DECIMALS = 3  # rounding when taking the most common orientation


@dataclass
class MRImage:
    """One decoded MR image and its cine geometry (None where a tag is absent)."""

    path: Path
    pixels: np.ndarray  # float32 (rows, columns)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    slice_location: float | None
    position: np.ndarray | None  # ImagePositionPatient (3,) mm, LPS
    orientation: np.ndarray | None  # ImageOrientationPatient (6,): row then column cosines
    trigger_time: float | None  # ms
    instance_number: int | None
    series_number: int | None
    cardiac_images: int | None  # CardiacNumberOfImages
    slice_thickness: float | None
    spacing_between_slices: float | None
    patient_id: str | None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def read_mr_image(path: str | Path) -> MRImage:
    """Read one single-frame image DICOM (any modality) with its geometry tags."""
    path = Path(path)
    ds = read_dataset(path)
    return MRImage(
        path=path, pixels=decode_pixels(path, ds),
        pixel_spacing=_pair(ds.get("PixelSpacing")),
        slice_location=_float(ds.get("SliceLocation")),
        position=_vector(ds.get("ImagePositionPatient"), 3),
        orientation=_vector(ds.get("ImageOrientationPatient"), 6),
        trigger_time=_float(ds.get("TriggerTime")),
        instance_number=_int(ds.get("InstanceNumber")),
        series_number=_int(ds.get("SeriesNumber")),
        cardiac_images=_int(ds.get("CardiacNumberOfImages")),
        slice_thickness=_float(ds.get("SliceThickness")),
        spacing_between_slices=_float(ds.get("SpacingBetweenSlices")),
        patient_id=str(ds.get("PatientID", "")).strip() or None,
    )


def decode_pixels(path: Path, ds: Dataset) -> np.ndarray:
    """The pixels of a single-frame greyscale image as float32, modality LUT applied."""
    if "PixelData" not in ds:
        raise UnreadableFileError(path, "PixelData", "an image with pixel data",
                                  "no PixelData element")
    frames = check_pixel_header(path, ds).frames
    if frames > 1:
        raise InputError(path, "NumberOfFrames", "a single-frame image (one per time point)",
                         f"{frames} frames")
    pixels = decode_pixels_checked(path, ds)
    try:
        arr = dpx.apply_modality_lut(pixels, ds)
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise many types
        raise UnreadableFileError(path, "PixelData", "decodable pixel data",
                                  f"{type(exc).__name__}: {exc}") from exc
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(path, "PixelData", "a greyscale image (rows, columns)",
                         f"array of shape {arr.shape}")
    return arr


def read_mr_folder(folder: str | Path) -> tuple[list[MRImage], list[Problem]]:
    """Every *.dcm in `folder` (sorted by name); unreadable files become problems."""
    images, problems = [], []
    for path in sorted(Path(folder).glob(f"*{DICOM_SUFFIX}")):
        try:
            images.append(read_mr_image(path))
        except InputError as exc:
            problems.append(Problem.from_exception(path, STAGE, exc))
    return images, problems


def require_spacing(image: MRImage) -> tuple[float, float]:
    """PixelSpacing (rows, columns) in mm, or InputError naming the file and tag."""
    if image.pixel_spacing is None or min(image.pixel_spacing) <= 0:
        raise InputError(image.path, "PixelSpacing", "two positive values in mm",
                         "no PixelSpacing" if image.pixel_spacing is None
                         else repr(image.pixel_spacing),
                         fix="add PixelSpacing (0028,0030), or drop this series")
    return image.pixel_spacing


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal (row direction x column direction) of an ImageOrientationPatient."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def mode_orientation(orientations: Iterable[np.ndarray | None]) -> np.ndarray | None:
    """The most common ImageOrientationPatient (compared rounded, returned as first found);
    None when no image has one."""
    found = [o for o in orientations if o is not None]
    if not found:
        return None
    keys = [tuple(np.round(o, ORIENTATION_DECIMALS)) for o in found]
    return np.asarray(found[keys.index(largest_mode(keys))], dtype=float)


def largest_mode(values: Iterable[Hashable]) -> Any:
    """The most common value; ties go to the largest."""
    counts = Counter(values)
    if not counts:
        raise ValueError("largest_mode of no values")
    best = max(counts.values())
    return max(v for v, c in counts.items() if c == best)


def slice_location(image: MRImage, normal: np.ndarray | None) -> tuple[float, str]:
    """(location mm, source): SliceLocation, else ImagePositionPatient on the normal."""
    if image.slice_location is not None:
        return image.slice_location, "SliceLocation"
    if normal is None and image.orientation is not None:
        normal = slice_normal(image.orientation)
    if image.position is not None and normal is not None:
        return float(np.dot(image.position, normal)), "ImagePositionPatient"
    raise InputError(image.path, "SliceLocation",
                     "SliceLocation, or ImagePositionPatient with ImageOrientationPatient",
                     "no SliceLocation and no ImagePositionPatient" if image.position is None
                     else "no SliceLocation and no ImageOrientationPatient",
                     fix="add SliceLocation (0020,1041) or ImagePositionPatient (0020,0032)")


def dicom_metadata(path: str | Path) -> dict[str, object]:
    """Every non-binary header element by keyword (sequences as text), for a metadata table."""
    ds = read_header(path)
    row: dict[str, object] = {}
    for elem in ds:
        if elem.VR.startswith("O") or elem.VR == "UN":
            continue
        key = elem.keyword or str(elem.tag).replace(", ", "").strip("()")
        value = elem.value
        row[key] = str(value) if elem.VR == "SQ" or _is_multi(value) else value
    return row


def dicom_metadata_table(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per DICOM file (column `file` first); unreadable files become problems."""
    rows, problems = [], []
    for path in paths:
        try:
            rows.append({"file": str(path), **dicom_metadata(path)})
        except InputError as exc:
            problems.append(Problem.from_exception(path, STAGE, exc))
    return pd.DataFrame(rows), problems


def _is_multi(value: object) -> bool:
    return hasattr(value, "__iter__") and not isinstance(value, str | bytes)


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _int(value: object) -> int | None:
    number = _float(value)
    return None if number is None else int(round(number))


def _vector(value: object, length: int) -> np.ndarray | None:
    """A multi-valued numeric tag as a float array of `length`, None when absent or bad."""
    if value is None or not _is_multi(value):
        return None
    numbers = [_float(v) for v in value]  # type: ignore[union-attr]
    if len(numbers) != length or any(v is None for v in numbers):
        return None
    return np.asarray(numbers, dtype=float)


def _pair(value: object) -> tuple[float, float] | None:
    vec = _vector(value, 2)
    return None if vec is None else (float(vec[0]), float(vec[1]))
