"""Cine MRI preparation: one cardiac cycle resampled to 25 frames, cropped, resized, uint8.

Temporal resampling (`resample_cycle`). The N acquired frames are taken as one cardiac cycle
starting at the first frame's TriggerTime t0 (the R wave). The cycle length is the acquired
span plus one frame interval, RR = (t_last - t0) + median(diff(t)) (so frames are treated as
evenly covering the cycle; NominalInterval is only recorded). Output frame k (k = 0..24) sits
at time t0 + k RR / 25 and is the linear interpolation, in time, between the two acquired
frames around it; after the last frame the cycle wraps, interpolating between the last frame
and the first frame repeated at t0 + RR. Without trigger times (or with repeated ones) the
frames are spaced evenly in acquisition order (TriggerTime = index).

Spatial crop (`PrepSpec.crop`): "auto"/"heart" centres a square box on the moving heart
(`heart_box`: the centroid of the temporal standard deviation of the cine, smoothed, above
its 90th percentile) with a side of HEART_BOX_MM (clamped to the image; HEART_BOX_FRACTION
of the shorter side when PixelSpacing is absent); "centre" takes the largest centred square;
"never" keeps the whole image (resized to a square). The crop is resized to `size` with area
averaging (shrinking) or bilinear interpolation (enlarging). Intensities are scaled so that
the crop's 99.5th percentile becomes 255 (MR values have no absolute scale).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from cinelab.data.store import channel_stats, write_sample
from cinelab.errors import InputError, Problem
from cinelab.io.dicom_series import read_mr_image
from cinelab.io.table import read_table
from cinelab.prep.geometry import square_box
from cinelab.prep.prepare import PrepSpec

TARGET_FRAMES = 25
HEART_BOX_MM = 150.0
HEART_BOX_FRACTION = 0.75
MOTION_PERCENTILE = 90.0
MOTION_SMOOTH_FRACTION = 0.03  # Gaussian sigma of the motion map, of the shorter side
INTENSITY_PERCENTILE = 99.5
CROPS = ("auto", "heart", "centre", "center", "never", "none")
STAGE = "prepare"
MS_PER_S = 1000.0

Box = tuple[int, int, int, int]


def cycle_times(times: np.ndarray | None, n: int) -> tuple[np.ndarray, float, str]:
    """(times from t0, cycle length, source) for n frames; evenly spaced without usable times."""
    t = None if times is None else np.asarray(times, dtype=float)
    usable = t is not None and len(t) == n and np.isfinite(t).all() and (
        n == 1 or bool(np.all(np.diff(t) > 0)))
    if not usable:
        return np.arange(n, dtype=float), float(n), "index"
    t = t - t[0]
    step = float(np.median(np.diff(t))) if n > 1 else 1.0
    return t, float(t[-1] + step), "TriggerTime"


def resample_cycle(frames: np.ndarray, times: np.ndarray | None = None,
                   n_out: int = TARGET_FRAMES) -> np.ndarray:
    """(N, ...) frames of one cycle -> (n_out, ...) float32 (see the module docstring)."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim < 2 or len(frames) < 1 or n_out < 1:
        raise InputError(None, "frames", "a cine (T, H, W) with T >= 1", f"shape {frames.shape}")
    t, rr, _ = cycle_times(times, len(frames))
    ext_t = np.append(t, rr)
    ext = np.concatenate([frames, frames[:1]])
    target = np.arange(n_out) * rr / n_out
    i = np.clip(np.searchsorted(ext_t, target, side="right") - 1, 0, len(frames) - 1)
    w = ((target - ext_t[i]) / (ext_t[i + 1] - ext_t[i])).astype(np.float32)
    w = w.reshape((-1,) + (1,) * (frames.ndim - 1))
    return (1 - w) * ext[i] + w * ext[i + 1]


def heart_box(frames: np.ndarray, side: int) -> Box:
    """A square box of `side` px centred on the moving heart (see the module docstring)."""
    motion = np.asarray(frames, dtype=np.float32).std(axis=0)
    sigma = max(1.0, MOTION_SMOOTH_FRACTION * min(motion.shape))
    motion = cv2.GaussianBlur(motion, (0, 0), sigma)
    weights = np.maximum(motion - np.percentile(motion, MOTION_PERCENTILE), 0.0)
    if weights.sum() <= 0:
        return centre_box(motion.shape, side)
    yy, xx = np.mgrid[:motion.shape[0], :motion.shape[1]]
    cy, cx = float((yy * weights).sum() / weights.sum()), float((xx * weights).sum() /
                                                                 weights.sum())
    half = side / 2.0
    box = (int(round(cy - half)), int(round(cx - half)),
           int(round(cy - half)) + side, int(round(cx - half)) + side)
    return square_box(box, motion.shape, margin=0.0)


