"""Masks and heatmaps drawn on frames and videos; frame strips as images.

Frames are uint8 RGB (T, H, W, 3) or greyscale (T, H, W) / (T, H, W, 1); every output is
uint8 RGB (T, H, W, 3). OpenCV's BGR order is handled here, never by callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from cinelab.io.video import write_video
from cinelab.utils import atomic_path

DEFAULT_MASK_COLOR = (255, 0, 0)
DEFAULT_HEAT_ALPHA = 0.5
DEFAULT_COLORMAP = cv2.COLORMAP_JET
UINT8_MAX = 255


def outline(mask: np.ndarray) -> np.ndarray:
    """Contour pixels (H, W) bool: mask pixels with a 4-neighbour outside the mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected (H, W), found shape {mask.shape}")
    return find_boundaries(mask.astype(bool), connectivity=1, mode="inner")


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """A uint8 RGB copy (T, H, W, 3) of RGB or greyscale frames."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (
            frames.ndim == 4 and frames.shape[-1] not in (1, 3)):
        raise ValueError(f"frames: expected uint8 (T, H, W), (T, H, W, 1) or (T, H, W, 3), "
                         f"found {frames.dtype} {frames.shape}")
    if frames.ndim == 3:
        frames = frames[..., None]
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames.copy()


def overlay_masks(
    frames: np.ndarray,
    masks: np.ndarray,
    color: Sequence[int] = DEFAULT_MASK_COLOR,
    alpha: float = 0.0,
) -> np.ndarray:
    """Frames (T, H, W, 3) RGB with each mask's outline in `color`.

    `alpha` > 0 also tints the inside of the mask: (1 - alpha) * frame + alpha * color.
    """
    out = to_rgb(frames)
    masks = np.asarray(masks).astype(bool)
    if masks.shape != out.shape[:3]:
        raise ValueError(f"masks: expected shape {out.shape[:3]} (one per frame), found "
                         f"{masks.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected 0 <= alpha <= 1, found {alpha}")
    rgb = np.asarray(color, dtype=np.float64).reshape(3)
    if alpha > 0:
        tinted = (1.0 - alpha) * out[masks] + alpha * rgb
        out[masks] = np.clip(np.rint(tinted), 0, UINT8_MAX).astype(np.uint8)
    for t in range(len(out)):
        out[t][outline(masks[t])] = rgb.astype(np.uint8)
    return out


def overlay_heatmap(
    frames: np.ndarray,
    heat: np.ndarray,
    alpha: float = DEFAULT_HEAT_ALPHA,
    colormap: int = DEFAULT_COLORMAP,
) -> np.ndarray:
    """Frames (T, H, W, 3) RGB blended with a colour-mapped heatmap (T, h, w).

    The heat is min-max scaled over the whole clip (so frames stay comparable; NaN counts
    as the minimum) and resized to the frame size when it differs.
    """
    out = to_rgb(frames)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 3 or len(heat) != len(out):
        raise ValueError(f"heat: expected (T={len(out)}, h, w), found shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected 0 <= alpha <= 1, found {alpha}")
    scaled = _to_uint8(heat)
    height, width = out.shape[1:3]
    if scaled.shape[1:] != (height, width):
        scaled = np.stack([cv2.resize(h, (width, height), interpolation=cv2.INTER_LINEAR)
                           for h in scaled])
    coloured = cv2.applyColorMap(scaled.reshape(-1, width), colormap)
    coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB).reshape(out.shape)
    blended = (1.0 - alpha) * out + alpha * coloured.astype(np.float64)
    return np.clip(np.rint(blended), 0, UINT8_MAX).astype(np.uint8)


def write_overlay_video(
    path: str | Path,
    frames: np.ndarray,
    masks: np.ndarray,
    fps: float,
    color: Sequence[int] = DEFAULT_MASK_COLOR,
    alpha: float = 0.0,
) -> Path:
    """Write frames with mask outlines as a video (codec by suffix); returns the path."""
    return write_video(path, overlay_masks(frames, masks, color, alpha), fps)


def frame_strip(
    frames: np.ndarray,
    indices: Sequence[int],
    path: str | Path | None = None,
) -> np.ndarray:
    """Frames at `indices` side by side (H, W * k, 3) RGB; also written as an image if `path`."""
    rgb = to_rgb(frames)
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not -len(rgb) <= i < len(rgb)]
    if not indices or bad:
        n = len(rgb)
        raise ValueError(f"indices: expected at least one frame index in [-{n}, {n}), "
                         f"found {bad or 'none'}")
    strip = np.concatenate([rgb[i] for i in indices], axis=1)
    if path is not None:
        _write_image(path, strip)
    return strip


def _write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB image atomically (format by suffix, e.g. .png)."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: OpenCV cannot write an image with suffix "
                          f"{Path(path).suffix!r} (use .png or .jpg)")


def _to_uint8(heat: np.ndarray) -> np.ndarray:
    """Min-max scale to 0..255 over the whole array; a constant map becomes 0."""
    finite = np.isfinite(heat)
    if not finite.any():
        return np.zeros(heat.shape, dtype=np.uint8)
    low, high = float(heat[finite].min()), float(heat[finite].max())
    filled = np.where(finite, heat, low)
    scale = (filled - low) / (high - low) if high > low else np.zeros_like(filled)
    return np.rint(scale * UINT8_MAX).astype(np.uint8)
