"""Ultrasound DICOM files (single- or multi-frame, any transfer syntax pydicom can decode).

Frames come out as uint8 (T, H, W, C): C=3 RGB for colour photometrics (YBR_* are
converted by pydicom, PALETTE COLOR through its lookup table), C=1 for MONOCHROME1/2
(MONOCHROME1 inverted so that bright is tissue). Geometry comes from the first 2D region of
SequenceOfUltrasoundRegions; `region` is (y0, x0, y1, x1) half-open, i.e.
frames[:, y0:y1, x0:x1] is the region (DICOM's MaxX1/MaxY1 are inclusive).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels as dpx
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cinelab.errors import InputError, UnreadableFileError

ULTRASOUND_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume Storage",
}
FRAME_RATE_TAGS = ("FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate")
MS_PER_S = 1000.0
MM_PER_CM = 10.0
UNITS_CM = 3  # PhysicalUnitsX/YDirection code for centimetres
REGION_SPATIAL_FORMAT_2D = 1
UINT8_MAX = 255
COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
                       "YBR_PARTIAL_420", "YBR_PARTIAL_422")
GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's implementation root


@dataclass(frozen=True)
class UltrasoundVideo:
    """Decoded ultrasound frames and what the header says about timing and geometry."""

    frames: np.ndarray
    fps: float
    fps_source: str
    pixel_spacing_mm: tuple[float, float] | None
    region: tuple[int, int, int, int] | None
    patient_id: str | None
    modality: str
    photometric: str
    transfer_syntax: str
    n_frames: int


def read_header(path: str | Path) -> Dataset:
    """The DICOM header (everything before the pixel data); errors name the file."""
    return read_dataset(path, stop_before_pixels=True)


def read_ultrasound(
    path: str | Path,
    default_fps: float = 30.0,
    require_ultrasound: bool = True,
) -> UltrasoundVideo:
    """Read an ultrasound DICOM into uint8 frames (T, H, W, C) plus timing and geometry.

    With `require_ultrasound=False` any image DICOM is read (e.g. MR/CT for testing).
    A file with no frame-rate tag gets `default_fps` and a warning.
    """
    path = Path(path)
    ds = read_dataset(path)
    if require_ultrasound:
        check_ultrasound(path, ds)
    frames = _decode_frames(path, ds)
    fps, source = frame_rate(ds)
    if fps is None:
        warnings.warn(f"{path}: no frame rate in tags {', '.join(FRAME_RATE_TAGS)}; "
                      f"using default_fps={default_fps}", stacklevel=2)
        fps, source = float(default_fps), "default"
    spacing, region = _geometry(path, ds, frames.shape[1:3])
    return UltrasoundVideo(
        frames=frames, fps=fps, fps_source=source, pixel_spacing_mm=spacing, region=region,
        patient_id=_text(ds.get("PatientID")), modality=str(ds.get("Modality", "")),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        n_frames=int(frames.shape[0]),
    )


def is_ultrasound(ds: Dataset) -> bool:
    """Modality US or an ultrasound SOP class."""
    modality = str(ds.get("Modality", "")).strip().upper()
    return modality == "US" or str(ds.get("SOPClassUID", "")) in ULTRASOUND_SOP_CLASSES


def check_ultrasound(path: str | Path, ds: Dataset) -> None:
    """Raise InputError unless the dataset is an ultrasound image."""
    if is_ultrasound(ds):
        return
    sop = ds.get("SOPClassUID")
    sop_name = getattr(sop, "name", str(sop)) if sop is not None else "no SOPClassUID"
    raise InputError(path, "Modality", "US (or an ultrasound SOP class)",
                     f"{str(ds.get('Modality', '')) or 'no Modality'!r} ({sop_name})",
                     fix="pass require_ultrasound=False to read other image DICOMs")


def frame_rate(ds: Dataset) -> tuple[float | None, str]:
    """Frames per second from FrameTime, FrameTimeVector, CineRate, RecommendedDisplayFrameRate."""
    for tag in FRAME_RATE_TAGS:
        fps = _fps_from_tag(tag, ds.get(tag))
        if fps is not None:
            return fps, tag
    return None, "default"


def _fps_from_tag(tag: str, value: object) -> float | None:
    """One tag's frame rate, or None when absent, empty or not positive."""
    if value is None or value == "":
        return None
    try:
        if tag == "FrameTimeVector":
            times = [float(v) for v in (value if _is_sequence(value) else [value])]
            ms = float(np.mean(times[1:])) if len(times) > 1 else 0.0
            fps = MS_PER_S / ms if ms > 0 else 0.0
        elif tag == "FrameTime":
            ms = float(value)
            fps = MS_PER_S / ms if ms > 0 else 0.0
        else:
            fps = float(value)
    except (TypeError, ValueError):
        return None
    return fps if np.isfinite(fps) and fps > 0 else None


