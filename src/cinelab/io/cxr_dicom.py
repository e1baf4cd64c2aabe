"""Chest radiograph DICOMs (CR/DX): read to uint8 greyscale as a viewer shows them; write.

Reading follows the DICOM grayscale pipeline: stored values -> Modality LUT (rescale) ->
VOI (a VOI LUT Sequence when present, else Window Center/Width, pydicom's `apply_voi_lut`)
-> 0..255, then MONOCHROME1 (bright = air) or a Presentation LUT Shape INVERSE is inverted so
that bone is always bright. `CxrAcceptance` / `check_cxr_header` refuse DICOMs that are not
frontal chest radiographs (Modality, ViewPosition, size) before any pixel is decoded.
The VOI output is mapped to 0..255 over its own output range (the window's full range, or the
LUT's smallest..largest entry), so a window wider than the data keeps its intended contrast.
Without any VOI, 12/16-bit data are scaled like 16-bit PNGs (robust 0.5-99.5 percentiles by
default, see `cinelab.io.image`); 8-bit data without VOI are kept as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.pixels as dpx
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from cinelab.errors import InputError
from cinelab.io.dicom import IMPLEMENTATION_UID, decode_pixels_checked, read_dataset
from cinelab.io.image import (
    IMAGE_SUFFIXES,
    UINT8_MAX,
    as_grey,
    read_image,
    scale_deep,
    scale_to_uint8,
)
from cinelab.utils import atomic_path

CXR_MODALITIES = ("CR", "DX")  # what write_cxr_dicom writes and require_cxr=True accepts
#: Modalities accepted as chest radiographs by default (DR is a retired code still found in
#: archives); a CT, MR, US or secondary capture in a CXR folder is refused, not classified.
ACCEPTED_MODALITIES = ("CR", "DX", "DR")
ACCEPTED_VIEWS = ("PA", "AP")  # ViewPosition, when present ("AP SUPINE" counts as AP)
MIN_SIDE = 256  # px: a smaller DICOM is an icon, a thumbnail or not a radiograph
INVERSE = "INVERSE"  # Presentation LUT Shape that displays low values bright
GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
DEFER_BYTES = 1024  # header reads locate the pixel data without loading it
LUT_ENTRY_BITS = 16
DICOM_SUFFIXES = (".dcm", ".dicom")
PREAMBLE_BYTES, PREAMBLE_END = 128, 132  # 'DICM' sits after a 128-byte preamble


@dataclass(frozen=True)
class CxrHeader:
    """What a CXR DICOM header says (pixel data located, not decoded)."""

    patient_id: str | None
    view: str  # ViewPosition: PA, AP, LL, ... ('' when absent)
    modality: str
    photometric: str
    rows: int
    columns: int
    bits_stored: int
    has_pixels: bool
    voi: str  # "lut", "window" or "none"


@dataclass(frozen=True)
class CxrAcceptance:
    """Which DICOMs count as chest radiographs: Modality in `modalities`, ViewPosition (when
    the file has one) in `views`, both sides at least `min_side` px. Empty tuples or
    min_side 0 switch a check off."""

    modalities: tuple[str, ...] = ACCEPTED_MODALITIES
    views: tuple[str, ...] = ACCEPTED_VIEWS
    min_side: int = MIN_SIDE


def check_cxr_header(path: str | Path, header: CxrHeader, accept: CxrAcceptance) -> None:
    """Raise InputError (field, expected, found) when the header is not a CXR to classify."""
    modality = header.modality.upper()
    if accept.modalities and modality not in accept.modalities:
        raise InputError(path, "Modality", f"one of {list(accept.modalities)}",
                         repr(header.modality or "no Modality"),
                         "only chest radiographs are classified; allow others explicitly")
    view = header.view.upper().split()[0] if header.view.strip() else ""
    if view and accept.views and view not in accept.views:
        raise InputError(path, "ViewPosition", f"one of {list(accept.views)} (frontal)",
                         repr(header.view), "lateral and other views are not classified")
    side = min(header.rows, header.columns)
    if side < accept.min_side:
        raise InputError(path, "Rows/Columns", f"both sides >= {accept.min_side} px",
                         f"{header.rows} x {header.columns}",
                         "a thumbnail or icon is not a radiograph; lower min_side to allow it")


def read_cxr_header(path: str | Path) -> CxrHeader:
    """Header fields of a CXR DICOM; unreadable files raise UnreadableFileError."""
    return header_from_dataset(read_dataset(path, defer_size=DEFER_BYTES))


def header_from_dataset(ds: Dataset) -> CxrHeader:
    """The `CxrHeader` of a dataset already read."""
    return CxrHeader(
        patient_id=_text(ds.get("PatientID")), view=_text(ds.get("ViewPosition")) or "",
        modality=_text(ds.get("Modality")) or "",
        photometric=_text(ds.get("PhotometricInterpretation")) or "",
        rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
        bits_stored=int(ds.get("BitsStored", 0) or 0), has_pixels="PixelData" in ds,
        voi=_voi_kind(ds))


def read_cxr_dicom(path: str | Path, scale16: str = "robust",
                   require_cxr: bool = False,
                   accept: CxrAcceptance | None = None) -> np.ndarray:
    """A CR/DX DICOM as uint8 (H, W), VOI applied, bone bright.

    `require_cxr=True` rejects modalities other than CR/DX; `accept` checks modality, view
    and size (`check_cxr_header`) before decoding. Colour (RGB/YBR) secondary captures are
    converted to greyscale; a multi-frame file gives its first frame. MONOCHROME1 is
    inverted; so is MONOCHROME2 with Presentation LUT Shape INVERSE (MONOCHROME1 + INVERSE
    is the standard DX pairing and is inverted once).
    """
    path = Path(path)
    ds = read_dataset(path)
    if accept is not None:
        check_cxr_header(path, header_from_dataset(ds), accept)
    if require_cxr and str(ds.get("Modality", "")).upper() not in CXR_MODALITIES:
        raise InputError(path, "Modality", f"one of {CXR_MODALITIES}",
                         repr(str(ds.get("Modality", ""))),
                         fix="pass require_cxr=False to read other radiographs")
    arr = _pixels(path, ds)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in GREY_PHOTOMETRICS:
        return _colour_to_grey(arr)
    image = _grey_to_uint8(path, ds, arr, scale16)
    return UINT8_MAX - image if displays_inverted(ds) else image


def displays_inverted(ds: Dataset) -> bool:
    """True when a viewer shows low stored values bright: MONOCHROME1, or Presentation LUT
    Shape INVERSE."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return photometric == "MONOCHROME1" or shape == INVERSE


