"""Beat-by-beat analysis: ED/ES detection on an LV area curve and one clip per beat.

ED frames are local maxima of the left-ventricular area, ES frames local minima, found with
scipy.signal.find_peaks. A peak must rise by `prominence` times the robust range
(95th minus 5th percentile) of the curve, so the threshold does not depend on the video
length (EchoNet-Dynamic's ``sorted(size)[round(len(size) ** 0.05)]`` picks an element near
the minimum, not the 5th percentile). Peaks need only a minimum
spacing, never a constant RR interval, so irregular rhythms are handled.

The first and last extremum of a curve may be missed: near the ends of the video the rise
on one side cannot be confirmed.

Clip placement follows EchoNet-Dynamic's official beat-by-beat analysis exactly
(scripts/beat_by_beat_analysis.R on segmentation.py's size.csv and video.py's all-clips
test_predictions.csv): the clip of a beat starts `frames * period // 2` frames before its
end-systolic frame (``Frame - 32`` for the 32-frame, period-2 model, so the clip is centred
on ES), a negative start becomes 0 (flag ``clipped_start``, still averaged, once per beat),
and a beat whose start is past the last all-clips start has no clip (the R script's inner
merge drops it: flag ``past_end``, not averaged). Video EF is the mean over the averaged
beats. `place_beat_clips` returns one `BeatClip` per ES frame with that flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks, savgol_filter

from cinelab.data.sampling import clip_span

ROBUST_LOW_PERCENTILE = 5.0
ROBUST_HIGH_PERCENTILE = 95.0
DEFAULT_PROMINENCE = 0.5
DEFAULT_MIN_DISTANCE_S = 0.25
DEFAULT_MIN_DISTANCE_FRAMES = 5  # used when the frame rate is unknown
SAVGOL_POLYORDER = 2
DEFAULT_MAX_BEATS: int | None = None  # every beat, as EchoNet-Dynamic

FLAG_CLIPPED_START = "clipped_start"  # ES too early: the clip starts at frame 0 (averaged)
FLAG_PAST_END = "past_end"  # ES too late: no full clip there (not averaged)

FALLBACK_NONE = ""
FALLBACK_NO_BEATS = "no_beats"
FALLBACK_SHORT_VIDEO = "short_video"
FALLBACK_CLIPPED_START = "clipped_start"  # kept for old callers; no longer a video fallback
FALLBACK_BEATS_PAST_END = "beats_past_end"  # every beat's clip lies past the video's end


@dataclass(frozen=True)
class Beat:
    """One cardiac cycle: its end-diastolic and following end-systolic frame."""

    ed: int
    es: int


def detect_ed_es(
    area: np.ndarray,
    fps: float | None = None,
    prominence: float = DEFAULT_PROMINENCE,
    min_distance_s: float = DEFAULT_MIN_DISTANCE_S,
    smooth: int | None = None,
    min_distance_frames: int = DEFAULT_MIN_DISTANCE_FRAMES,
) -> tuple[np.ndarray, np.ndarray]:
    """ED (area maxima) and ES (area minima) frame indices of an LV area curve.

    `prominence` is a fraction of the robust range (p95 - p5) of the curve. Peaks are at
    least `min_distance_s` seconds apart when `fps` is given, else `min_distance_frames`
    frames. `smooth` (odd window, frames) applies a Savitzky-Golay filter first.
    A constant curve has no beats.
    """
    curve = _check_area(area)
    empty = np.zeros(0, dtype=np.int64)
    if prominence <= 0:
        raise ValueError(f"prominence: expected a fraction > 0, found {prominence}")
    if len(curve) < 3:
        return empty, empty
    if smooth:
        curve = smooth_curve(curve, smooth)
    low, high = np.percentile(curve, [ROBUST_LOW_PERCENTILE, ROBUST_HIGH_PERCENTILE])
    robust_range = float(high - low)
    if not robust_range > 0:
        return empty, empty
    distance = _min_distance(fps, min_distance_s, min_distance_frames)
    threshold = prominence * robust_range
    ed, _ = find_peaks(curve, prominence=threshold, distance=distance)
    es, _ = find_peaks(-curve, prominence=threshold, distance=distance)
    return ed.astype(np.int64), es.astype(np.int64)


def smooth_curve(curve: np.ndarray, window: int) -> np.ndarray:
    """Savitzky-Golay smoothing (window shrunk to the curve length, kept odd)."""
    if int(window) != window or window < 1:
        raise ValueError(f"smooth: expected an odd window >= 3 frames or None, found {window}")
    window = min(int(window), len(curve))
    window -= 1 - window % 2  # largest odd value not above it
    if window <= SAVGOL_POLYORDER:
        return np.asarray(curve, dtype=np.float64)
    return savgol_filter(curve, window, SAVGOL_POLYORDER, mode="interp")


def beats_from_extrema(ed: np.ndarray, es: np.ndarray) -> list[Beat]:
    """Pair each ES with the preceding ED; an ES without an ED since the last ES is dropped."""
    ed = np.sort(np.asarray(ed, dtype=np.int64))
    es = np.sort(np.asarray(es, dtype=np.int64))
    beats = []
    previous_es = -1
    for s in es:
        candidates = ed[(ed < s) & (ed > previous_es)]
        if len(candidates):
            beats.append(Beat(int(candidates[-1]), int(s)))
        previous_es = s
    return beats


def area_ef(area: np.ndarray, beat: Beat) -> float:
    """Fractional area change (A_ed - A_es) / A_ed * 100 of one beat (a diagnostic only).

    Beat EF comes from the model's prediction on the beat's clip, not from areas.
    """
    curve = _check_area(area)
    a_ed, a_es = float(curve[beat.ed]), float(curve[beat.es])
    if not a_ed > 0:
        raise ValueError(f"area[{beat.ed}]: expected an ED area > 0, found {a_ed}")
    return (a_ed - a_es) / a_ed * 100.0


@dataclass(frozen=True)
class BeatClip:
    """The clip of one beat: its ES frame, clip start and flag ("" / clipped_start /
    past_end); `used` says whether it is averaged into the video's beat-by-beat EF."""

    es: int
    start: int
    flag: str = ""

    @property
    def used(self) -> bool:
        return self.flag != FLAG_PAST_END


