"""EF from echo videos, three ways (EchoNet-Dynamic), plus LV masks, areas and ED/ES frames.

- one clip: the clip that starts at frame 0 (deterministic; EchoNet-Dynamic's single-clip
  evaluation draws a random start instead).
- all clips: the mean over the clips starting at every frame (every `all_clips_stride`
  frames) where a full clip fits; EchoNet-Dynamic's test-time protocol. A video shorter than
  one clip has one clip from frame 0, padded as `data.sampling` documents.
- beat by beat: segment every frame -> LV area curve -> ED/ES frames (`beats`) -> one
  clip ending at each ES frame (at most `max_beats`, chosen evenly) -> mean. Without
  segmentation, ES frames or a full clip it falls back to all clips and `fallback` says why.

`predict` writes the prediction contract (`cinelab.infer.contract`): predictions.csv with
``ef`` (beat by beat, the headline estimate), ``ef_all_clips``, ``ef_one_clip``, ``n_beats``,
``fallback``, ``n_frames``, ``fps``; problems.csv; run.json. Beside them: beats.csv,
frames.csv (LV area per frame, ED/ES flags), masks/<id>.npz and overlays/<id>.avi.

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

from cinelab.data.sampling import all_clip_starts, clip_ending_at, iter_clip_batches
from cinelab.errors import InputError, Problem
from cinelab.explain.overlay import write_overlay_video
from cinelab.infer.contract import run_record, write_contract
from cinelab.pipelines.echonet.beats import (
    DEFAULT_MAX_BEATS,
    FALLBACK_NO_BEATS,
    FALLBACK_SHORT_VIDEO,
    beats_from_extrema,
    detect_ed_es,
    select_beat_clips,
)
from cinelab.pipelines.echonet.segment import LV_CLASS, lv_area, segment_video
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
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint
from cinelab.utils import atomic_path, file_hash, read_json, write_csv, write_json

PIPELINE = "echonet"

__all__ = ["VideoPrediction", "predict", "predict_ef_clips", "predict_video",
           "resolve_checkpoints"]

FALLBACK_NO_SEGMENTATION = "no_segmentation"
FALLBACK_NO_EF_MODEL = "no_ef_model"
PREDICTION_COLUMNS = ["sample_id", "ef", "ef_all_clips", "ef_one_clip", "n_beats",
                      "fallback", "n_frames", "fps"]
BEAT_COLUMNS = ["sample_id", "beat", "ed_frame", "es_frame", "ed_area", "es_area", "ef",
                "clip_start"]
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

    @property
    def n_beats(self) -> int:
        """Beats in the beat table (those averaged into ef_beats when there is an EF model)."""
        return len(self.beats)

    def summary(self) -> dict[str, Any]:
        """The predictions.csv row (without sample_id and labels)."""
        return {"ef": self.ef_beats, "ef_all_clips": self.ef_all_clips,
                "ef_one_clip": self.ef_one_clip, "n_beats": self.n_beats,
                "fallback": self.fallback, "n_frames": self.n_frames, "fps": self.fps}

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
) -> VideoPrediction:
    """One clip, all clips and beat-by-beat EF, LV masks, area curve and ED/ES frames.

    `frames` is uint8 (T, H, W, C); it is resized for a model whose size/channels differ.
    Either model may be None (not both): without segmentation there are no beats
    (fallback "no_segmentation"); without an EF model there is no EF ("no_ef_model").
    """
    if ef_model is None and seg_model is None:
        raise ValueError("predict_video: expected an EF model, a segmentation model or both")
    if (ef_model is not None and ef_spec is None) or (seg_model is not None and seg_spec is None):
        raise ValueError("predict_video: expected an InputSpec for each model given, found None")
    pred = VideoPrediction(n_frames=len(frames), fps=fps)
    if seg_model is not None:
        seg_frames = conform(frames, seg_spec.size, seg_spec.channels)
        pred.masks = segment_video(seg_model, seg_frames, seg_spec, batch_size, device, lv_class)
        pred.area = lv_area(pred.masks)
        pred.ed, pred.es = detect_ed_es(pred.area, fps)
    if ef_model is None:
        pred.fallback = FALLBACK_NO_EF_MODEL
        pred.beats = _beat_rows(pred, [(int(e), -1) for e in pred.es], {})
        return pred
    ef_frames = conform(frames, ef_spec.size, ef_spec.channels)
    clip_frames, period = _clip_shape(ef_spec)
    pred.clip_starts = all_clip_starts(len(frames), clip_frames, period, all_clips_stride)
    pred.clip_ef = predict_ef_clips(ef_model, ef_frames, ef_spec, pred.clip_starts,
                                    batch_size, device)
    pred.ef_one_clip = float(pred.clip_ef[0])  # all_clip_starts always starts at frame 0
    pred.ef_all_clips = float(pred.clip_ef.mean())
    _beat_by_beat(pred, ef_model, ef_frames, ef_spec, batch_size, device, max_beats)
    return pred


def _beat_by_beat(pred: VideoPrediction, model: nn.Module, frames: np.ndarray,
                  spec: InputSpec, batch_size: int, device: str | torch.device,
                  max_beats: int) -> None:
    """Fill ef_beats, beats and fallback (all-clips EF when there are no usable beats)."""
    pred.ef_beats = pred.ef_all_clips
    if pred.area is None:
        pred.fallback = FALLBACK_NO_SEGMENTATION
        return
    clip_frames, period = _clip_shape(spec)
    starts, pred.fallback = select_beat_clips(pred.es, len(frames), clip_frames, period,
                                              max_beats)
    if pred.fallback in (FALLBACK_NO_BEATS, FALLBACK_SHORT_VIDEO):
        return
    chosen = _chosen_es(pred.es, starts, clip_frames, period, len(frames))
    known = dict(zip(pred.clip_starts.tolist(), pred.clip_ef.tolist(), strict=True))
    missing = [s for s in starts if s not in known]
    if missing:  # with all_clips_stride > 1 a beat's clip may not be among all clips
        known.update(zip(missing, predict_ef_clips(model, frames, spec, np.asarray(missing),
                                                   batch_size, device).tolist(), strict=True))
    pred.beats = _beat_rows(pred, chosen, known)
    pred.ef_beats = float(np.mean([b["ef"] for b in pred.beats]))


def _chosen_es(es: np.ndarray, starts: list[int], frames: int, period: int,
               n_total: int) -> list[tuple[int, int]]:
    """(ES frame, clip start) of the ES frames whose clips `select_beat_clips` kept; an early
    start shared by several ES frames (a clip clipped at 0) goes to the first of them."""
    wanted, chosen = set(starts), []
    for e in np.sort(es):
        start = clip_ending_at(int(e), frames, period, n_total)
        if start in wanted:
            chosen.append((int(e), start))
            wanted.discard(start)
    return chosen


def _beat_rows(pred: VideoPrediction, es_starts: list[tuple[int, int]],
               ef_by_start: dict[int, float]) -> list[dict[str, Any]]:
    """One row per (ES, clip start): its ED (the last one before it, if any), areas, EF."""
    area = pred.area if pred.area is not None else np.zeros(pred.n_frames)
    ed_of = {b.es: b.ed for b in beats_from_extrema(pred.ed, pred.es)}
    rows = []
    for i, (es, start) in enumerate(es_starts):
        ed = ed_of.get(es)
        rows.append({"beat": i, "ed_frame": ed, "es_frame": es,
                     "ed_area": None if ed is None else int(area[ed]), "es_area": int(area[es]),
                     "ef": ef_by_start.get(start, math.nan),
                     "clip_start": start if start >= 0 else None})
    return rows


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
    settings: dict[str, int]  # max_beats, all_clips_stride, lv_class
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

    def predict_video(self, sample: Sample) -> VideoPrediction:
        """`predict_video` with this run's models and settings."""
        ef, seg = self.ef, self.seg
        return predict_video(ef.model if ef else None, seg.model if seg else None,
                             sample.frames, sample.fps, ef.input_spec if ef else None,
                             seg.input_spec if seg else None, self.batch_size, self.device,
                             **self.settings)