def _pixels(path: Path, ds: Dataset) -> np.ndarray:
    """The first frame's stored values; no or undecodable pixel data raise."""
    arr = decode_pixels_checked(path, ds)  # size limits checked before decoding
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return arr[0] if frames > 1 else arr


def _colour_to_grey(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        arr = scale_to_uint8(arr, 0.0, float(np.iinfo(arr.dtype).max))
    return as_grey(arr)


def _grey_to_uint8(path: Path, ds: Dataset, arr: np.ndarray, scale16: str) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, then 0..255."""
    voi = _voi_kind(ds)
    rescaled = "RescaleSlope" in ds or "ModalityLUTSequence" in ds
    if voi == "none" and arr.dtype == np.uint8 and not rescaled:
        return arr
    try:
        values = dpx.apply_modality_lut(arr, ds)
        if voi == "none":
            return scale_deep(values, scale16)
        out = dpx.apply_voi_lut(values, ds, index=0, prefer_lut=True)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        field = "VOILUTSequence" if voi == "lut" else "WindowCenter/WindowWidth"
        raise InputError(path, field, "a valid VOI transform", f"{type(exc).__name__}: {exc}",
                         fix="fix or remove the VOI attributes") from exc
    lo, hi = _voi_output_range(ds, voi)
    return scale_to_uint8(out, lo, hi)


def _voi_kind(ds: Dataset) -> str:
    if ds.get("VOILUTSequence"):
        return "lut"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return "window"
    return "none"


def _voi_output_range(ds: Dataset, voi: str) -> tuple[float, float]:
    """The range VOI maps into: the LUT's entries, or the window's full output range."""
    if voi == "lut":
        data = np.asarray(dpx.apply_voi(np.arange(_lut_length(ds)) + _lut_first(ds), ds))
        return float(data.min()), float(data.max())
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        half = 2 ** (int(ds.BitsStored) - 1)
        lo, hi = float(-half), float(half - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _lut_length(ds: Dataset) -> int:
    n = int(ds.VOILUTSequence[0].LUTDescriptor[0])
    return n if n > 0 else 2**16  # 0 means 65536 entries


def _lut_first(ds: Dataset) -> int:
    return int(ds.VOILUTSequence[0].LUTDescriptor[1])


def write_cxr_dicom(
    path: str | Path,
    image: np.ndarray,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    *,
    bits_stored: int | None = None,
    voi_lut: np.ndarray | None = None,
    modality: str = "DX",
    **tags: Any,
) -> Path:
    """Write a uint8/uint16 (H, W) radiograph as a CR/DX DICOM, atomically.

    `window` is (center, width); `voi_lut` a 1D table of output values for stored values
    0..len-1 (written as a VOI LUT Sequence with 16-bit entries); `bits_stored` defaults to
    8 for uint8 and 16 for uint16 (pass 12 for 12-bit data). Values are written as given:
    for MONOCHROME1 pass the already inverted image. Extra attributes by keyword in `tags`
    (PatientID, ViewPosition, ...).
    """
    path = Path(path)
    image = _check_image(path, image)
    if photometric not in GREY_PHOTOMETRICS:
        raise InputError(path, "photometric", f"one of {GREY_PHOTOMETRICS}", repr(photometric))
    if modality not in SOP_CLASSES:
        raise InputError(path, "modality", f"one of {sorted(SOP_CLASSES)}", repr(modality))
    bits = bits_stored or image.dtype.itemsize * 8
    if not 1 <= bits <= image.dtype.itemsize * 8 or int(image.max()) >= 2**bits:
        raise InputError(path, "bits_stored", f"room for the values (max {int(image.max())})",
                         repr(bits_stored))
    ds = _base_dataset(image, photometric, bits, modality)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if voi_lut is not None:
        ds.VOILUTSequence = [_lut_item(np.asarray(voi_lut))]
    for keyword, value in tags.items():
        if tag_for_keyword(keyword) is None:
            raise InputError(path, keyword, "a DICOM attribute keyword (e.g. ViewPosition)",
                             "an unknown keyword")
        setattr(ds, keyword, value)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _check_image(path: Path, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise InputError(path, "image", "uint8 or uint16 (H, W)",
                         f"{image.dtype} array of shape {image.shape}")
    return np.ascontiguousarray(image)


def _base_dataset(image: np.ndarray, photometric: str, bits: int, modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientID = ds.PatientName = "anonymous"
    ds.Rows, ds.Columns = (int(v) for v in image.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = image.dtype.itemsize * 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = image.tobytes()
    return ds


def _lut_item(table: np.ndarray) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [int(table.size), 0, LUT_ENTRY_BITS]
    item.LUTData = table.astype("<u2").tobytes()
    return item


def _text(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def is_dicom_file(path: str | Path) -> bool:
    """DICOM by suffix (.dcm, .dicom) or, for other files, by the 'DICM' preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix.lower() in IMAGE_SUFFIXES or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(PREAMBLE_END)[PREAMBLE_BYTES:PREAMBLE_END] == b"DICM"


def read_cxr(path: str | Path, scale16: str = "robust",
             accept: CxrAcceptance | None = None) -> np.ndarray:
    """Any chest radiograph file (DICOM, PNG, JPEG, ...) as uint8 (H, W) greyscale; DICOMs
    are checked against `accept` when given (PNG/JPEG carry no modality to check)."""
    if is_dicom_file(path):
        return read_cxr_dicom(path, scale16=scale16, accept=accept)
    return read_image(path, scale16=scale16)
