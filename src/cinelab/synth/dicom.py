"""Write synthetic multi-frame ultrasound DICOMs (phantoms in the real file format)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from cinelab.errors import InputError
from cinelab.io.dicom import IMPLEMENTATION_UID
from cinelab.utils import atomic_path

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
}
MM_PER_CM = 10.0
UNITS_CM = 3  # PhysicalUnitsX/YDirection code for centimetres
REGION_SPATIAL_FORMAT_2D = 1
REGION_DATA_TYPE_TISSUE = 1
FRAME_TIME_TAG = 0x00181063


def write_ultrasound_dicom(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    patient_id: str,
    pixel_spacing_mm: tuple[float, float] | None = None,
    region: tuple[int, int, int, int] | None = None,
    transfer_syntax: str = "explicit",
    **tags: Any,
) -> Path:
    """Write frames (T,H,W) or (T,H,W,3) uint8 as a US Multi-frame DICOM, atomically.

    `pixel_spacing_mm` is (dy, dx) in mm; `region` is (y0, x0, y1, x1) in pixels, half-open
    as read_ultrasound returns it (defaults to the whole frame when a spacing is given).
    Extra DICOM attributes go in `tags` by keyword (PatientName, PatientBirthDate,
    AccessionNumber, InstitutionName, DeviceSerialNumber, StudyDate, ...).
    `transfer_syntax` is "explicit", "implicit" or "rle" (RLE Lossless).
    """
    path = Path(path)
    frames = _check_frames(path, frames)
    if fps <= 0:
        raise InputError(path, "fps", "a positive frame rate", repr(fps))
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise InputError(path, "transfer_syntax", f"one of {sorted(TRANSFER_SYNTAXES)}",
                         repr(transfer_syntax))
    ds = _base_dataset(frames, patient_id)
    _set_timing(ds, fps)
    if pixel_spacing_mm is not None or region is not None:
        ds.SequenceOfUltrasoundRegions = DicomSequence(
            [_region_item(frames.shape[1:3], pixel_spacing_mm, region)])
    for keyword, value in tags.items():
        _set_tag(ds, path, keyword, value)
    _encode(ds, TRANSFER_SYNTAXES[transfer_syntax])
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _check_frames(path: Path, frames: np.ndarray) -> np.ndarray:
    """Frames as contiguous uint8 (T,H,W) or (T,H,W,3)."""
    frames = np.asarray(frames)
    ok_shape = frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] in (1, 3))
    if frames.dtype != np.uint8 or not ok_shape or frames.shape[0] < 1:
        raise InputError(path, "frames", "uint8 array (T,H,W) or (T,H,W,3) with T >= 1",
                         f"{frames.dtype} array of shape {frames.shape}")
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    return np.ascontiguousarray(frames)


def _base_dataset(frames: np.ndarray, patient_id: str) -> Dataset:
    """Patient/study/series/image modules and the pixel data (uncompressed)."""
    sop_class = UltrasoundMultiFrameImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.PatientID = str(patient_id)
    ds.PatientName = str(patient_id)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    _set_pixels(ds, frames)
    return ds


def _set_pixels(ds: Dataset, frames: np.ndarray) -> None:
    """Image pixel module for uint8 frames, grey (MONOCHROME2) or RGB (interleaved)."""
    colour = frames.ndim == 4
    ds.NumberOfFrames = int(frames.shape[0])
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = frames.tobytes()


def _set_timing(ds: Dataset, fps: float) -> None:
    """FrameTime (ms), CineRate and RecommendedDisplayFrameRate from the frame rate."""
    ds.FrameTime = f"{1000.0 / fps:.10g}"  # DS holds at most 16 characters
    ds.CineRate = int(round(fps))
    ds.RecommendedDisplayFrameRate = int(round(fps))
    ds.FrameIncrementPointer = FRAME_TIME_TAG


def _region_item(
    shape: Sequence[int],
    spacing_mm: tuple[float, float] | None,
    region: tuple[int, int, int, int] | None,
) -> Dataset:
    """One SequenceOfUltrasoundRegions item: bounds in pixels, deltas in cm."""
    y0, x0, y1, x1 = region if region is not None else (0, 0, shape[0], shape[1])
    item = Dataset()
    item.RegionSpatialFormat = REGION_SPATIAL_FORMAT_2D
    item.RegionDataType = REGION_DATA_TYPE_TISSUE
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = int(x0), int(y0)
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = int(x1) - 1, int(y1) - 1  # inclusive
    if spacing_mm is not None:
        item.PhysicalUnitsXDirection = UNITS_CM
        item.PhysicalUnitsYDirection = UNITS_CM
        item.PhysicalDeltaX = float(spacing_mm[1]) / MM_PER_CM
        item.PhysicalDeltaY = float(spacing_mm[0]) / MM_PER_CM
    return item


def _set_tag(ds: Dataset, path: Path, keyword: str, value: Any) -> None:
    """Set one attribute by DICOM keyword; unknown keywords raise InputError."""
    if tag_for_keyword(keyword) is None:
        raise InputError(path, keyword, "a DICOM attribute keyword (e.g. PatientName)",
                         "an unknown keyword")
    setattr(ds, keyword, value)


def _encode(ds: Dataset, syntax: str) -> None:
    """Set the transfer syntax, compressing the pixel data where it is compressed."""
    if syntax == RLELossless:
        ds.compress(RLELossless)
        return
    ds.file_meta.TransferSyntaxUID = syntax