def read_dataset(path: str | Path, **kwargs: object) -> Dataset:
    """dcmread with every failure turned into an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "path", "an existing DICOM file", "nothing at that path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "file", "a DICOM file", "an empty file (0 bytes)")
    try:
        return pydicom.dcmread(path, **kwargs)  # type: ignore[arg-type]
    except InvalidDicomError as exc:
        raise UnreadableFileError(path, "file", "a DICOM file ('DICM' prefix after the preamble)",
                                  f"not DICOM ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt files
        raise UnreadableFileError(path, "file", "a readable DICOM file",
                                  f"{type(exc).__name__}: {exc}") from exc


def _decode_frames(path: Path, ds: Dataset) -> np.ndarray:
    """Pixel data as uint8 (T, H, W, C)."""
    if "PixelData" not in ds:
        raise UnreadableFileError(path, "PixelData", "an image with pixel data",
                                  "no PixelData element (a header-only or truncated file)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in COLOUR_PHOTOMETRICS + GREY_PHOTOMETRICS + ("PALETTE COLOR",):
        raise InputError(path, "PhotometricInterpretation",
                         "RGB, YBR_*, PALETTE COLOR or MONOCHROME1/2", repr(photometric))
    try:
        arr = dpx.pixel_array(ds)  # converts YBR_* to RGB (as_rgb=True)
        if photometric == "PALETTE COLOR":
            arr = dpx.apply_color_lut(arr, ds)
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise many types
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise UnreadableFileError(path, "PixelData",
                                  f"pixel data decodable in transfer syntax {syntax}",
                                  f"{type(exc).__name__}: {exc}") from exc
    colour = photometric != "MONOCHROME1" and photometric != "MONOCHROME2"
    arr = _add_axes(arr, colour)
    if photometric == "PALETTE COLOR":
        return _palette_to_uint8(arr)
    if colour:
        return _to_uint8(arr, bits=int(ds.get("BitsStored", 8)))
    return _grey_to_uint8(arr, ds, invert=photometric == "MONOCHROME1")


def _add_axes(arr: np.ndarray, colour: bool) -> np.ndarray:
    """(H,W[,C]) or (T,H,W[,C]) -> (T,H,W,C)."""
    if not colour:
        arr = arr[..., None]
    return arr[None] if arr.ndim == 3 else arr


def _palette_to_uint8(arr: np.ndarray) -> np.ndarray:
    """A palette lookup result (8- or 16-bit entries) as uint8."""
    if arr.dtype == np.uint8:
        return arr
    return (arr.astype(np.uint32) >> 8).astype(np.uint8)


def _to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned samples of `bits` stored bits as uint8 (shifted, not stretched)."""
    if arr.dtype == np.uint8 and bits == 8:
        return arr
    shift = max(bits - 8, 0)
    return (np.clip(arr, 0, None).astype(np.uint32) >> shift).clip(0, UINT8_MAX).astype(np.uint8)


def _grey_to_uint8(arr: np.ndarray, ds: Dataset, invert: bool) -> np.ndarray:
    """Greyscale to uint8: 8-bit kept; deeper data windowed (VOI) or min-max over the clip."""
    if arr.dtype == np.uint8 and int(ds.get("BitsStored", 8)) == 8:
        return UINT8_MAX - arr if invert else arr
    values = dpx.apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = dpx.apply_voi_lut(values, ds)
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if invert:
        scaled = 1.0 - scaled
    return np.rint(scaled * UINT8_MAX).astype(np.uint8)


def _geometry(
    path: Path, ds: Dataset, shape: tuple[int, int],
) -> tuple[tuple[float, float] | None, tuple[int, int, int, int] | None]:
    """(dy, dx) in mm and the (y0, x0, y1, x1) region of the largest 2D ultrasound region."""
    item = _main_region(ds)
    if item is None:
        return None, None
    x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
    x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1
    rows, cols = shape
    if not (0 <= x0 < x1 <= cols + 1 and 0 <= y0 < y1 <= rows + 1):
        warnings.warn(f"{path}: SequenceOfUltrasoundRegions bounds x {x0}-{x1 - 1}, "
                      f"y {y0}-{y1 - 1} do not fit the {rows}x{cols} frames (the header may "
                      "describe a resized image); region and pixel spacing ignored",
                      stacklevel=3)
        return None, None
    return _spacing(item), (y0, x0, min(y1, rows), min(x1, cols))


def _main_region(ds: Dataset) -> Dataset | None:
    """The largest 2D region with pixel bounds (the B-mode sector, not Doppler strips)."""
    items = [r for r in ds.get("SequenceOfUltrasoundRegions", [])
             if all(k in r for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                     "RegionLocationMaxX1", "RegionLocationMaxY1"))]
    two_d = [r for r in items if r.get("RegionSpatialFormat") == REGION_SPATIAL_FORMAT_2D]
    candidates = two_d or items
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r.RegionLocationMaxX1 - r.RegionLocationMinX0)
               * (r.RegionLocationMaxY1 - r.RegionLocationMinY0))


def _spacing(item: Dataset) -> tuple[float, float] | None:
    """(dy, dx) in mm when both deltas are in cm, else None."""
    units = (item.get("PhysicalUnitsYDirection"), item.get("PhysicalUnitsXDirection"))
    deltas = (item.get("PhysicalDeltaY"), item.get("PhysicalDeltaX"))
    if units != (UNITS_CM, UNITS_CM) or None in deltas:
        return None
    dy, dx = (abs(float(d)) * MM_PER_CM for d in deltas)
    return (dy, dx) if dy > 0 and dx > 0 else None


def _is_sequence(value: object) -> bool:
    """A multi-valued element (pydicom MultiValue, list, tuple), not a single value."""
    return hasattr(value, "__iter__") and not isinstance(value, str | bytes)


def _text(value: object) -> str | None:
    """A header string, None when absent or blank."""
    text = "" if value is None else str(value).strip()
    return text or None


def is_dicom_path(path: Path) -> bool:
    """DICOM files by suffix or by the DICM preamble."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if path.suffix == "" and path.is_file():
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    return False
