"""RVF predict: clip-averaged probabilities per video, written as the one prediction contract.

A video's probability is the mean over N seeded random clips (`clip_starts`) of the model's
positive-class probability; for a two-stream model each stream's own probability is averaged
too (``p_grey``, ``p_flow``). Files in `out`:

  predictions.csv  sample_id, patient_id, split, probability, prediction, threshold, n_clips,
                   p_<stream> (two-stream models)
  patients.csv     patient_id, probability (mean over the patient's videos), n_videos
  clips.csv        sample_id, clip, start, probability (every clip)
  problems.csv     the store's problems (inputs that could not be prepared)
  run.json         the contract's run record + store, split, clips, seed, threshold

The threshold is, in order: options "threshold", the checkpoint's recorded one
(``extra.threshold``), 0.5; run.json records which (``threshold_source``). A calibrated
checkpoint (`cinelab calibrate`, see `uncertainty`) adds ``probability_raw`` (the model's)
beside the calibrated ``probability``, the threshold mapped alike (same decisions), and
``ood_score`` / ``ood_flag`` when it carries an OOD detector.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.data.sampling import clip_indices
from cinelab.data.store import PreparedStore
from cinelab.data.streams import check_flow, model_streams, stream_clip
from cinelab.errors import InputError
from cinelab.infer.contract import read_problems, run_record, write_contract
from cinelab.infer.engine_outputs import OUTPUT_NAME, FeatureSpec, module_name
from cinelab.infer.engines import engine_checkpoint
from cinelab.infer.video_classify import DEFAULT_THRESHOLD, clip_starts, recipe_clips, select_ids
from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf.prepare import store_for
from cinelab.pipelines.rvf.uncertainty import (
    annotate_rvf,
    feature_modules,
    ood_detector,
    read_rvf_state,
    stream_features,
    video_feature,
)
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint, load_checkpoint
from cinelab.utils import write_csv

PIPELINE = "rvf"
TASK = "video_classification"
MODEL_FILE = "model.pt"
PREPARED_DIR = "prepared"
SCORE = "probability"
STREAM_PREFIX = "p_"
PATIENTS_FILE, CLIPS_FILE = "patients.csv", "clips.csv"
TAP_PREFIX = "stream."  # an engine's output of one stream's logits


def checkpoint_path(model: str | Path) -> Path:
    """The checkpoint file of `model`: the file itself, or a run folder's model.pt."""
    model = Path(model)
    if model.is_dir():
        model = model / MODEL_FILE
    if not model.is_file():
        raise InputError(model, "model", "a checkpoint (model.pt) or a run folder holding "
                         "one", "no such file", fix="train one with `cinelab rvf train`")
    return model


def _has_stream_logits(model: nn.Module) -> bool:
    inner = getattr(model, "module", model)
    return hasattr(inner, "stream_outputs") and bool(getattr(inner, "stream_logits", False))


@torch.inference_mode()
def clip_outputs(model: nn.Module, store: PreparedStore, sample_id: str, spec: InputSpec,
                 starts: Sequence[int], batch_size: int = 8,
                 device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Per clip: the fused probability (``probability``) and, for a two-stream model with
    per-stream logits, each stream's own (``p_<stream>``)."""
    layout, active = model_streams(model)
    n_total = int(store.frames(sample_id).shape[0])
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1, 1)
    model = model.eval().to(device)
    engine = not isinstance(model, nn.Module)  # `infer.engines.Engine`: one named-output run
    streams = _has_stream_logits(model)
    out: dict[str, list[np.ndarray]] = {SCORE: []}
    for first in range(0, len(starts), batch_size):
        clips = np.stack([stream_clip(store, sample_id,
                                      clip_indices(int(s), spec.frames or 1, spec.period or 1,
                                                   n_total), layout, active)
                          for s in starts[first:first + batch_size]])
        x = (torch.from_numpy(clips).to(device) - mean) / std
        if engine:
            found = model.outputs(x)  # type: ignore[operator]
            fused = found[OUTPUT_NAME]
            parts = {k[len(TAP_PREFIX):]: v for k, v in found.items() if k.startswith(TAP_PREFIX)}
        else:
            parts = model.stream_outputs(x) if streams else {}
            fused = model.fuse(parts) if streams else model(x)
        for name, logits in {SCORE: fused, **{STREAM_PREFIX + k: v for k, v in
                                              parts.items()}}.items():
            prob = logits.float().reshape(len(clips), -1)[:, 0].sigmoid().cpu().numpy()
            out.setdefault(name, []).append(prob)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def predict_store(loaded: LoadedCheckpoint, store: PreparedStore, ids: Sequence[str],
                  n_clips: int | str, seed: int = 0, batch_size: int = 8,
                  device: str = "cpu", features: list[np.ndarray | None] | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-video table, per-clip table): the mean of each output over the video's clips.
    With a `features` list, each video's penultimate feature (`video_feature`) is appended."""
    spec = loaded.input_spec
    if spec.frames is None:
        raise InputError(None, "input_spec.frames", "a clip length (a video model)", "None")
    if "flow" in model_streams(loaded.model)[1]:
        check_flow(store, ids)
    m = store.manifest.set_index(store.manifest["sample_id"].astype(str))
    videos, clips = [], []
    for sid in ids:
        n_total = int(store.frames(sid).shape[0])
        starts = clip_starts(sid, n_total, spec.frames, spec.period or 1, n_clips, seed)
        with _features(None if features is None else loaded.model) as found:
            outs = clip_outputs(loaded.model, store, sid, spec, starts, batch_size, device)
        if features is not None:
            features.append(video_feature(found))
        clips.append(pd.DataFrame({"sample_id": sid, "clip": np.arange(len(starts)),
                                   "start": starts, **outs}))
        row = m.loc[sid]
        videos.append({"sample_id": sid, "patient_id": str(row.get("patient_id", sid)),
                       "split": str(row.get("split", "") or ""),
                       **{k: float(v.mean()) for k, v in outs.items()},
                       "n_clips": len(starts)})
    return pd.DataFrame(videos), pd.concat(clips, ignore_index=True)


