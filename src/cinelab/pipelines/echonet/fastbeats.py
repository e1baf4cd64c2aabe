"""Coarse-to-fine beat detection: segment every k-th frame, then refine around ED/ES.

Segmenting every frame with deeplabv3 dominates a beat-by-beat study on CPU. With
``seg_stride`` k > 1:

1. the frames 0, k, 2k, ... and the last one are segmented, plus the first and last k + 1
   frames (an extremum near an end of the video is then seen as the full curve sees it);
2. the LV area of the segmented frames is linearly interpolated over the others (a straight
   segment has no interior extremum) and `beats.detect_ed_es` runs on that full-length
   curve, so its frame-based peak spacing and robust threshold mean what they mean on the
   fully segmented curve;
3. every frame within k of a candidate extremum (one found with `CANDIDATE_PROMINENCE`
   times the usual threshold, so an extremum the coarse curve makes look shallower than it
   is still gets refined) that is not segmented yet is segmented, and 2-3 repeat until every
   candidate has its +/- k neighbourhood segmented.

ED/ES frames therefore always lie on segmented frames. Nothing is invented for the other
frames: their area is NaN and their mask stays 0 with ``segmented`` False; only segmented
frames give areas, volumes and overlays. k = 1 segments every frame, exactly as before.
A narrow extremum (narrower than k frames, away from any coarse extremum) can be missed:
the fast path is opt-in (``--option seg_stride=K``); see tests/pipelines/echonet/
test_echonet_fastbeats.py for the phantoms and real videos it was checked on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cinelab.errors import InputError
from cinelab.pipelines.echonet.beats import DEFAULT_PROMINENCE, detect_ed_es
from cinelab.pipelines.echonet.segment import LV_CLASS, lv_area, segment_video
from cinelab.train.checkpoint import InputSpec

DEFAULT_SEG_STRIDE = 1  # every frame: today's results
FAST_SEG_STRIDE = 4  # the 'fast' preset
SEG_STRIDE_PRESETS = {"full": DEFAULT_SEG_STRIDE, "fast": FAST_SEG_STRIDE}
SEG_STRIDE_HELP = ("segment every k-th frame and refine around ED/ES (default 1: every "
                   f"frame; fast: {FAST_SEG_STRIDE}; unsegmented frames get NaN area)")
CANDIDATE_PROMINENCE = 0.5  # refine around extrema this fraction of detect_ed_es' threshold
MAX_ROUNDS = 20  # refinement rounds (each adds frames; one or two suffice in practice)

SegmentFn = Callable[[np.ndarray], np.ndarray]  # frame indices -> masks (len, H, W)


@dataclass
class SparseSegmentation:
    """LV masks of some frames of a video and the ED/ES frames found on them."""

    masks: np.ndarray  # uint8 (T, H, W); 0 where not segmented
    segmented: np.ndarray  # bool (T,)
    ed: np.ndarray
    es: np.ndarray
    rounds: int = 0  # refinement rounds after the coarse pass

    @property
    def area(self) -> np.ndarray:
        """LV area in pixels per frame, float64, NaN where the frame was not segmented."""
        area = lv_area(self.masks).astype(np.float64)
        area[~self.segmented] = np.nan
        return area

    @property
    def n_segmented(self) -> int:
        return int(self.segmented.sum())


def check_seg_stride(seg_stride: object) -> int:
    """`seg_stride` as an int >= 1 (ValueError naming it otherwise)."""
    if isinstance(seg_stride, bool) or not isinstance(seg_stride, int | np.integer) \
            or seg_stride < 1:
        raise ValueError(f"seg_stride: expected an integer >= 1 (1: every frame), found "
                         f"{seg_stride!r}")
    return int(seg_stride)


def seg_stride_option(value: object) -> int:
    """--option seg_stride: an integer >= 1, "full" (1) or "fast" (`FAST_SEG_STRIDE`)."""
    if isinstance(value, str) and value.strip().lower() in SEG_STRIDE_PRESETS:
        return SEG_STRIDE_PRESETS[value.strip().lower()]
    try:
        return check_seg_stride(value)
    except ValueError:
        raise InputError(None, "seg_stride", "an integer >= 1, full or fast",
                         repr(value)) from None


def coarse_frames(n: int, seg_stride: int) -> np.ndarray:
    """Frames of the coarse pass: every `seg_stride`-th, the last, and the k + 1 at each end."""
    k = check_seg_stride(seg_stride)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.r_[np.arange(min(n, k + 1)), np.arange(max(0, n - k - 1), n)]
    return np.unique(np.r_[np.arange(0, n, k), n - 1, edges]).astype(np.int64)


def interpolated_area(area: np.ndarray, segmented: np.ndarray) -> np.ndarray:
    """The area of the segmented frames, linearly interpolated over the others."""
    index = np.flatnonzero(segmented)
    if len(index) == 0:
        raise ValueError("segmented: expected at least one segmented frame, found none")
    return np.interp(np.arange(len(area)), index, np.asarray(area, dtype=np.float64)[index])


def frames_to_refine(extrema: np.ndarray, curve: np.ndarray, segmented: np.ndarray,
                     seg_stride: int) -> np.ndarray:
    """Unsegmented frames within `seg_stride` of any extremum or of the flat run of `curve`
    it lies on (find_peaks places a plateau's peak at its middle, so all of it must be known).
    """
    n = len(segmented)
    near = np.zeros(n, dtype=bool)
    for e in np.asarray(extrema, dtype=np.int64).tolist():
        lo, hi = e, e
        while lo > 0 and curve[lo - 1] == curve[e]:
            lo -= 1
        while hi < n - 1 and curve[hi + 1] == curve[e]:
            hi += 1
        near[max(0, lo - seg_stride):min(n, hi + seg_stride + 1)] = True
    return np.flatnonzero(near & ~segmented).astype(np.int64)


def coarse_to_fine(segment: SegmentFn, n: int, fps: float | None, seg_stride: int,
                   prominence: float = DEFAULT_PROMINENCE) -> SparseSegmentation:
    """ED/ES of an `n`-frame video segmenting as few frames as the module docstring says.

    `segment(index)` returns the uint8 masks (len(index), H, W) of those frames.
    """
    k = check_seg_stride(seg_stride)
    if n < 1:
        raise ValueError(f"n: expected a video of at least 1 frame, found {n}")
    index = coarse_frames(n, k)
    first = np.asarray(segment(index), dtype=np.uint8)
    masks = np.zeros((n, *first.shape[1:]), dtype=np.uint8)
    segmented = np.zeros(n, dtype=bool)
    masks[index], segmented[index] = first, True
    for rounds in range(MAX_ROUNDS + 1):
        area = lv_area(masks).astype(np.float64)
        curve = interpolated_area(area, segmented)
        ed, es = detect_ed_es(curve, fps, prominence)
        candidates = detect_ed_es(curve, fps, prominence * CANDIDATE_PROMINENCE)
        todo = frames_to_refine(np.r_[ed, es, candidates[0], candidates[1]], curve, segmented,
                                k)
        if not len(todo) or rounds == MAX_ROUNDS:
            return SparseSegmentation(masks, segmented, ed, es, rounds)
        masks[todo], segmented[todo] = np.asarray(segment(todo), dtype=np.uint8), True
    raise AssertionError("unreachable")  # pragma: no cover


def segment_and_detect(model: nn.Module, frames: np.ndarray, spec: InputSpec,
                       fps: float | None, seg_stride: int = DEFAULT_SEG_STRIDE,
                       batch_size: int = 32, device: str | torch.device = "cpu",
                       lv_class: int = LV_CLASS) -> SparseSegmentation:
    """Masks, segmented frames and ED/ES of a video (every frame when `seg_stride` is 1)."""
    k = check_seg_stride(seg_stride)
    if k == 1:
        masks = segment_video(model, frames, spec, batch_size, device, lv_class)
        ed, es = detect_ed_es(lv_area(masks), fps)
        return SparseSegmentation(masks, np.ones(len(masks), dtype=bool), ed, es)

    def segment(index: np.ndarray) -> np.ndarray:
        return segment_video(model, frames, spec, batch_size, device, lv_class, index)[index]

    return coarse_to_fine(segment, len(frames), fps, k)
