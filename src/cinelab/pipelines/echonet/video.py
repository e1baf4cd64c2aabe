"""One video's EF, three ways (EchoNet-Dynamic), plus LV masks, areas and ED/ES frames.

- one clip: the clip that starts at frame 0 (deterministic; EchoNet-Dynamic's single-clip
  evaluation draws a random start instead).
- all clips: the mean over the clips starting at every frame (every `all_clips_stride`
  frames) where a full clip fits; EchoNet-Dynamic's test-time protocol. A video shorter than
  one clip has one clip from frame 0, padded as `data.sampling` documents.
- beat by beat: segment every frame -> LV area curve -> ED/ES frames (`beats`) -> one
  clip per ES frame placed as EchoNet-Dynamic's official analysis (starting
  frames * period // 2 frames before ES; `beats.place_beat_clips`; every beat unless
  `max_beats`) -> mean. Without segmentation, ES frames or a beat with a clip it falls back
  to all clips and `fallback` says why.

EF clips are taken from the video resampled to the frame rate the EF checkpoint was trained
at (its recorded ``fps``), run.json ``frame_rate`` says so. EDV/ESV (mL) come from the
predicted LV masks at each beat's ED/ES frames by the method of discs where pixel spacing is
known (DICOM regions).

`VideoPrediction` holds the result; its beat rows, clips and frames tables are built by
`tables`, and `predict` runs it over a whole input. Clips are built batch by batch from
the (memory-mapped) uint8 video: memory stays about one batch, never all clips at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.data.sampling import all_clip_starts, iter_clip_batches
from cinelab.errors import InputError
from cinelab.pipelines.echonet.beats import (
    DEFAULT_MAX_BEATS,
    BeatClip,
    beat_fallback,
    place_beat_clips,
)
from cinelab.pipelines.echonet.fastbeats import DEFAULT_SEG_STRIDE, segment_and_detect
from cinelab.pipelines.echonet.segment import LV_CLASS, lv_area
from cinelab.pipelines.echonet.sources import check_frames, conform
from cinelab.pipelines.echonet.tables import (
    CLIP_COLUMNS,
    FRAME_COLUMNS,
    beat_rows,
    frame_rows,
    video_volumes,
)
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint

__all__ = ["DEFAULT_BATCH", "FALLBACK_NO_EF_MODEL", "FALLBACK_NO_SEGMENTATION",
           "VideoPrediction", "predict_ef_clips", "predict_video", "resample_to_fps",
           "training_fps"]

FALLBACK_NO_SEGMENTATION = "no_segmentation"
FALLBACK_NO_EF_MODEL = "no_ef_model"
DEFAULT_BATCH = 16


@dataclass
class VideoPrediction:
    """Everything predicted for one video (EF values are NaN without an EF model)."""

    n_frames: int
    fps: float | None
    ef_one_clip: float = math.nan
    ef_all_clips: float = math.nan
    ef_beats: float = math.nan
    fallback: str = ""
    clip_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    clip_ef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    beats: list[dict[str, Any]] = field(default_factory=list)  # BEAT_COLUMNS but sample_id
    area: np.ndarray | None = None
    ed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    es: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    masks: np.ndarray | None = None
    spacing: tuple[float, float] | None = None  # (dy, dx) mm of the masks' pixels
    ef_fps: float | None = None  # frame rate of the EF clips (after any resampling)
    ood_score: float = math.nan  # Mahalanobis score of the mean clip feature (`uncertainty`)

    @property
    def n_beats(self) -> int:
        """Beats averaged into ef_beats (rows of the beat table with used = 1)."""
        return sum(1 for b in self.beats if b.get("used", 1))

    def _count(self, flag: str) -> int:
        return sum(1 for b in self.beats if b.get("flag") == flag)

    def summary(self) -> dict[str, Any]:
        """The predictions.csv row (without sample_id and labels)."""
        edv, esv = video_volumes(self.beats)
        return {"ef": self.ef_beats, "ef_all_clips": self.ef_all_clips,
                "ef_one_clip": self.ef_one_clip, "n_beats": self.n_beats,
                "n_beats_clipped": self._count("clipped_start"),
                "n_beats_past_end": self._count("past_end"),
                "fallback": self.fallback, "edv": edv, "esv": esv,
                "n_frames": self.n_frames, "fps": self.fps, "ef_fps": self.ef_fps}

    def clips_table(self, sample_id: str = "") -> pd.DataFrame:
        """CLIP_COLUMNS rows: EF of every all-clips start (EchoNet's clip-spread analysis)."""
        return pd.DataFrame({"sample_id": sample_id, "clip_start": self.clip_starts.astype(int),
                             "ef": self.clip_ef}, columns=CLIP_COLUMNS)

    def frames_table(self, sample_id: str = "") -> pd.DataFrame:
        """FRAME_COLUMNS rows, one per frame (is_ed/is_es 0/1); empty without segmentation."""
        if self.area is None:
            return pd.DataFrame(columns=FRAME_COLUMNS)
        return frame_rows(sample_id, self.area, self.ed, self.es)

    def beat_rows_for(self, clips: list[BeatClip], ef_by_start: dict[int, float]
                      ) -> list[dict[str, Any]]:
        """`tables.beat_rows` of `clips` on this video's areas, ED/ES, masks and spacing."""
        area = self.area if self.area is not None else np.zeros(self.n_frames)
        return beat_rows(clips, ef_by_start, area, self.ed, self.es, self.masks, self.spacing)


@torch.inference_mode()
def predict_ef_clips(model: nn.Module, frames: np.ndarray, spec: InputSpec,
                     starts: np.ndarray, batch_size: int = DEFAULT_BATCH,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """EF (first model output) of the clip at each start, `batch_size` clips at a time."""
    check_frames(frames, spec.size, spec.channels)
    clip_frames, period = _clip_shape(spec)
    model = model.eval().to(device)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    out = np.empty(len(starts), dtype=np.float64)
    pos = 0
    for batch_starts, clips in iter_clip_batches(frames, starts, clip_frames, period,
                                                 batch_size, spec.mean, spec.std, device):
        values = model(clips).reshape(len(batch_starts), -1)[:, 0]
        out[pos:pos + len(batch_starts)] = values.float().cpu().numpy()
        pos += len(batch_starts)
    return out


def predict_video(
    ef_model: nn.Module | None,
    seg_model: nn.Module | None,
    frames: np.ndarray,
    fps: float | None,
    ef_spec: InputSpec | None,
    seg_spec: InputSpec | None,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
    max_beats: int = DEFAULT_MAX_BEATS,
    all_clips_stride: int = 1,
    lv_class: int = LV_CLASS,
    spacing: tuple[float, float] | None = None,
    target_fps: float | None = None,
    seg_stride: int = DEFAULT_SEG_STRIDE,
) -> VideoPrediction:
    """One clip, all clips and beat-by-beat EF, LV masks, area curve and ED/ES frames.

    `frames` is uint8 (T, H, W, C); it is resized for a model whose size/channels differ.
    Either model may be None (not both): without segmentation there are no beats
    (fallback "no_segmentation"); without an EF model there is no EF ("no_ef_model").
    `spacing` (dy, dx) in mm of the segmentation model's pixels gives EDV/ESV in mL.
    `target_fps`: EF clips are taken from the video resampled to that rate (`resample_to_fps`;
    ES frames are mapped to it), while masks, areas and ED/ES frames stay in the video's own
    frames; ``clip_start`` (beats.csv, clips.csv) counts resampled frames, ``ef_fps`` says
    at which rate. `seg_stride` k > 1 segments every k-th frame and refines around ED/ES
    (`fastbeats`): the area of the other frames is NaN, their masks 0.
    """
    if ef_model is None and seg_model is None:
        raise ValueError("predict_video: expected an EF model, a segmentation model or both")
    if (ef_model is not None and ef_spec is None) or (seg_model is not None and seg_spec is None):
        raise ValueError("predict_video: expected an InputSpec for each model given, found None")
    pred = VideoPrediction(n_frames=len(frames), fps=fps, spacing=spacing)
    if seg_model is not None:
        seg_frames = conform(frames, seg_spec.size, seg_spec.channels)
        found = segment_and_detect(seg_model, seg_frames, seg_spec, fps, seg_stride,
                                   batch_size, device, lv_class)
        pred.masks, pred.ed, pred.es = found.masks, found.ed, found.es
        pred.area = lv_area(found.masks) if found.segmented.all() else found.area
    if ef_model is None:
        pred.fallback = FALLBACK_NO_EF_MODEL
        pred.beats = pred.beat_rows_for([BeatClip(int(e), -1) for e in pred.es], {})
        return pred
    ef_frames, pred.ef_fps = resample_to_fps(conform(frames, ef_spec.size, ef_spec.channels),
                                             fps, target_fps)
    clip_frames, period = _clip_shape(ef_spec)
    pred.clip_starts = all_clip_starts(len(ef_frames), clip_frames, period, all_clips_stride)
    pred.clip_ef = predict_ef_clips(ef_model, ef_frames, ef_spec, pred.clip_starts,
                                    batch_size, device)
    pred.ef_one_clip = float(pred.clip_ef[0])  # all_clip_starts always starts at frame 0
    pred.ef_all_clips = float(pred.clip_ef.mean())
    _beat_by_beat(pred, ef_model, ef_frames, ef_spec, batch_size, device, max_beats)
    return pred


def _beat_by_beat(pred: VideoPrediction, model: nn.Module, frames: np.ndarray,
                  spec: InputSpec, batch_size: int, device: str | torch.device,
                  max_beats: int | None) -> None:
    """Fill ef_beats, beats and fallback (all-clips EF when no beat is averaged)."""
    pred.ef_beats = pred.ef_all_clips
    if pred.area is None:
        pred.fallback = FALLBACK_NO_SEGMENTATION
        return
    clip_frames, period = _clip_shape(spec)
    ratio = 1.0 if pred.fps is None or pred.ef_fps is None else pred.ef_fps / pred.fps
    es = np.sort(pred.es)
    es_ef = np.minimum(np.rint(es * ratio).astype(np.int64), max(len(frames) - 1, 0))
    clips = place_beat_clips(es_ef, len(frames), clip_frames, period, max_beats)
    back = dict(zip(es_ef.tolist(), es.tolist(), strict=True))  # EF-rate ES -> video frame
    clips = [BeatClip(back[c.es], c.start, c.flag) for c in clips]
    pred.fallback = beat_fallback(clips, len(frames), clip_frames, period)
    used = [c for c in clips if c.used] if not pred.fallback else []
    known = dict(zip(pred.clip_starts.tolist(), pred.clip_ef.tolist(), strict=True))
    missing = sorted({c.start for c in used} - set(known))
    if missing:  # with all_clips_stride > 1 a beat's clip may not be among all clips
        known.update(zip(missing, predict_ef_clips(model, frames, spec, np.asarray(missing),
                                                   batch_size, device).tolist(), strict=True))
    pred.beats = pred.beat_rows_for(clips, known)
    if used:
        pred.ef_beats = float(np.mean([known[c.start] for c in used]))


def _clip_shape(spec: InputSpec) -> tuple[int, int]:
    if not spec.frames or not spec.period:
        raise InputError(None, "input_spec.frames/period", "a video (EF) checkpoint with clip "
                         "frames and period", f"frames={spec.frames}, period={spec.period}")
    return int(spec.frames), int(spec.period)


def training_fps(loaded: LoadedCheckpoint | None) -> float | None:
    """The frame rate an EF checkpoint was trained at: input spec extra ``fps`` or the
    recipe's ``data.fps`` or the checkpoint's recorded training ``fps`` (None if unknown)."""
    if loaded is None:
        return None
    extra = loaded.info.get("extra") or {}
    for value in (getattr(loaded.input_spec, "fps", None),
                  (loaded.recipe.get("data") or {}).get("fps"), extra.get("fps")):
        if value is not None and float(value) > 0:
            return float(value)
    return None


def resample_to_fps(frames: np.ndarray, fps: float | None, target: float | None
                    ) -> tuple[np.ndarray, float | None]:
    """Frames resampled (nearest frame in time) from `fps` to `target`; unchanged when
    either rate is unknown or they agree within 1 %. Output frame k shows time k / target."""
    if fps is None or target is None or abs(fps - target) <= 0.01 * target:
        return frames, fps
    n_out = max(1, int(math.floor((len(frames) - 1) * target / fps)) + 1)
    index = np.minimum(np.rint(np.arange(n_out) * fps / target).astype(np.int64),
                       len(frames) - 1)
    return np.asarray(frames)[index], float(target)
