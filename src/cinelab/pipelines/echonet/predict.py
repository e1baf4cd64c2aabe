"""EF from echo videos, three ways (EchoNet-Dynamic), plus LV masks, areas and ED/ES frames.

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

`predict` writes the prediction contract (`cinelab.infer.contract`): predictions.csv with
``ef`` (beat by beat, the headline estimate), ``ef_all_clips``, ``ef_one_clip``, ``n_beats``
(beats averaged), ``n_beats_clipped`` (their clip starts at 0), ``n_beats_past_end`` (no
clip: not averaged), ``fallback``, ``edv``, ``esv``, ``n_frames``, ``fps``, ``ef_fps``,
``ef_beat_sd``/``ef_beat_sd_flag`` and, for a calibrated EF checkpoint, ``ef_lo``/``ef_hi``
and ``ood_score``/``ood_flag`` (`pipelines.echonet.uncertainty`, `calibrate`);
problems.csv; run.json. Beside them: beats.csv (one row per ES frame with ``flag`` and
``used``), clips.csv (EF of every all-clips start), frames.csv (LV area per frame, ED/ES
flags), masks/<id>.npz and overlays/<id>.avi.

Clips are built batch by batch from the (memory-mapped) uint8 video: memory stays about one
batch, never all clips at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.data.sampling import all_clip_starts, iter_clip_batches
from cinelab.errors import InputError, Problem
from cinelab.explain.overlay import write_overlay_video
from cinelab.infer.contract import run_record, write_contract
from cinelab.infer.engines import engine_checkpoint
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.measure.ef import disc_volume
from cinelab.pipelines.echonet.beats import (
    DEFAULT_MAX_BEATS,
    BeatClip,
    beat_fallback,
    beats_from_extrema,
    place_beat_clips,
)
from cinelab.pipelines.echonet.fastbeats import DEFAULT_SEG_STRIDE, segment_and_detect
from cinelab.pipelines.echonet.segment import LV_CLASS, lv_area
from cinelab.pipelines.echonet.sources import (
    EF_TASK,
    SEG_TASK,
    Sample,
    SourceItem,
    check_frames,
    conform,
    list_items,
    load_for_task,
    load_item,
    resolve_checkpoints,
    resolve_pair,
)
from cinelab.pipelines.echonet.uncertainty import (
    BEAT_SD_THRESHOLD,
    annotate_predictions,
    checkpoint_state,
    detector_of,
    ood_unavailable,
    usable_state,
    video_features,
    video_ood_score,
)
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint
from cinelab.utils import atomic_path, file_hash, read_json, write_csv, write_json

PIPELINE = "echonet"

__all__ = ["VideoPrediction", "predict", "predict_ef_clips", "predict_video",
           "resolve_checkpoints"]

FALLBACK_NO_SEGMENTATION = "no_segmentation"
FALLBACK_NO_EF_MODEL = "no_ef_model"
PREDICTION_COLUMNS = ["sample_id", "ef", "ef_all_clips", "ef_one_clip", "n_beats",
                      "n_beats_clipped", "n_beats_past_end", "fallback", "edv", "esv",
                      "n_frames", "fps", "ef_fps"]
BEAT_COLUMNS = ["sample_id", "beat", "ed_frame", "es_frame", "ed_area", "es_area", "ef",
                "clip_start", "flag", "used", "edv", "esv"]
CLIP_COLUMNS = ["sample_id", "clip_start", "ef"]
N_DISCS = 20  # method of discs (Simpson), as the EchoNet tracings
FRAME_COLUMNS = ["sample_id", "frame", "lv_area", "is_ed", "is_es"]
PROBLEM_COLUMNS = list(Problem.__dataclass_fields__)
PARTS_DIR, MASKS_DIR, OVERLAYS_DIR = "parts", "masks", "overlays"
OVERLAY_SUFFIX = ".avi"
OVERLAY_FPS = 30.0  # frame rate of overlay videos when the input's is unknown
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
        edv, esv = _video_volumes(self.beats)
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
        return _frame_rows(sample_id, self.area, self.ed, self.es)


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
        pred.beats = _beat_rows(pred, [BeatClip(int(e), -1) for e in pred.es], {})
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
    pred.beats = _beat_rows(pred, clips, known)
    if used:
        pred.ef_beats = float(np.mean([known[c.start] for c in used]))


def _beat_rows(pred: VideoPrediction, clips: list[BeatClip],
               ef_by_start: dict[int, float]) -> list[dict[str, Any]]:
    """One row per beat clip: its ED (the last one before its ES, if any), areas, EF (NaN
    when not averaged), flag, used and (with spacing) EDV/ESV in mL."""
    area = pred.area if pred.area is not None else np.zeros(pred.n_frames)
    ed_of = {b.es: b.ed for b in beats_from_extrema(pred.ed, pred.es)}
    rows = []
    for i, clip in enumerate(clips):
        ed = ed_of.get(clip.es)
        used = clip.used and clip.start >= 0 and clip.start in ef_by_start
        rows.append({"beat": i, "ed_frame": ed, "es_frame": clip.es,
                     "ed_area": None if ed is None else int(area[ed]),
                     "es_area": int(area[clip.es]),
                     "ef": ef_by_start[clip.start] if used else math.nan,
                     "clip_start": clip.start if clip.start >= 0 else None,
                     "flag": clip.flag, "used": int(clip.used),
                     "edv": _mask_volume(pred, ed), "esv": _mask_volume(pred, clip.es)})
    return rows


def _mask_volume(pred: VideoPrediction, frame: int | None) -> float:
    """Method-of-discs volume (mL) of the predicted LV mask at `frame`; NaN without spacing."""
    if frame is None or pred.masks is None or pred.spacing is None:
        return math.nan
    return mask_disc_volume(pred.masks[frame] > 0, pred.spacing)


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


def _video_volumes(beats: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean EDV and ESV (mL) over the beats that have them (NaN when none)."""
    def mean_of(key: str) -> float:
        vals = [b.get(key) for b in beats]
        vals = [float(v) for v in vals if v is not None and np.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan
    return mean_of("edv"), mean_of("esv")


def _clip_shape(spec: InputSpec) -> tuple[int, int]:
    if not spec.frames or not spec.period:
        raise InputError(None, "input_spec.frames/period", "a video (EF) checkpoint with clip "
                         "frames and period", f"frames={spec.frames}, period={spec.period}")
    return int(spec.frames), int(spec.period)


# -- a whole input ---------------------------------------------------------------------------


@dataclass
class _Run:
    """What every sample of one predict call shares."""

    out: Path
    ef: LoadedCheckpoint | None
    seg: LoadedCheckpoint | None
    settings: dict[str, Any]  # max_beats, all_clips_stride, lv_class
    batch_size: int
    device: str | torch.device
    overlays: bool
    problems: list[Problem] = field(default_factory=list)
    key: dict[str, Any] = field(default_factory=dict)  # what a finished part must record

    @property
    def spec(self) -> InputSpec:
        """The spec samples are loaded at (the EF model's, else the segmentation model's)."""
        loaded = self.ef or self.seg
        return loaded.input_spec  # type: ignore[union-attr]

    target_fps: float | None = None  # the EF model's training frame rate
    uncertainty: UncertaintyState = field(default_factory=UncertaintyState)
    coverage: float | None = None  # of ef_lo/ef_hi (None: the calibrated default)
    beat_sd_threshold: float = BEAT_SD_THRESHOLD

    def predict_video(self, sample: Sample) -> VideoPrediction:
        """`predict_video` with this run's models and settings; EF clips come from the video
        resampled to the EF model's training frame rate when both rates are known."""
        ef, seg = self.ef, self.seg
        spacing = None
        if sample.spacing is not None and seg is not None:
            scale = sample.frames.shape[1] / seg.input_spec.size  # sample size -> model size
            spacing = (sample.spacing[0] * scale, sample.spacing[1] * scale)
        detector = detector_of(self.uncertainty)
        with video_features(ef.model if ef else None, detector) as found:
            pred = predict_video(ef.model if ef else None, seg.model if seg else None,
                                 sample.frames, sample.fps, ef.input_spec if ef else None,
                                 seg.input_spec if seg else None, self.batch_size,
                                 self.device, spacing=spacing, target_fps=self.target_fps,
                                 **self.settings)
        pred.ood_score = video_ood_score(detector, found)
        return pred


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


def predict(
    ef_checkpoint: str | Path | None,
    input: str | Path,
    out_dir: str | Path,
    seg_checkpoint: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
    overlays: bool = False,
    max_beats: int | None = DEFAULT_MAX_BEATS,
    all_clips_stride: int = 1,
    labels: str | Path | None = None,
    seg_stride: int = DEFAULT_SEG_STRIDE,
    lv_class: int = LV_CLASS,
    progress: Callable[[str, str], None] | None = None,
    split: str | None = None,
    fps: float | str | None = "auto",
    engine: str = "eager",
    coverage: float | None = None,
    beat_sd_threshold: float = BEAT_SD_THRESHOLD,
    uncertainty: UncertaintyState | None = None,
) -> Path:
    """Predict every sample of `input` (store, folder, video or DICOM) into `out_dir`.

    Writes the contract (predictions.csv, problems.csv, run.json), beats.csv, frames.csv,
    masks/<id>.npz and (with `overlays`) overlays/<id>.avi. Resumable: a sample whose
    parts/<id>.json records the same checkpoints and settings is skipped; the CSVs are
    rebuilt from the parts at the end.
    `labels` is an optional label CSV (e.g. FileList.csv) for folder/file inputs.
    `progress(sample_id, status)` is called with "done", "skipped" or "failed".
    `split` keeps one split of a prepared store. `fps`: the frame rate videos are resampled
    to before prediction ("auto": the EF checkpoint's training frame rate when recorded;
    None: never resample); run.json's ``frame_rate`` says what was done. `engine` runs both
    models with `infer.engines` ("eager", "compiled" or "onnx"; run.json ``engine``).
    `coverage` / `beat_sd_threshold` / `uncertainty` (default: the EF checkpoint's state):
    see `pipelines.echonet.uncertainty` (run.json ``uncertainty``).
    Returns `out_dir`.
    """
    started = time.time()
    settings = {"max_beats": max_beats, "all_clips_stride": all_clips_stride,
                "lv_class": lv_class, "seg_stride": seg_stride}
    _check_settings(batch_size=batch_size, **settings)
    ef_path, seg_path = resolve_pair(ef_checkpoint, seg_checkpoint)
    run = _Run(Path(out_dir), _engine(ef_path, EF_TASK, engine, device),
               _engine(seg_path, SEG_TASK, engine, device),
               settings, batch_size, device, overlays)
    run.target_fps, frame_rate = _target_fps(run.ef, fps)
    stored = checkpoint_state(run.ef) if uncertainty is None else uncertainty
    run.uncertainty = usable_state(stored, run.ef)
    run.coverage, run.beat_sd_threshold = coverage, beat_sd_threshold
    run.key = {"ef": _hash(ef_path), "seg": _hash(seg_path), **settings,
               "fps": run.target_fps, **({} if engine == "eager" else {"engine": engine}),
               "ood": detector_of(run.uncertainty) is not None}
    items = list_items(input, labels, exclude=run.out, split=split)
    for item in items:
        status = "skipped" if _is_done(run, item.sample_id) else _predict_item(run, item)
        if progress is not None:
            progress(item.sample_id, status)
    record = run_record(
        PIPELINE, EF_TASK if ef_path is not None else SEG_TASK, ef_path or seg_path,
        Path(input).resolve(), started, split=split,
        labels=None if labels is None else str(Path(labels).resolve()),
        checkpoints={"ef": None if ef_path is None else str(ef_path.resolve()),
                     "seg": None if seg_path is None else str(seg_path.resolve())},
        checkpoint_hashes={"ef": run.key["ef"], "seg": run.key["seg"]},
        input_spec=run.spec.to_dict(), settings={**settings, "batch_size": batch_size,
                                                  "overlays": overlays},
        frame_rate=frame_rate, engine=_engine_record(run, engine),
        uncertainty={**_uncertainty_record(run), **ood_unavailable(stored, run.uncertainty)})
    _write_tables(run, items, record)
    return run.out


def _uncertainty_record(run: _Run) -> dict[str, Any]:
    """run.json's account of the uncertainty columns and their settings."""
    state, fitted = run.uncertainty, run.uncertainty.intervals.get("ef")
    return {"intervals": sorted(state.intervals),
            "coverage": run.coverage or (None if fitted is None else fitted.coverage),
            "ood": None if state.ood is None else state.ood.kind,
            "ood_threshold": None if state.ood is None else state.ood.threshold,
            "beat_sd_threshold": run.beat_sd_threshold}


def _engine(path: Path | None, task: str, engine: str, device: str | torch.device
            ) -> LoadedCheckpoint | None:
    """The checkpoint at `path` with its model behind `engine` (None stays None); the
    ONNX graph outputs the features of its OOD detector too (or `cinelab export` wrote it
    beside the checkpoint)."""
    loaded = load_for_task(path, task)
    return None if loaded is None else engine_checkpoint(loaded, engine, device, path=path)


def _engine_record(run: _Run, engine: str) -> dict[str, Any]:
    """run.json's ``engine``: its name and, per model, what runs it (ONNX providers)."""
    info = {name: dict(loaded.model.info) for name, loaded in (("ef", run.ef), ("seg", run.seg))
            if loaded is not None and getattr(loaded.model, "info", None)}
    return {"name": engine, **info}


def _target_fps(ef: LoadedCheckpoint | None, fps: float | str | None
                ) -> tuple[float | None, dict[str, Any]]:
    """(rate to resample to, run.json's frame_rate record)."""
    trained = training_fps(ef)
    if fps == "auto":
        target, source = trained, "checkpoint" if trained is not None else None
    elif fps is None:
        target, source = None, None
    else:
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0:
            raise InputError(None, "fps", 'a frame rate > 0, "auto" or None', repr(fps))
        target, source = float(fps), "option"
    note = (f"EF clips taken from videos resampled to {target:g} fps (nearest frame; "
            "predictions.csv ef_fps); clip_start in beats.csv and clips.csv counts resampled "
            "frames, all other frame numbers (masks, frames.csv, ED/ES) the video's own"
            if target is not None else
            "videos not resampled: the EF checkpoint records no training frame rate"
            if fps == "auto" else "videos not resampled (fps=None)")
    return target, {"target_fps": target, "source": source, "trained_fps": trained,
                    "note": note}


def _predict_item(run: _Run, item: SourceItem) -> str:
    """Load, predict and write one sample; a failure becomes a Problem ("done"/"failed")."""
    stage = "load"
    try:
        sample = load_item(item, run.spec.size, run.spec.channels)
        stage = "predict"
        _write_sample(run, sample, run.predict_video(sample))
    except Exception as exc:  # one bad file is reported and skipped
        run.problems.append(Problem.from_exception(item.path, stage, exc))
        return "failed"
    return "done"


def _write_sample(run: _Run, sample: Sample, pred: VideoPrediction) -> None:
    """Masks and overlay first, then the part that marks the sample complete."""
    sid = sample.sample_id
    if pred.masks is not None:
        _save_masks(run.out / MASKS_DIR / f"{sid}.npz", pred.masks, pred.area)
        if run.overlays and run.seg is not None:
            spec = run.seg.input_spec
            write_overlay_video(run.out / OVERLAYS_DIR / f"{sid}{OVERLAY_SUFFIX}",
                                conform(sample.frames, spec.size, spec.channels), pred.masks,
                                sample.fps or OVERLAY_FPS)
    row = {"sample_id": sid, **pred.summary()}
    if detector_of(run.uncertainty) is not None:
        row["ood_score"] = pred.ood_score
    if sample.labels.get("patient_id"):
        row["patient_id"] = str(sample.labels["patient_id"])
    frames = None if pred.area is None else {"lv_area": _json_area(pred.area),
                                             "ed": pred.ed.tolist(), "es": pred.es.tolist()}
    clips = {"start": pred.clip_starts.tolist(), "ef": pred.clip_ef.tolist()}
    write_json(_part_path(run.out, sid), {"key": run.key, "prediction": _json_row(row),
                                          "beats": [_json_row(b) for b in pred.beats],
                                          "frames": frames, "clips": clips})


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """NaN floats as None (strict JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()}


def _json_area(area: np.ndarray) -> list[Any]:
    """The area curve for JSON: a frame that was not segmented (NaN) as None."""
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in area.tolist()]


def _save_masks(path: Path, masks: np.ndarray, area: np.ndarray | None = None) -> None:
    """Masks under key ``mask``; with frames left unsegmented (NaN area, `fastbeats`) also
    a boolean ``segmented`` per frame (their masks are 0, not predictions)."""
    extra = {} if area is None or np.isfinite(area).all() else {"segmented": np.isfinite(area)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, mask=masks.astype(np.uint8), **extra)


def _is_done(run: _Run, sample_id: str) -> bool:
    part = _read_part(run.out, sample_id)
    if part is None or part.get("key") != run.key:
        return False
    if run.seg is None:
        return True
    overlay = run.out / OVERLAYS_DIR / f"{sample_id}{OVERLAY_SUFFIX}"
    return (run.out / MASKS_DIR / f"{sample_id}.npz").is_file() and (
        overlay.is_file() or not run.overlays)


def _read_part(out: Path, sample_id: str) -> dict[str, Any] | None:
    path = _part_path(out, sample_id)
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:  # a damaged part is redone
        return None


def _part_path(out: Path, sample_id: str) -> Path:
    return out / PARTS_DIR / f"{sample_id}.json"


def _write_tables(run: _Run, items: list[SourceItem], record: dict[str, Any]) -> None:
    """The contract (predictions, problems, run.json) and beats/frames.csv from the parts of
    this input's samples."""
    preds, beats, frames, clips = [], [], [], []
    for item in items:
        part = _read_part(run.out, item.sample_id)
        if part is None or part.get("key") != run.key:
            continue
        preds.append(part["prediction"])
        beats += [{"sample_id": item.sample_id, **b} for b in part["beats"]]
        if part.get("clips"):
            clips.append(pd.DataFrame({"sample_id": item.sample_id,
                                       "clip_start": part["clips"]["start"],
                                       "ef": part["clips"]["ef"]}, columns=CLIP_COLUMNS))
        if part["frames"] is not None:
            curve = part["frames"]
            frames.append(_frame_rows(item.sample_id, curve["lv_area"], curve["ed"],
                                      curve["es"]))
    columns = PREDICTION_COLUMNS[:1] + ["patient_id"] + PREDICTION_COLUMNS[1:] + (
        ["ood_score"] if detector_of(run.uncertainty) is not None else [])
    table = pd.DataFrame(preds, columns=columns)
    table["patient_id"] = table["patient_id"].fillna(table["sample_id"])
    beats = _typed_beats(pd.DataFrame(beats, columns=BEAT_COLUMNS))
    table = annotate_predictions(table, beats, run.uncertainty, run.coverage,
                                 run.beat_sd_threshold)
    write_contract(run.out, table, run.problems, record)
    write_csv(beats, run.out / "beats.csv")
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=FRAME_COLUMNS)
    write_csv(table, run.out / "frames.csv")
    table = pd.concat(clips, ignore_index=True) if clips else pd.DataFrame(columns=CLIP_COLUMNS)
    write_csv(table, run.out / "clips.csv")


def _frame_rows(sample_id: str, area: Any, ed: Any, es: Any) -> pd.DataFrame:
    area = np.asarray(area, dtype=np.float64)  # None (not segmented) -> NaN
    area = area.astype(np.int64) if np.isfinite(area).all() else area
    index = np.arange(len(area))
    return pd.DataFrame({"sample_id": sample_id, "frame": index, "lv_area": area,
                         "is_ed": np.isin(index, ed).astype(int),
                         "is_es": np.isin(index, es).astype(int)})


def _typed_beats(table: pd.DataFrame) -> pd.DataFrame:
    """Integer columns that may be missing (ED before the first ES, no clip) as Int64."""
    for col in ("beat", "ed_frame", "es_frame", "ed_area", "es_area", "clip_start", "used"):
        table[col] = pd.array(table[col], dtype="Int64")
    return table


def _check_settings(**values: int | None) -> None:
    for name, value in values.items():
        if name == "max_beats" and value is None:
            continue
        lowest = 0 if name == "lv_class" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise InputError(None, name, f"an integer >= {lowest}", repr(value))


def _hash(path: Path | None) -> str | None:
    return None if path is None else file_hash(path)
