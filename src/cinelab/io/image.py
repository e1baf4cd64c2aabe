"""Still images (PNG, JPEG, BMP, TIFF) as uint8 greyscale or RGB arrays, via Pillow.

Pillow decodes (it raises on truncated files, where OpenCV returns a half-grey image and only
prints a warning). Modes are normalised:

- 8-bit greyscale ("L", "1") is kept; "LA" and "RGBA" lose their alpha channel (dropped, not
  composited: radiographs exported with alpha are opaque); palette images go through their
  palette; CMYK/YCbCr are converted to RGB.
- 16-bit (and 32-bit integer or float) greyscale is scaled to uint8. `scale16="robust"`
  (default) maps the 0.5th..99.5th percentiles of the pixel values to 0..255 (robust to a few
  hot pixels and to exports that use only 12 of the 16 bits); `scale16="full"` maps the whole
  0..65535 range (`value >> 8`, the same brightness for every file of a cohort);
  `scale16="minmax"` maps the image's own minimum..maximum. 16-bit RGB PNGs are reduced to
  8 bits per channel by Pillow itself (the high byte).
- RGB to greyscale uses OpenCV's luma weights (0.299 R + 0.587 G + 0.114 B).

EXIF orientation (phone photos of films) is applied, as every viewer shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.files import refuse_special
from cinelab.utils import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
UINT8_MAX = 255
UINT16_MAX = 65535
ROBUST_PERCENTILES = (0.5, 99.5)
SCALE16_MODES = ("robust", "full", "minmax")
GREY_MODES = ("L", "1")
DEEP_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
DROP_ALPHA = {"LA": "L", "RGBA": "RGB", "PA": "RGB", "La": "L", "RGBa": "RGB"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError,
                  Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageInfo:
    """What the file header says, without decoding the pixels."""

    width: int
    height: int
    mode: str
    format: str


def probe_image(path: str | Path) -> ImageInfo:
    """Size, Pillow mode and format from the header; 0-byte or non-image files raise."""
    path = _check_file(path)
    try:
        with Image.open(path) as im:
            return ImageInfo(int(im.width), int(im.height), str(im.mode), str(im.format))
    except _DECODE_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def read_image(path: str | Path, rgb: bool = False, scale16: str = "robust") -> np.ndarray:
    """Decode an image into uint8 (H, W) greyscale, or (H, W, 3) RGB with `rgb=True`.

    Raises UnreadableFileError for empty, truncated or non-image files.
    """
    path = _check_file(path)
    if scale16 not in SCALE16_MODES:
        raise InputError(path, "scale16", f"one of {SCALE16_MODES}", repr(scale16))
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            array = _to_uint8(im, scale16)
    except _DECODE_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return as_rgb(array) if rgb else as_grey(array)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8/uint16 (H, W) or uint8 (H, W, 3) RGB image atomically (format by suffix)."""
    path = Path(path)
    image = np.asarray(image)
    ok = (image.ndim == 2 and image.dtype in (np.uint8, np.uint16)) or \
        (image.ndim == 3 and image.shape[2] in (3, 4) and image.dtype == np.uint8)
    if not ok:
        raise InputError(path, "image", "uint8/uint16 (H,W) or uint8 (H,W,3|4)",
                         f"{image.dtype} array of shape {image.shape}")
    if image.ndim == 3:
        code = cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        image = cv2.cvtColor(image, code)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise InputError(path, "suffix", f"one of {IMAGE_SUFFIXES}", repr(path.suffix))
    return path


def as_grey(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) from (H, W), (H, W, 1) or (H, W, 3) RGB."""
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image.reshape(image.shape[:2])


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from greyscale (replicated) or RGB (unchanged)."""
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    return np.repeat(image.reshape(image.shape[:2])[..., None], 3, axis=-1)


def robust_range(values: np.ndarray,
                 percentiles: tuple[float, float] = ROBUST_PERCENTILES) -> tuple[float, float]:
    """Low and high percentiles of the values (min/max when they coincide)."""
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if hi <= lo:
        lo, hi = float(np.min(values)), float(np.max(values))
    return lo, hi


def scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255 (clipped); a flat range gives zeros."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float32) - lo) * (UINT8_MAX / (hi - lo))
    return np.rint(np.clip(scaled, 0, UINT8_MAX)).astype(np.uint8)


def scale_deep(values: np.ndarray, scale16: str = "robust") -> np.ndarray:
    """A 16-bit (or deeper) greyscale array as uint8 by one of SCALE16_MODES."""
    if scale16 == "full":
        return scale_to_uint8(values, 0.0, float(UINT16_MAX))
    if scale16 == "minmax":
        return scale_to_uint8(values, float(np.min(values)), float(np.max(values)))
    return scale_to_uint8(values, *robust_range(values))


def _to_uint8(im: Image.Image, scale16: str) -> np.ndarray:
    """A decoded Pillow image as uint8 (H, W) or (H, W, 3)."""
    mode = im.mode
    if mode in DEEP_GREY_MODES:
        return scale_deep(np.asarray(im), scale16)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in DROP_ALPHA:
        im = im.convert(mode.upper()) if mode in ("La", "RGBa") else im
        bands = im.split()
        im = bands[0] if DROP_ALPHA[mode] == "L" else Image.merge("RGB", bands[:3])
    elif mode not in GREY_MODES + ("RGB",):
        im = im.convert("RGB")
    if im.mode == "1":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8).copy()


def _check_file(path: str | Path) -> Path:
    path = refuse_special(path)
    if not path.is_file():
        raise InputError(path, "path", "an existing image file", "nothing at that path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "file", "an image file", "an empty file (0 bytes)")
    return path


def _unreadable(path: Path, exc: BaseException) -> UnreadableFileError:
    return UnreadableFileError(path, "file", "a decodable image (PNG, JPEG, BMP, TIFF)",
                               f"{type(exc).__name__}: {exc}",
                               fix="re-export the image; truncated files cannot be recovered")
