"""Clip-averaged predictions of any video-regression checkpoint on prepared-store samples.

For each sample every clip the checkpoint's input spec allows (``frames`` frames every
``period``, starts every `stride` frames, see `cinelab.data.sampling.all_clip_starts`) is
predicted and the clip predictions are averaged: column ``pred``. With test-time
augmentation (`tta` > 1 views of `cinelab.data.mri_augment.cine_tta_views`: identity, cyclic
time shifts, small rotations and scalings), each clip is also predicted under every view and
everything is averaged: column ``pred_aug`` (the identity view included). Views are applied
to the uint8-valued clips before normalisation, as training augmentation is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.data.mri_augment import CineTransform, cine_tta_views
from cinelab.data.sampling import all_clip_starts, clip_indices
from cinelab.data.store import PreparedStore
from cinelab.data.transforms import Normalize
from cinelab.errors import InputError
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint, load_checkpoint
from cinelab.train.cv import register_cv_predictor

DEFAULT_BATCH = 16
DEFAULT_TTA = 5
PRED, PRED_AUG = "pred", "pred_aug"


def _clips(store: PreparedStore, ids: Sequence[str], spec: InputSpec,
           stride: int) -> Iterator[tuple[int, np.ndarray]]:
    """(sample index, uint8 clip (F, H, W, C)) for every clip of every sample."""
    frames, period = int(spec.frames or 1), int(spec.period or 1)
    for i, sid in enumerate(ids):
        video = store.frames(sid)
        video = video[..., None] if video.ndim == 3 else video
        for start in all_clip_starts(len(video), frames, period, stride):
            yield i, np.asarray(video[clip_indices(int(start), frames, period, len(video))])


def _batches(items: Iterator[tuple[int, np.ndarray]],
             size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    owners, clips = [], []
    for owner, clip in items:
        owners.append(owner)
        clips.append(clip)
        if len(clips) == size:
            yield np.asarray(owners), np.stack(clips)
            owners, clips = [], []
    if clips:
        yield np.asarray(owners), np.stack(clips)


@torch.inference_mode()
def predict_clip_means(model: nn.Module, spec: InputSpec, store: PreparedStore,
                       ids: Sequence[str], views: Sequence[CineTransform],
                       batch_size: int = DEFAULT_BATCH, device: str | torch.device = "cpu",
                       stride: int = 1) -> np.ndarray:
    """(n_samples, n_views) clip-averaged first outputs under each view."""
    _check_spec(store, spec)
    model = model.eval().to(device)
    normalize = Normalize(spec.mean, spec.std)
    sums = np.zeros((len(ids), len(views)))
    counts = np.zeros(len(ids))
    for owners, clips in _batches(_clips(store, ids, spec, stride), batch_size):
        x = torch.from_numpy(clips).to(device).permute(0, 4, 1, 2, 3).float()
        for v, view in enumerate(views):
            out = model(normalize(view(x))).reshape(len(owners), -1)[:, 0]
            np.add.at(sums[:, v], owners, out.float().cpu().numpy())
        np.add.at(counts, owners, 1)
    return sums / np.maximum(counts, 1)[:, None]


def _check_spec(store: PreparedStore, spec: InputSpec) -> None:
    """The store's frames must have the checkpoint's size and channels."""
    shape = store.frames(store.ids[0]).shape
    channels = shape[3] if len(shape) == 4 else 1
    if list(shape[1:3]) != [spec.size, spec.size] or channels != spec.channels:
        raise InputError(store.root, "frames", f"{spec.size}x{spec.size} px, {spec.channels} "
                         "channel(s) (the checkpoint's input spec)",
                         f"{shape[1]}x{shape[2]} px, {channels} channel(s)",
                         "prepare the store at the checkpoint's size")


@register_cv_predictor("video_regression", "regression", "cine_regression",
                       "video_classification")
def predict_store(checkpoint: str | Path | LoadedCheckpoint,
                  store: str | Path | PreparedStore,
                  ids: Sequence[str] | None = None, tta: int = DEFAULT_TTA,
                  batch_size: int = DEFAULT_BATCH, device: str | torch.device = "cpu",
                  stride: int = 1) -> pd.DataFrame:
    """sample_id, pred (clip mean), pred_aug (clip and TTA mean; NaN when tta == 1), the
    target column of the checkpoint (when the manifest has it). `checkpoint` may be loaded
    already (e.g. behind an execution engine, `infer.engines.engine_checkpoint`)."""
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else \
        load_checkpoint(checkpoint)
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    ids = store.ids if ids is None else [str(i) for i in ids]
    views = cine_tta_views(max(1, int(tta)))
    out = pd.DataFrame({"sample_id": ids})
    if not ids:
        return out.assign(**{PRED: [], PRED_AUG: []})
    values = predict_clip_means(loaded.model, loaded.input_spec, store, ids, views,
                                batch_size, device, stride)
    out[PRED] = values[:, 0]
    out[PRED_AUG] = values.mean(axis=1) if len(views) > 1 else np.nan
    target = loaded.input_spec.target
    if target and target in store.manifest.columns:
        labels = store.manifest.set_index(store.manifest["sample_id"].astype(str))[target]
        out[target] = pd.to_numeric(labels.reindex(ids), errors="coerce").to_numpy()
    return out
