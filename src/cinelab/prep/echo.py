"""Echo preprocessing: find the scan sector, crop, blank outside it, pad square, resize.

`preprocess_echo` returns the prepared frames and a transform dict; `map_points` and
`map_mask` carry tracings and label masks drawn on the original frames into the output grid.
Coordinates follow pixel centres: output = (input - crop_origin + pad + 0.5) * scale - 0.5.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from skimage.measure import label
from skimage.morphology import convex_hull_image, disk

from cinelab.errors import InputError

MOTION_STD = 0.5  # grey levels: a pixel whose std over time exceeds this is "moving"
NON_BLACK = 10  # grey level above which a pixel counts as lit (static images)
MIN_SECTOR_FRACTION = 0.02  # below this share of the frame, the motion mask is not trusted
OPENING_FRACTION = 0.01  # opening radius as a share of the shorter side (removes text, ECG)
MAX_MASK_FRAMES = 64  # frames sampled (evenly) to estimate the sector
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 RGB -> grey


def sector_mask(frames: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of the scan sector: the moving (or, for stills, lit) area's
    largest connected component, opened to drop text and traces, filled by its convex hull.
    An image where nothing qualifies gets an all-True mask."""
    grey = _grey_float(_as_thwc(frames))
    candidate = _candidate(grey)
    radius = max(1, round(min(grey.shape[1:]) * OPENING_FRACTION))
    opened = cv2.morphologyEx(candidate.astype(np.uint8), cv2.MORPH_OPEN,
                              disk(radius).astype(np.uint8)).astype(bool)
    labels = label(opened)
    if labels.max() == 0:
        return np.ones(grey.shape[1:], dtype=bool)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return convex_hull_image(labels == largest)


def preprocess_echo(
    frames: np.ndarray,
    region: tuple[int, int, int, int] | None = None,
    size: int = 112,
    channels: int = 3,
    blank: bool = True,
    crop: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Crop to the imaging region, blank outside the sector, pad square, resize to `size`.

    `region` is (y0, x0, y1, x1) half-open (e.g. UltrasoundVideo.region); without it the
    sector mask's bounding box is used. `crop=False` is for inputs already cropped (EchoNet
    AVIs): no crop, no blanking, only pad/resize (identity when already size x size).
    Returns uint8 (T, size, size, channels) and the transform for map_points/map_mask.
    """
    frames = _as_thwc(frames)
    if channels not in (1, 3):
        raise InputError(None, "channels", "1 (grey) or 3 (RGB)", repr(channels))
    if size < 1:
        raise InputError(None, "size", "a positive output size", repr(size))
    height, width = frames.shape[1:3]
    box = (0, 0, height, width)
    if crop:
        mask = sector_mask(frames)
        box = _check_region(region, height, width) if region is not None else _bbox(mask)
        if blank:
            frames = frames * mask[None, :, :, None].astype(np.uint8)
    transform = _transform(box, size)
    out = np.stack([_place(f, transform) for f in frames])
    return _to_channels(out.reshape(out.shape[:3] + (-1,)), channels), transform


def map_points(
    transform: dict[str, Any], xs: np.ndarray, ys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Map original pixel coordinates (x, y) into the output grid of `preprocess_echo`."""
    y0, x0 = transform["crop"][:2]
    top, left = transform["pad"]
    scale = float(transform["scale"])
    xs2 = (np.asarray(xs, dtype=float) - x0 + left + 0.5) * scale - 0.5
    ys2 = (np.asarray(ys, dtype=float) - y0 + top + 0.5) * scale - 0.5
    return xs2, ys2


def map_mask(transform: dict[str, Any], mask: np.ndarray) -> np.ndarray:
    """Map a label mask (H, W) drawn on the original frames to the output grid (nearest)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(None, "mask", "a 2D label mask (H, W)", f"shape {mask.shape}")
    y0, x0, y1, x1 = transform["crop"]
    top, left = transform["pad"]
    cropped = mask[y0:y1, x0:x1]
    side = max(cropped.shape)
    square = np.zeros((side, side), dtype=mask.dtype)
    square[top:top + cropped.shape[0], left:left + cropped.shape[1]] = cropped
    src = (np.arange(int(transform["out_size"])) + 0.5) / float(transform["scale"])
    idx = np.clip(np.floor(src).astype(int), 0, side - 1)
    return square[np.ix_(idx, idx)]


def _as_thwc(frames: np.ndarray) -> np.ndarray:
    """Frames as uint8 (T, H, W, C); (T, H, W) gains a channel axis."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise InputError(None, "frames", "uint8 array (T, H, W) or (T, H, W, 1|3)",
                         f"{frames.dtype} array of shape {frames.shape}")
    return frames


def _grey_float(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) float32 grey from up to MAX_MASK_FRAMES evenly spaced frames."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_MASK_FRAMES)).astype(int))
    return frames[idx].astype(np.float32).mean(axis=-1)


def _candidate(grey: np.ndarray) -> np.ndarray:
    """Moving pixels when there is enough motion, else lit pixels."""
    if grey.shape[0] > 1:
        moving = grey.std(axis=0) > MOTION_STD
        if moving.mean() >= MIN_SECTOR_FRACTION:
            return moving
    return grey.max(axis=0) > NON_BLACK


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Half-open bounding box (y0, x0, y1, x1) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def _check_region(
    region: tuple[int, int, int, int], height: int, width: int,
) -> tuple[int, int, int, int]:
    """A region clipped to the frame; an empty one raises InputError."""
    y0, x0, y1, x1 = (int(v) for v in region)
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
    if y1 <= y0 or x1 <= x0:
        raise InputError(None, "region", f"(y0, x0, y1, x1) inside the {height}x{width} frame",
                         repr(tuple(region)))
    return y0, x0, y1, x1


def _transform(box: tuple[int, int, int, int], size: int) -> dict[str, Any]:
    """Crop box, centring pad to a square, and the square-to-output scale."""
    y0, x0, y1, x1 = box
    h, w = y1 - y0, x1 - x0
    side = max(h, w)
    return {"crop": [y0, x0, y1, x1], "pad": [(side - h) // 2, (side - w) // 2],
            "scale": size / side, "out_size": size}


def _place(image: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    """Crop, zero-pad to a square, resize (area) one image (H, W[, C]) to out_size."""
    y0, x0, y1, x1 = transform["crop"]
    top, left = transform["pad"]
    size = int(transform["out_size"])
    cropped = image[y0:y1, x0:x1]
    side = max(cropped.shape[:2])
    square = np.zeros((side, side) + cropped.shape[2:], dtype=cropped.dtype)
    square[top:top + cropped.shape[0], left:left + cropped.shape[1]] = cropped
    if side == size:
        return square
    resized = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return resized.reshape((size, size) + cropped.shape[2:])


def _to_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """(T, S, S, C) uint8 to 1 (BT.601 grey) or 3 (RGB) channels."""
    have = frames.shape[-1]
    if have == channels:
        return frames
    if channels == 3:
        return np.repeat(frames, 3, axis=-1)
    grey = frames.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    return np.rint(grey).clip(0, 255).astype(np.uint8)[..., None]
