"""Ultrasound DICOM files (single- or multi-frame, any transfer syntax pydicom can decode).

Frames come out as uint8 (T, H, W, C): C=3 RGB for colour photometrics (YBR_* are
converted by pydicom, PALETTE COLOR through its lookup table), C=1 for MONOCHROME1/2
(MONOCHROME1 inverted so that bright is tissue). Geometry comes from the first 2D region of
SequenceOfUltrasoundRegions; `region` is (y0, x0, y1, x1) half-open, i.e.
frames[:, y0:y1, x0:x1] is the region (DICOM's MaxX1/MaxY1 are inclusive).

Validation before anything is decoded (every failure an InputError/UnreadableFileError naming
the file and the field):

- special files and oversized files are refused before opening (`io.files.refuse_special`);
- a deflated transfer syntax is inflated in bounded chunks first: a dataset that inflates
  beyond the byte limit (a decompression bomb) is refused without being built;
- `check_pixel_header`: Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated
  must be positive and within the byte limit (`max_dicom_bytes`, $CINELAB_MAX_DICOM_BYTES),
  and for native (uncompressed) data the PixelData length must match NumberOfFrames;
- encapsulated (JPEG, RLE, ...) pixel data must hold NumberOfFrames frames, every JPEG frame
  must be a complete JPEG stream, and every frame must decode: the error names the frame.
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels as dpx
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.files import refuse_special

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
MIN_FRAMES = 1  # read_ultrasound's default; echo preparers should ask for a cine (3+)
MAX_BYTES_ENV = "CINELAB_MAX_DICOM_BYTES"
DEFAULT_MAX_BYTES = 2 * 1024**3  # decoded pixels / inflated dataset: 2 GiB
INFLATE_CHUNK = 1 << 20
BITS_ALLOCATED = (1, 8, 16, 32, 64)
JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70")
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


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
    *,
    min_frames: int = MIN_FRAMES,
    max_bytes: int | None = None,
) -> UltrasoundVideo:
    """Read an ultrasound DICOM into uint8 frames (T, H, W, C) plus timing and geometry.

    With `require_ultrasound=False` any image DICOM is read (e.g. MR/CT for testing).
    A file with no frame-rate tag gets `default_fps` and a warning. Fewer than `min_frames`
    frames (e.g. a single-frame still where a cine is needed: pass 3) raise InputError.
    """
    path = Path(path)
    ds = read_dataset(path, max_bytes=max_bytes)
    if require_ultrasound:
        check_ultrasound(path, ds)
    declared = check_pixel_header(path, ds, max_bytes)
    if declared.frames < min_frames:
        raise InputError(path, "NumberOfFrames", f"at least {min_frames} frames (a cine loop)",
                         f"{declared.frames}", "a still image cannot be prepared as a video")
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


def read_dataset(path: str | Path, *, max_bytes: int | None = None,
                 **kwargs: object) -> Dataset:
    """dcmread with every failure turned into an error naming the file.

    Devices, FIFOs and oversized files are refused before opening; a deflated dataset that
    would inflate beyond `max_bytes` (see `max_dicom_bytes`) is refused before pydicom
    inflates it.
    """
    path = refuse_special(path)
    if not path.is_file():
        raise InputError(path, "path", "an existing DICOM file", "nothing at that path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "file", "a DICOM file", "an empty file (0 bytes)")
    check_deflate(path, max_bytes)
    try:
        return pydicom.dcmread(path, **kwargs)  # type: ignore[arg-type]
    except InvalidDicomError as exc:
        raise UnreadableFileError(path, "file", "a DICOM file ('DICM' prefix after the preamble)",
                                  f"not DICOM ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt files
        raise UnreadableFileError(path, "file", "a readable DICOM file",
                                  f"{type(exc).__name__}: {exc}") from exc


def max_dicom_bytes(max_bytes: int | None = None) -> int:
    """The decoded/inflated byte limit: the argument, $CINELAB_MAX_DICOM_BYTES, or 2 GiB."""
    if max_bytes is not None:
        return int(max_bytes)
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    try:
        return int(float(value)) if value else DEFAULT_MAX_BYTES
    except ValueError as exc:
        raise InputError(None, MAX_BYTES_ENV, "a number of bytes", repr(value)) from exc


def check_deflate(path: str | Path, max_bytes: int | None = None) -> None:
    """Refuse a Deflated Explicit VR file that inflates beyond the limit (a zip bomb).

    Inflates in bounded chunks, counting bytes and keeping none; other transfer syntaxes and
    files pydicom cannot parse the meta of pass (dcmread then reports them).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fp:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            offset = fp.tell()
    except Exception:  # noqa: BLE001 - not our job to report a bad meta: dcmread does
        return
    if str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
        return
    limit = max_dicom_bytes(max_bytes)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        with open(path, "rb") as fp:
            fp.seek(offset)
            while chunk := fp.read(INFLATE_CHUNK):
                while chunk and not inflater.eof:  # bytes after the stream's end: padding
                    total += len(inflater.decompress(chunk, INFLATE_CHUNK))
                    chunk = inflater.unconsumed_tail
                    if total > limit:
                        raise InputError(path, "deflated dataset",
                                         f"at most {limit} bytes once inflated",
                                         f"more than {limit} bytes (a decompression bomb?)",
                                         f"raise {MAX_BYTES_ENV} if the file is genuine")
                if inflater.eof:
                    break
    except zlib.error as exc:
        raise UnreadableFileError(path, "deflated dataset", "valid deflate data",
                                  f"zlib.error: {exc}") from exc


