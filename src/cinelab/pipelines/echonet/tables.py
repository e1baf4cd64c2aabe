"""Per-video table rows of an EchoNet prediction: beats (with EDV/ESV), frames and clips.

The columns of predictions.csv, beats.csv, clips.csv and frames.csv, the beat rows built
from a video's beat clips (ED/ES frames, LV areas, EF, flag, used and, where pixel spacing
is known, EDV/ESV in mL by the method of discs on the predicted LV masks) and the per-frame
area rows. `video` fills them for one video, `predict` writes them for a whole input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from cinelab.measure.ef import disc_volume
from cinelab.pipelines.echonet.beats import BeatClip, beats_from_extrema

__all__ = ["BEAT_COLUMNS", "CLIP_COLUMNS", "FRAME_COLUMNS", "N_DISCS", "PREDICTION_COLUMNS",
           "beat_rows", "frame_rows", "mask_disc_volume", "typed_beats", "video_volumes"]

PREDICTION_COLUMNS = ["sample_id", "ef", "ef_all_clips", "ef_one_clip", "n_beats",
                      "n_beats_clipped", "n_beats_past_end", "fallback", "edv", "esv",
                      "n_frames", "fps", "ef_fps"]
BEAT_COLUMNS = ["sample_id", "beat", "ed_frame", "es_frame", "ed_area", "es_area", "ef",
                "clip_start", "flag", "used", "edv", "esv"]
CLIP_COLUMNS = ["sample_id", "clip_start", "ef"]
N_DISCS = 20  # method of discs (Simpson), as the EchoNet tracings
FRAME_COLUMNS = ["sample_id", "frame", "lv_area", "is_ed", "is_es"]


def beat_rows(clips: list[BeatClip], ef_by_start: dict[int, float], area: np.ndarray,
              ed: np.ndarray, es: np.ndarray, masks: np.ndarray | None = None,
              spacing: tuple[float, float] | None = None) -> list[dict[str, Any]]:
    """One row per beat clip: its ED (the last one before its ES, if any), areas, EF (NaN
    when not averaged), flag, used and (with masks and spacing) EDV/ESV in mL."""
    ed_of = {b.es: b.ed for b in beats_from_extrema(ed, es)}
    rows = []
    for i, clip in enumerate(clips):
        ed_frame = ed_of.get(clip.es)
        used = clip.used and clip.start >= 0 and clip.start in ef_by_start
        rows.append({"beat": i, "ed_frame": ed_frame, "es_frame": clip.es,
                     "ed_area": None if ed_frame is None else int(area[ed_frame]),
                     "es_area": int(area[clip.es]),
                     "ef": ef_by_start[clip.start] if used else math.nan,
                     "clip_start": clip.start if clip.start >= 0 else None,
                     "flag": clip.flag, "used": int(clip.used),
                     "edv": _mask_volume(masks, spacing, ed_frame),
                     "esv": _mask_volume(masks, spacing, clip.es)})
    return rows


def _mask_volume(masks: np.ndarray | None, spacing: tuple[float, float] | None,
                 frame: int | None) -> float:
    """Method-of-discs volume (mL) of the predicted LV mask at `frame`; NaN without spacing."""
    if frame is None or masks is None or spacing is None:
        return math.nan
    return mask_disc_volume(masks[frame] > 0, spacing)


def mask_disc_volume(mask: np.ndarray, spacing: tuple[float, float],
                     n_discs: int = N_DISCS) -> float:
    """LV volume in mL of a 2-D cavity mask by the method of discs (`measure.ef.disc_volume`).

    The long axis is the mask's principal axis (in mm, so anisotropic pixels are handled);
    `n_discs` chords perpendicular to it at equal steps give the disc diameters, each the
    width of the mask's one-pixel slab at that level plus one pixel. NaN for an empty mask.
    """
    ys, xs = np.nonzero(np.asarray(mask, dtype=bool))
    if len(ys) < 2:
        return math.nan
    dy, dx = (float(v) for v in spacing)
    pts = np.stack([ys * dy, xs * dx], axis=1)
    centre = pts.mean(0)
    _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
    axis, across = vt[0], np.array([-vt[0][1], vt[0][0]])
    t, u = (pts - centre) @ axis, (pts - centre) @ across
    pixel = float(np.hypot(dy * axis[0], dx * axis[1]))  # one pixel along the axis, mm
    pixel_across = float(np.hypot(dy * across[0], dx * across[1]))
    lo, hi = t.min() - pixel / 2, t.max() + pixel / 2
    step = (hi - lo) / n_discs
    lines = [[*(centre + lo * axis)[::-1], *(centre + hi * axis)[::-1]]]
    for i in range(n_discs):
        level = lo + (i + 0.5) * step
        band = np.abs(t - level) <= pixel / 2  # the one-pixel slab at this level
        width = (u[band].max() - u[band].min() + pixel_across) if band.any() else 0.0
        mid = centre + level * axis
        p, q = mid - width / 2 * across, mid + width / 2 * across
        lines.append([p[1], p[0], q[1], q[0]])
    return disc_volume(np.asarray(lines, dtype=float)) / 1000.0


def video_volumes(beats: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean EDV and ESV (mL) over the beats that have them (NaN when none)."""
    def mean_of(key: str) -> float:
        vals = [b.get(key) for b in beats]
        vals = [float(v) for v in vals if v is not None and np.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan
    return mean_of("edv"), mean_of("esv")


def frame_rows(sample_id: str, area: Any, ed: Any, es: Any) -> pd.DataFrame:
    """FRAME_COLUMNS rows, one per frame: LV area (NaN where not segmented, else integer)
    and is_ed/is_es 0/1."""
    area = np.asarray(area, dtype=np.float64)  # None (not segmented) -> NaN
    area = area.astype(np.int64) if np.isfinite(area).all() else area
    index = np.arange(len(area))
    return pd.DataFrame({"sample_id": sample_id, "frame": index, "lv_area": area,
                         "is_ed": np.isin(index, ed).astype(int),
                         "is_es": np.isin(index, es).astype(int)})


def typed_beats(table: pd.DataFrame) -> pd.DataFrame:
    """Integer columns that may be missing (ED before the first ES, no clip) as Int64."""
    for col in ("beat", "ed_frame", "es_frame", "ed_area", "es_area", "clip_start", "used"):
        table[col] = pd.array(table[col], dtype="Int64")
    return table

