"""EchoNet prediction over a whole input: every sample, resumable, written as the contract.

Each video goes through `video.predict_video` (EF one clip / all clips / beat by beat, LV
masks, areas, ED/ES frames and EDV/ESV; see `video`), its rows through `tables`.

`predict` writes the prediction contract (`cinelab.infer.contract`): predictions.csv with
``ef`` (beat by beat, the headline estimate), ``ef_all_clips``, ``ef_one_clip``, ``n_beats``
(beats averaged), ``n_beats_clipped`` (their clip starts at 0), ``n_beats_past_end`` (no
clip: not averaged), ``fallback``, ``edv``, ``esv``, ``n_frames``, ``fps``, ``ef_fps``,
``ef_beat_sd``/``ef_beat_sd_flag`` and, for a calibrated EF checkpoint, ``ef_lo``/``ef_hi``
and ``ood_score``/``ood_flag`` (`pipelines.echonet.uncertainty`, `calibrate`);
problems.csv; run.json. Beside them: beats.csv (one row per ES frame with ``flag`` and
``used``), clips.csv (EF of every all-clips start), frames.csv (LV area per frame, ED/ES
flags), masks/<id>.npz and overlays/<id>.avi.

A sample is written as parts/<id>.json once its masks (and overlay) are; a rerun with the
same checkpoints and settings skips it, and the CSVs are rebuilt from the parts at the end.
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

from cinelab.errors import InputError, Problem
from cinelab.explain.overlay import write_overlay_video
from cinelab.infer.contract import run_record, write_contract
from cinelab.infer.engines import engine_checkpoint
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.echonet.beats import DEFAULT_MAX_BEATS
from cinelab.pipelines.echonet.fastbeats import DEFAULT_SEG_STRIDE
from cinelab.pipelines.echonet.segment import LV_CLASS
from cinelab.pipelines.echonet.sources import (
    EF_TASK,
    SEG_TASK,
    Sample,
    SourceItem,
    conform,
    list_items,
    load_for_task,
    load_item,
    resolve_checkpoints,
    resolve_pair,
)
from cinelab.pipelines.echonet.tables import (
    BEAT_COLUMNS,
    CLIP_COLUMNS,
    FRAME_COLUMNS,
    PREDICTION_COLUMNS,
    frame_rows,
    mask_disc_volume,
    typed_beats,
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
from cinelab.pipelines.echonet.video import (
    DEFAULT_BATCH,
    FALLBACK_NO_EF_MODEL,
    FALLBACK_NO_SEGMENTATION,
    VideoPrediction,
    predict_ef_clips,
    predict_video,
    resample_to_fps,
    training_fps,
)
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint
from cinelab.utils import atomic_path, file_hash, read_json, write_csv, write_json

PIPELINE = "echonet"

# predict is this module's own; the rest are re-exported from `video`, `tables`, `sources`
__all__ = ["BEAT_COLUMNS", "CLIP_COLUMNS", "DEFAULT_BATCH", "FALLBACK_NO_EF_MODEL",
           "FALLBACK_NO_SEGMENTATION", "FRAME_COLUMNS", "PIPELINE", "PREDICTION_COLUMNS",
           "PROBLEM_COLUMNS", "VideoPrediction", "mask_disc_volume", "predict",
           "predict_ef_clips", "predict_video", "resample_to_fps", "resolve_checkpoints",
           "training_fps"]

PROBLEM_COLUMNS = list(Problem.__dataclass_fields__)
PARTS_DIR, MASKS_DIR, OVERLAYS_DIR = "parts", "masks", "overlays"
OVERLAY_SUFFIX = ".avi"
OVERLAY_FPS = 30.0  # frame rate of overlay videos when the input's is unknown


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
            frames.append(frame_rows(item.sample_id, curve["lv_area"], curve["ed"],
                                     curve["es"]))
    columns = PREDICTION_COLUMNS[:1] + ["patient_id"] + PREDICTION_COLUMNS[1:] + (
        ["ood_score"] if detector_of(run.uncertainty) is not None else [])
    table = pd.DataFrame(preds, columns=columns)
    table["patient_id"] = table["patient_id"].fillna(table["sample_id"])
    beats = typed_beats(pd.DataFrame(beats, columns=BEAT_COLUMNS))
    table = annotate_predictions(table, beats, run.uncertainty, run.coverage,
                                 run.beat_sd_threshold)
    write_contract(run.out, table, run.problems, record)
    write_csv(beats, run.out / "beats.csv")
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=FRAME_COLUMNS)
    write_csv(table, run.out / "frames.csv")
    table = pd.concat(clips, ignore_index=True) if clips else pd.DataFrame(columns=CLIP_COLUMNS)
    write_csv(table, run.out / "clips.csv")


def _check_settings(**values: int | None) -> None:
    for name, value in values.items():
        if name == "max_beats" and value is None:
            continue
        lowest = 0 if name == "lv_class" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise InputError(None, name, f"an integer >= {lowest}", repr(value))


def _hash(path: Path | None) -> str | None:
    return None if path is None else file_hash(path)