def predict(
    ef_checkpoint: str | Path | None,
    input: str | Path,
    out_dir: str | Path,
    seg_checkpoint: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH,
    device: str | torch.device = "cpu",
    overlays: bool = False,
    max_beats: int = DEFAULT_MAX_BEATS,
    all_clips_stride: int = 1,
    labels: str | Path | None = None,
    lv_class: int = LV_CLASS,
    progress: Callable[[str, str], None] | None = None,
    split: str | None = None,
) -> Path:
    """Predict every sample of `input` (store, folder, video or DICOM) into `out_dir`.

    Writes the contract (predictions.csv, problems.csv, run.json), beats.csv, frames.csv,
    masks/<id>.npz and (with `overlays`) overlays/<id>.avi. Resumable: a sample whose
    parts/<id>.json records the same checkpoints and settings is skipped; the CSVs are
    rebuilt from the parts at the end.
    `labels` is an optional label CSV (e.g. FileList.csv) for folder/file inputs.
    `progress(sample_id, status)` is called with "done", "skipped" or "failed".
    `split` keeps one split of a prepared store. Returns `out_dir`.
    """
    started = time.time()
    settings = {"max_beats": max_beats, "all_clips_stride": all_clips_stride,
                "lv_class": lv_class}
    _check_settings(batch_size=batch_size, **settings)
    ef_path, seg_path = resolve_pair(ef_checkpoint, seg_checkpoint)
    run = _Run(Path(out_dir), load_for_task(ef_path, EF_TASK), load_for_task(seg_path, SEG_TASK),
               settings, batch_size, device, overlays)
    run.key = {"ef": _hash(ef_path), "seg": _hash(seg_path), **settings}
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
                                                  "overlays": overlays})
    _write_tables(run, items, record)
    return run.out


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
        _save_masks(run.out / MASKS_DIR / f"{sid}.npz", pred.masks)
        if run.overlays and run.seg is not None:
            spec = run.seg.input_spec
            write_overlay_video(run.out / OVERLAYS_DIR / f"{sid}{OVERLAY_SUFFIX}",
                                conform(sample.frames, spec.size, spec.channels), pred.masks,
                                sample.fps or OVERLAY_FPS)
    row = {"sample_id": sid, **pred.summary()}
    if sample.labels.get("patient_id"):
        row["patient_id"] = str(sample.labels["patient_id"])
    frames = None if pred.area is None else {"lv_area": pred.area.tolist(),
                                             "ed": pred.ed.tolist(), "es": pred.es.tolist()}
    write_json(_part_path(run.out, sid), {"key": run.key, "prediction": row,
                                          "beats": pred.beats, "frames": frames})