def model_threshold(loaded: LoadedCheckpoint, options: Options) -> tuple[float, str]:
    """(threshold, its source): options "threshold" (source: options "threshold_source" or
    "given"), else the checkpoint's recorded threshold, else 0.5."""
    value, source = options.get("threshold"), options.get("threshold_source", "given")
    if value is None:
        extra = loaded.info.get("extra") or {}
        value, source = (DEFAULT_THRESHOLD, "default") if extra.get("threshold") is None \
            else (extra["threshold"], extra.get("threshold_source", "checkpoint"))
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise InputError(None, "threshold", "a probability between 0 and 1", repr(value))
    return value, str(source)


def patient_probabilities(videos: pd.DataFrame) -> pd.DataFrame:
    """Per patient: the mean probability of its videos and their number."""
    scores = [c for c in videos.columns if c == SCORE or c.startswith(STREAM_PREFIX)]
    grouped = videos.groupby("patient_id", sort=True)
    table = grouped[scores].mean()
    table["n_videos"] = grouped.size()
    return table.reset_index()


def predict_rvf(model: Path, input_path: Path, out: Path, options: Options) -> Path:
    """The pipeline's predict: see the module docstring. `input_path` is a prepared store,
    an ingest folder or a raw RVF cohort (prepared under ``out/prepared``)."""
    started = time.time()
    ckpt, out = checkpoint_path(model), Path(out)
    state, engine = read_rvf_state(ckpt), str(options.get("engine", "eager"))
    loaded = rvf_engine(load_checkpoint(ckpt), engine, options.device,
                        ood_detector(state) is not None, ckpt)
    size = loaded.input_spec.size
    size = size if isinstance(size, int) else int(size[0])
    store = PreparedStore(store_for(input_path, out / PREPARED_DIR, size, options.extra))
    ids = select_ids(store, options.split, options.get("ids"))
    clips = options.get("clips") or recipe_clips(loaded)
    found: list[np.ndarray | None] | None = [] if ood_detector(state) is not None else None
    videos, clip_table = predict_store(loaded, store, ids, clips, options.seed,
                                       options.batch_size, options.device, found)
    threshold, source = model_threshold(loaded, options)
    videos.insert(4, "prediction", (videos[SCORE] >= threshold).astype(int))
    videos.insert(5, "threshold", threshold)
    videos = annotate_rvf(videos, state, features=stacked_features(found))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(patient_probabilities(videos), out / PATIENTS_FILE)
    write_csv(clip_table, out / CLIPS_FILE)
    run = run_record(PIPELINE, TASK, ckpt, input_path, started, store=str(store.root),
                     split=options.split, clips=clips, seed=options.seed, threshold=threshold,
                     threshold_source=source,
                     recipe=loaded.recipe.get("name"), input_spec=_spec(loaded.input_spec),
                     class_names=(loaded.info.get("extra") or {}).get("class_names"),
                     engine={"name": engine, **dict(getattr(loaded.model, "info", {}))})
    return write_contract(out, videos, read_problems(store.root), run)


def rvf_engine(loaded: LoadedCheckpoint, engine: str, device: str, features: bool,
               path: Path | None = None) -> LoadedCheckpoint:
    """The checkpoint behind `engine` (`infer.engines`): the graph also outputs each
    stream's logits (``stream.<name>``, two-stream models) and, with `features`, the
    streams' penultimate features `stream_features` takes (concatenated per clip)."""
    model = loaded.model
    inner = getattr(model, "module", model)
    taps = {TAP_PREFIX + n: f"streams.{n}" for n in inner.active_streams} \
        if _has_stream_logits(model) else {}
    return engine_checkpoint(loaded, engine, device, features=feature_spec(model)
                             if features else None, taps=taps, path=path)


def feature_spec(model: nn.Module) -> FeatureSpec:
    """`stream_features`' modules as an engine's features (inputs, mean-pooled)."""
    return FeatureSpec(tuple(module_name(model, m) for m in feature_modules(model)), "input")


@contextmanager
def _features(model: Any) -> Iterator[list[list[torch.Tensor]]]:
    """`stream_features` of a module; of an engine, its features output (one list: the
    modules' features concatenated per clip, so `video_feature` gives the same row)."""
    if model is None or isinstance(model, nn.Module):
        with stream_features(model) as found:
            yield found
        return
    with model.feature_capture(feature_spec(model.module)) as one:
        yield [one]


def stacked_features(found: list[np.ndarray | None] | None) -> np.ndarray | None:
    """(videos, D) features, NaN rows where a video gave none (None without features)."""
    if not found:
        return None
    width = next((len(f) for f in found if f is not None), 0)
    if width == 0:
        return None
    return np.stack([np.full(width, np.nan) if f is None else f for f in found])


def _spec(spec: InputSpec) -> dict[str, Any]:
    return asdict(spec)
