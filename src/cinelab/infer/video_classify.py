"""Binary video classification on a prepared store: clip-averaged probabilities per video and
per patient (inference only: metrics are computed by `cinelab.evaluate` from these tables).

A video's probability is the mean of the model's probabilities over N random clips
(`clip_starts`: drawn from a generator keyed on (seed, sample id), so a rerun, another
worker count or another order gives the same clips); a patient's is the mean over the
patient's videos. Clips carry the streams the model takes (`data.streams`).

Output folder:
  predictions.csv  sample_id, patient_id, split, label, class, prob, n_clips
  patients.csv     patient_id, label, class, prob, n_videos
  clips.csv        sample_id, clip, start, prob (every clip)
  input.json       checkpoint, store, split, clips, seed
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.data.sampling import all_clip_starts, clip_indices, random_clip_start
from cinelab.data.store import PreparedStore
from cinelab.data.streams import check_flow, model_streams, stream_clip
from cinelab.errors import InputError
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint, load_checkpoint
from cinelab.utils import write_csv, write_json

DEFAULT_CLIPS = 10
DEFAULT_BATCH = 8
DEFAULT_THRESHOLD = 0.5
ALL_CLIPS = "all"
PREDICTION_COLUMNS = ["sample_id", "patient_id", "split", "label", "class", "prob", "n_clips"]
PATIENT_COLUMNS = ["patient_id", "label", "class", "prob", "n_videos"]
CLIP_COLUMNS = ["sample_id", "clip", "start", "prob"]
FILES = {"videos": "predictions.csv", "patients": "patients.csv", "clips": "clips.csv",
         "input": "input.json"}


@dataclass
class ClassifyResult:
    """Tables of one prediction run (and the clips/seed it used)."""

    videos: pd.DataFrame
    patients: pd.DataFrame
    clips: pd.DataFrame
    info: dict[str, Any]
    out: Path | None = None


def _key(sample_id: str) -> int:
    return zlib.crc32(str(sample_id).encode("utf-8"))


def clip_starts(sample_id: str, n_total: int, frames: int, period: int,
                n_clips: int | str, seed: int = 0) -> np.ndarray:
    """Start frames of a video's clips: `n_clips` random ones (seeded per sample) or "all"."""
    if n_clips == ALL_CLIPS:
        return all_clip_starts(n_total, frames, period)
    if isinstance(n_clips, bool) or not isinstance(n_clips, int) or n_clips < 1:
        raise InputError(None, "clips", f"a positive number of clips or {ALL_CLIPS!r}",
                         repr(n_clips))
    rng = np.random.default_rng([int(seed), _key(sample_id)])
    return np.array([random_clip_start(rng, n_total, frames, period) for _ in range(n_clips)],
                    dtype=np.int64)