def beat_clip_offset(frames: int, period: int) -> int:
    """Frames from a clip's start to its ES frame: frames * period // 2 (EchoNet: 32)."""
    clip_span(frames, period)  # checks frames, period
    return int(frames) * int(period) // 2


def place_beat_clips(
    es_frames: np.ndarray,
    n_total: int,
    frames: int,
    period: int,
    max_beats: int | None = DEFAULT_MAX_BEATS,
) -> list[BeatClip]:
    """One `BeatClip` per ES frame, placed as EchoNet-Dynamic's beat_by_beat_analysis.R.

    start = ES - frames * period // 2, a negative start becomes 0 (``clipped_start``); a
    start past the last all-clips start (n_total - span) gets ``past_end`` (not averaged).
    With `max_beats`, that many ES frames are chosen evenly across the video first.
    """
    if max_beats is not None and (isinstance(max_beats, bool) or int(max_beats) < 1):
        raise ValueError(f"max_beats: expected an integer >= 1 or None, found {max_beats}")
    offset = beat_clip_offset(frames, period)
    es_frames = np.sort(np.asarray(es_frames, dtype=np.int64).reshape(-1))
    if max_beats is not None and len(es_frames) > max_beats:
        chosen = np.round(np.linspace(0, len(es_frames) - 1, int(max_beats))).astype(np.int64)
        es_frames = es_frames[chosen]
    last_start = max(0, int(n_total) - clip_span(frames, period))
    clips = []
    for e in es_frames.tolist():
        start = e - offset
        if start < 0:
            clips.append(BeatClip(int(e), 0, FLAG_CLIPPED_START))
        elif start > last_start:
            clips.append(BeatClip(int(e), start, FLAG_PAST_END))
        else:
            clips.append(BeatClip(int(e), start))
    return clips


def beat_fallback(clips: list[BeatClip], n_total: int, frames: int, period: int) -> str:
    """Why beat-by-beat EF is not available ("" when at least one beat is averaged)."""
    if n_total < clip_span(frames, period):
        return FALLBACK_SHORT_VIDEO
    if not clips:
        return FALLBACK_NO_BEATS
    if not any(c.used for c in clips):
        return FALLBACK_BEATS_PAST_END
    return FALLBACK_NONE


def select_beat_clips(
    es_frames: np.ndarray,
    n_total: int,
    frames: int,
    period: int,
    max_beats: int | None = DEFAULT_MAX_BEATS,
) -> tuple[list[int], str]:
    """Distinct starts of the averaged beat clips (`place_beat_clips`) and the fallback
    (`beat_fallback`): ``""``, ``"no_beats"``, ``"beats_past_end"`` or ``"short_video"``
    (then ``[0]``: one padded clip from 0)."""
    clips = place_beat_clips(es_frames, n_total, frames, period, max_beats)
    reason = beat_fallback(clips, n_total, frames, period)
    if reason == FALLBACK_SHORT_VIDEO:
        return [0], reason
    return sorted({c.start for c in clips if c.used}), reason


def _check_area(area: np.ndarray) -> np.ndarray:
    """A finite 1-D float curve."""
    curve = np.asarray(area, dtype=np.float64)
    if curve.ndim != 1 or not np.all(np.isfinite(curve)):
        raise ValueError(f"area: expected a finite 1-D curve (one value per frame), found "
                         f"shape {curve.shape}" + ("" if curve.ndim != 1 else " with NaN/inf"))
    return curve


def _min_distance(fps: float | None, min_distance_s: float, min_distance_frames: int) -> int:
    """Minimum peak spacing in frames (at least 1)."""
    if fps is None:
        return max(1, int(min_distance_frames))
    if not fps > 0:
        raise ValueError(f"fps: expected a frame rate > 0 or None, found {fps}")
    return max(1, int(round(min_distance_s * fps)))