def _save_masks(path: Path, masks: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, mask=masks.astype(np.uint8))


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
    preds, beats, frames = [], [], []
    for item in items:
        part = _read_part(run.out, item.sample_id)
        if part is None or part.get("key") != run.key:
            continue
        preds.append(part["prediction"])
        beats += [{"sample_id": item.sample_id, **b} for b in part["beats"]]
        if part["frames"] is not None:
            curve = part["frames"]
            frames.append(_frame_rows(item.sample_id, curve["lv_area"], curve["ed"],
                                      curve["es"]))
    columns = PREDICTION_COLUMNS[:1] + ["patient_id"] + PREDICTION_COLUMNS[1:]
    table = pd.DataFrame(preds, columns=columns)
    table["patient_id"] = table["patient_id"].fillna(table["sample_id"])
    write_contract(run.out, table, run.problems, record)
    write_csv(_typed_beats(pd.DataFrame(beats, columns=BEAT_COLUMNS)), run.out / "beats.csv")
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=FRAME_COLUMNS)
    write_csv(table, run.out / "frames.csv")


def _frame_rows(sample_id: str, area: Any, ed: Any, es: Any) -> pd.DataFrame:
    area = np.asarray(area, dtype=np.int64)
    index = np.arange(len(area))
    return pd.DataFrame({"sample_id": sample_id, "frame": index, "lv_area": area,
                         "is_ed": np.isin(index, ed).astype(int),
                         "is_es": np.isin(index, es).astype(int)})


def _typed_beats(table: pd.DataFrame) -> pd.DataFrame:
    """Integer columns that may be missing (ED before the first ES, no clip) as Int64."""
    for col in ("beat", "ed_frame", "es_frame", "ed_area", "es_area", "clip_start"):
        table[col] = pd.array(table[col], dtype="Int64")
    return table


def _check_settings(**values: int) -> None:
    for name, value in values.items():
        lowest = 0 if name == "lv_class" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise InputError(None, name, f"an integer >= {lowest}", repr(value))


def _hash(path: Path | None) -> str | None:
    return None if path is None else file_hash(path)