@torch.inference_mode()
def clip_probabilities(model: nn.Module, store: PreparedStore, sample_id: str,
                       spec: InputSpec, starts: Sequence[int],
                       batch_size: int = DEFAULT_BATCH,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """Positive-class probability of the clip at each start, `batch_size` clips at a time."""
    layout, active = model_streams(model)
    n_total = int(store.frames(sample_id).shape[0])
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1, 1)
    model = model.eval().to(device)
    out = []
    for first in range(0, len(starts), batch_size):
        clips = np.stack([stream_clip(store, sample_id,
                                      clip_indices(int(s), spec.frames, spec.period or 1,
                                                   n_total), layout, active)
                          for s in starts[first:first + batch_size]])
        x = (torch.from_numpy(clips).to(device) - mean) / std
        out.append(model(x).float().reshape(len(clips), -1)[:, 0].sigmoid().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def predict_videos(loaded: LoadedCheckpoint, store: PreparedStore, ids: Sequence[str],
                   n_clips: int | str = DEFAULT_CLIPS, seed: int = 0,
                   batch_size: int = DEFAULT_BATCH, device: str | torch.device = "cpu",
                   progress: Callable[[str], None] | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-video table, per-clip table) for `ids` of `store`."""
    spec = loaded.input_spec
    if spec.frames is None:
        raise InputError(None, "input_spec.frames", "a clip length (a video model)", "None")
    layout, active = model_streams(loaded.model)
    if "flow" in active:
        check_flow(store, ids)
    m = store.manifest.set_index(store.manifest["sample_id"].astype(str))
    videos, clips = [], []
    for sid in ids:
        n_total = int(store.frames(sid).shape[0])
        starts = clip_starts(sid, n_total, spec.frames, spec.period or 1, n_clips, seed)
        probs = clip_probabilities(loaded.model, store, sid, spec, starts, batch_size, device)
        clips += [{"sample_id": sid, "clip": i, "start": int(s), "prob": float(p)}
                  for i, (s, p) in enumerate(zip(starts, probs, strict=True))]
        videos.append({"sample_id": sid, "prob": float(probs.mean()), "n_clips": len(probs),
                       **_row_labels(m.loc[sid], spec.target)})
        if progress is not None:
            progress(sid)
    return (pd.DataFrame(videos, columns=PREDICTION_COLUMNS),
            pd.DataFrame(clips, columns=CLIP_COLUMNS))


def _row_labels(row: pd.Series, target: str | None) -> dict[str, Any]:
    label = pd.to_numeric(pd.Series([row.get(target or "label")]), errors="coerce").iloc[0]
    return {"patient_id": str(row.get("patient_id", "")), "split": str(row.get("split", "")),
            "label": float(label), "class": str(row.get("class", "") or "")}


def patient_table(videos: pd.DataFrame) -> pd.DataFrame:
    """Per patient: the mean probability of its videos, its label and class, video count."""
    if videos.empty:
        return pd.DataFrame(columns=PATIENT_COLUMNS)
    grouped = videos.groupby("patient_id", sort=True)
    out = grouped.agg(label=("label", "first"), prob=("prob", "mean"),
                      n_videos=("sample_id", "size")).reset_index()
    out["class"] = grouped["class"].first().to_numpy()
    return out[PATIENT_COLUMNS]


def select_ids(store: PreparedStore, split: str | None = None,
               ids: Sequence[str] | None = None) -> list[str]:
    """Sample ids: `ids` as given, else those of `split`, else every sample."""
    if ids is not None:
        unknown = sorted(set(ids) - set(store.ids))
        if unknown:
            raise InputError(store.root / "manifest.csv", "sample_id", "ids of the store",
                             f"unknown ids {unknown[:5]}")
        return list(ids)
    chosen = store.ids if split is None else store.split_ids(split)
    if not chosen:
        raise InputError(store.root / "manifest.csv", "split", "at least one sample",
                         f"none in split {split!r}")
    return chosen


def recipe_clips(loaded: LoadedCheckpoint) -> int | str:
    """The number of clips the checkpoint's recipe asks for (data.clips), else the default."""
    value = loaded.recipe.get("data", {}).get("clips", DEFAULT_CLIPS)
    ok = value == ALL_CLIPS or (isinstance(value, int) and not isinstance(value, bool)
                                and value >= 1)
    return value if ok else DEFAULT_CLIPS


def predict_classification(checkpoint: str | Path | LoadedCheckpoint,
                           store: str | Path | PreparedStore, out: str | Path | None = None,
                           split: str | None = None, ids: Sequence[str] | None = None,
                           n_clips: int | str | None = None, seed: int = 0,
                           batch_size: int = DEFAULT_BATCH, device: str = "cpu",
                           progress: Callable[[str], None] | None = None) -> ClassifyResult:
    """Predict every chosen video of a store; write the tables to `out` (when given)."""
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) \
        else load_checkpoint(checkpoint)
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    chosen = select_ids(store, split, ids)
    clips = recipe_clips(loaded) if n_clips is None else n_clips
    videos, clip_table = predict_videos(loaded, store, chosen, clips, seed, batch_size,
                                        device, progress)
    result = ClassifyResult(videos, patient_table(videos), clip_table,
                            {"n_clips": clips, "seed": seed})
    if out is not None:
        result.out = write_classification(result, out, {
            "checkpoint": None if isinstance(checkpoint, LoadedCheckpoint) else str(checkpoint),
            "store": str(store.root), "split": split, "clips": clips, "seed": seed})
    return result


def write_classification(result: ClassifyResult, out: str | Path,
                         inputs: dict[str, Any]) -> Path:
    """Write a ClassifyResult's files (see the module docstring) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result.videos, out / FILES["videos"])
    write_csv(result.patients, out / FILES["patients"])
    write_csv(result.clips, out / FILES["clips"])
    write_json(out / FILES["input"], inputs)
    return out


def read_predictions(pred_dir: str | Path) -> pd.DataFrame:
    """predictions.csv of a prediction folder (``prob``: also from the contract's
    ``probability`` column)."""
    path = Path(pred_dir) / FILES["videos"]
    if not path.exists():
        raise InputError(path, "predictions", "a folder written by `cinelab predict`",
                         "no predictions.csv there")
    table = pd.read_csv(path, dtype={"sample_id": str, "patient_id": str})
    if "prob" not in table.columns and "probability" in table.columns:
        table["prob"] = table["probability"]
    return table