def centre_box(shape: tuple[int, ...], side: int | None = None) -> Box:
    """The centred square of `side` px (the largest one by default)."""
    height, width = shape[:2]
    side = min(height, width) if side is None else min(side, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return top, left, top + side, left + side


def crop_side(shape: tuple[int, ...], spacing_mm: tuple[float, float] | None) -> int:
    """Heart box side in pixels: HEART_BOX_MM, or a fraction of the image without spacing."""
    short = min(shape[:2])
    if spacing_mm is None:
        return max(1, int(round(HEART_BOX_FRACTION * short)))
    return max(1, min(short, int(round(HEART_BOX_MM / min(spacing_mm)))))


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, h, w) -> (T, size, size): area averaging when shrinking, bilinear otherwise."""
    shrink = min(frames.shape[1:3]) > size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Scale so the INTENSITY_PERCENTILE becomes 255; clip to 0..255."""
    top = float(np.percentile(frames, INTENSITY_PERCENTILE))
    scale = 255.0 / top if top > 0 else 1.0
    return np.clip(np.rint(frames * scale), 0, 255).astype(np.uint8)


def preprocess_cine(frames: np.ndarray, times: np.ndarray | None, size: int, crop: str = "auto",
                    channels: int = 1, spacing_mm: tuple[float, float] | None = None,
                    n_out: int = TARGET_FRAMES) -> tuple[np.ndarray, dict[str, Any]]:
    """(N, H, W) float cine -> uint8 (n_out, size, size, channels) and how it was made."""
    if crop not in CROPS:
        raise InputError(None, "crop", f"one of {CROPS}", repr(crop))
    if channels not in (1, 3):
        raise InputError(None, "channels", "1 or 3", repr(channels))
    cine = resample_cycle(frames, times, n_out)
    if crop in ("auto", "heart"):
        box = heart_box(cine, crop_side(cine.shape[1:], spacing_mm))
    elif crop in ("centre", "center"):
        box = centre_box(cine.shape[1:])
    else:
        box = (0, 0, cine.shape[1], cine.shape[2])
    y0, x0, y1, x1 = box
    out = to_uint8(resize_frames(np.ascontiguousarray(cine[:, y0:y1, x0:x1]), size))
    out = np.repeat(out[..., None], channels, axis=-1)
    scale = (size / (y1 - y0), size / (x1 - x0))
    return out, {"box": list(box), "scale": list(scale)}


def read_series_list(path: str | Path) -> pd.DataFrame:
    """The series list written by the long-axis ingest (file, instance, trigger_time)."""
    table = read_table(path)
    if "file" not in table.columns or table.empty:
        raise InputError(path, "file", "a series list with a `file` column and >= 1 row",
                         f"columns {list(table.columns)}, {len(table)} row(s)")
    return table


def load_cine(path: str | Path) -> dict[str, Any]:
    """Pixels (N, H, W) float32, trigger times (ms), spacing and RR of a series list."""
    images = [read_mr_image(f) for f in read_series_list(path)["file"]]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise InputError(path, "Rows/Columns", "one image size in the series",
                         f"sizes {sorted(shapes)}")
    times = [im.trigger_time for im in images]
    return {"frames": np.stack([im.pixels for im in images]),
            "times": None if any(t is None for t in times) else np.asarray(times, float),
            "spacing": images[0].pixel_spacing, "n_frames": len(images)}


def prepare_cine_sample(task: dict[str, Any]) -> dict[str, Any]:
    """Prepare one cine series (a store preparer); failures come back as a problem."""
    row, root, spec = task["row"], Path(task["root"]), PrepSpec(**task["spec"])
    path = Path(str(row["path"]))
    try:
        src = load_cine(path)
        frames, transform = preprocess_cine(src["frames"], src["times"], spec.size, spec.crop,
                                            spec.channels, src["spacing"])
        _, rr, time_source = cycle_times(src["times"], src["n_frames"])
        spacing = src["spacing"]
        meta = {"source": str(path), "source_hash": task["hash"], "spec": spec.to_dict(),
                "fps": TARGET_FRAMES / (rr / MS_PER_S) if time_source == "TriggerTime"
                else float(TARGET_FRAMES), "fps_source": time_source,
                "cycle_ms": rr if time_source == "TriggerTime" else None,
                "original_frames": src["n_frames"], "original_shape": list(src["frames"].shape),
                "pixel_spacing_mm": None if spacing is None else
                [s / f for s, f in zip(spacing, transform["scale"], strict=True)],
                "transform": transform, "stats": channel_stats(frames)}
        meta = write_sample(root, str(row["sample_id"]), frames, meta)
        return {"sample_id": row["sample_id"], "meta": meta}
    except Exception as exc:  # one bad series is reported and skipped
        return {"sample_id": row["sample_id"],
                "problem": asdict(Problem.from_exception(path, STAGE, exc))}