@dataclass(frozen=True)
class PixelHeader:
    """What the header declares about the pixel data (checked before decoding)."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    encapsulated: bool

    @property
    def frame_bytes(self) -> int:
        """Bytes of one native frame."""
        return -(-self.rows * self.columns * self.samples * self.bits_allocated // 8)

    @property
    def total_bytes(self) -> int:
        """Bytes of every decoded frame."""
        return self.frame_bytes * self.frames


def _header_int(path: Path, ds: Dataset, keyword: str, default: int | None) -> int:
    value = ds.get(keyword, default)
    try:
        number = int(str(value).strip()) if value not in (None, "") else default
    except (TypeError, ValueError) as exc:
        raise InputError(path, keyword, "a whole number", repr(value)) from exc
    if number is None:
        raise InputError(path, keyword, "a value (required for pixel data)", "none")
    return number


def check_pixel_header(path: str | Path, ds: Dataset,
                       max_bytes: int | None = None) -> PixelHeader:
    """Declared pixel geometry, checked against the byte limit and the PixelData length."""
    path = Path(path)
    if "PixelData" not in ds:
        raise UnreadableFileError(path, "PixelData", "an image with pixel data",
                                  "no PixelData element (a header-only or truncated file)")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    encapsulated = bool(syntax is not None and UID(str(syntax)).is_compressed)
    header = PixelHeader(
        rows=_header_int(path, ds, "Rows", None), columns=_header_int(path, ds, "Columns", None),
        frames=_header_int(path, ds, "NumberOfFrames", 1),
        samples=_header_int(path, ds, "SamplesPerPixel", 1),
        bits_allocated=_header_int(path, ds, "BitsAllocated", None), encapsulated=encapsulated)
    for name, value in (("Rows", header.rows), ("Columns", header.columns),
                        ("NumberOfFrames", header.frames), ("SamplesPerPixel", header.samples)):
        if value < 1:
            raise InputError(path, name, "a positive number", repr(value))
    if header.bits_allocated not in BITS_ALLOCATED:
        raise InputError(path, "BitsAllocated", f"one of {BITS_ALLOCATED}",
                         repr(header.bits_allocated))
    limit = max_dicom_bytes(max_bytes)
    if header.total_bytes > limit:
        raise InputError(path, "declared pixel size", f"at most {limit} bytes decoded",
                         f"{header.total_bytes} bytes (Rows {header.rows} x Columns "
                         f"{header.columns} x NumberOfFrames {header.frames} x SamplesPerPixel "
                         f"{header.samples} x BitsAllocated {header.bits_allocated})",
                         f"refused before decoding; raise {MAX_BYTES_ENV} if it is genuine")
    if not encapsulated:
        _check_native_length(path, ds, header)
    return header


def _check_native_length(path: Path, ds: Dataset, header: PixelHeader) -> None:
    """Native PixelData must hold NumberOfFrames frames (padding to even length allowed)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    frame = header.frame_bytes
    if photometric == "YBR_FULL_422" and header.samples == 3:
        frame = frame * 2 // 3  # two luma + two chroma samples per pair of pixels
    expected = frame * header.frames
    if header.bits_allocated == 1:  # bit-packed frames follow each other without padding
        expected = -(-header.rows * header.columns * header.samples * header.frames // 8)
    element = ds["PixelData"]
    found = len(element.value) if element.value is not None else 0
    if found < expected or found >= expected + max(frame, 2):
        error = UnreadableFileError if found < expected else InputError
        raise error(path, "NumberOfFrames",
                         f"{expected} bytes of pixel data for NumberOfFrames {header.frames} "
                         f"({frame} per frame)",
                         f"{found} bytes ({found / frame:.2f} frames)" if frame else
                         f"{found} bytes", "the file is truncated or NumberOfFrames is wrong")


def _check_encapsulated(path: Path, ds: Dataset, header: PixelHeader) -> None:
    """NumberOfFrames compressed frames, each a complete JPEG stream for JPEG syntaxes."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=header.frames))
    except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError/struct.error/...
        raise UnreadableFileError(path, "PixelData", "encapsulated frames",
                                  f"{type(exc).__name__}: {exc}") from exc
    if len(frames) != header.frames:
        raise InputError(path, "NumberOfFrames", f"{header.frames} compressed frames",
                         f"{len(frames)}", "the file is truncated or NumberOfFrames is wrong")
    if syntax in JPEG_SYNTAXES:
        for index, data in enumerate(frames):
            body = data.rstrip(b"\x00")
            # EOI last, give or take a fill byte or two after it (0xFF or 0x00 padding)
            if not (body.startswith(JPEG_SOI) and JPEG_EOI in body[-4:]):
                raise UnreadableFileError(path, f"frame {index}",
                                          "a complete JPEG stream (SOI ... EOI markers)",
                                          f"{len(data)} bytes without "
                                          f"{'SOI' if not body.startswith(JPEG_SOI) else 'EOI'}",
                                          "the frame is truncated or corrupt")


def decode_pixels_checked(path: str | Path, ds: Dataset, max_bytes: int | None = None,
                          **kwargs: object) -> np.ndarray:
    """pixel_array after `check_pixel_header`; encapsulated data decoded frame by frame.

    A frame that fails to decode raises UnreadableFileError naming the frame index.
    """
    path = Path(path)
    header = check_pixel_header(path, ds, max_bytes)
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
    if not header.encapsulated:
        try:
            return dpx.pixel_array(ds, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - decoder plugins raise many types
            raise UnreadableFileError(path, "PixelData",
                                      f"pixel data decodable in transfer syntax {syntax}",
                                      f"{type(exc).__name__}: {exc}") from exc
    _check_encapsulated(path, ds, header)
    frames: list[np.ndarray] = []
    try:
        for frame in dpx.iter_pixels(ds, **kwargs):  # type: ignore[arg-type]
            frames.append(frame)
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise many types
        where = f"frame {len(frames)}" if header.frames > 1 else "PixelData"
        raise UnreadableFileError(path, where,
                                  f"a frame decodable in transfer syntax {syntax}",
                                  f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                                  ) from exc
    if len(frames) != header.frames:
        raise UnreadableFileError(path, "NumberOfFrames", f"{header.frames} decoded frames",
                                  f"{len(frames)}")
    return frames[0] if header.frames == 1 else np.stack(frames)


def _decode_frames(path: Path, ds: Dataset) -> np.ndarray:
    """Pixel data as uint8 (T, H, W, C)."""
    if "PixelData" not in ds:
        raise UnreadableFileError(path, "PixelData", "an image with pixel data",
                                  "no PixelData element (a header-only or truncated file)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in COLOUR_PHOTOMETRICS + GREY_PHOTOMETRICS + ("PALETTE COLOR",):
        raise InputError(path, "PhotometricInterpretation",
                         "RGB, YBR_*, PALETTE COLOR or MONOCHROME1/2", repr(photometric))
    arr = decode_pixels_checked(path, ds)  # converts YBR_* to RGB (as_rgb=True)
    if photometric == "PALETTE COLOR":
        try:
            arr = dpx.apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001 - malformed palettes raise many types
            raise InputError(path, "PaletteColorLookupTable", "a valid palette",
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
