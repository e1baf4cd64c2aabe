"""Greyscale and optical-flow clips from a prepared store, for two-stream video models.

A *layout* is the ordered list of streams a model takes, concatenated on the channel axis:
"grey" is one channel (the frames, 0-255; RGB stores are averaged to grey), "flow" two
(dx, dy in pixels per frame, dequantised from the store's uint8 flow, see `prep.flow`). Grey
and flow clips use the same frame indices: flow[t] is the motion from frame t to t + 1. A
stream of the layout that the model does not use (not *active*) is filled with zeros and
never read, so single-stream baselines need no flow (grey) or frames (flow).

Items are float32 (C, T, H, W) clips in those units; normalisation (grey mean/std, flow
scale) runs on the batch on the device, like every other store dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cinelab.data.datasets import DEFAULT_SEED, ClipDataset
from cinelab.data.flow_store import dequantise_flow, flow_files, read_flow
from cinelab.data.sampling import DEFAULT_PAD, clip_indices
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.utils import read_json

STREAMS = ("grey", "flow")
STREAM_CHANNELS = {"grey": 1, "flow": 2}
#: A plain video model's streams from its input channels (two_stream models say theirs).
LAYOUT_BY_CHANNELS = {1: ("grey",), 2: ("flow",), 3: ("grey", "flow")}
FLOW_STAT_SAMPLES = 64
MIN_FLOW_STD = 1e-3
FLOW_CACHE = 256


def check_layout(layout: Sequence[str], active: Sequence[str] | None = None
                 ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(layout, active streams), checked: known names, no repeats, active within layout."""
    layout = tuple(layout)
    active = layout if active is None else tuple(active)
    if not layout or len(set(layout)) != len(layout) or set(layout) - set(STREAMS):
        raise InputError(None, "streams", f"streams among {list(STREAMS)}, no repeats",
                         repr(list(layout)))
    if not active or set(active) - set(layout):
        raise InputError(None, "streams", f"active streams among {list(layout)}",
                         repr(list(active)))
    return layout, active


def layout_channels(layout: Sequence[str]) -> int:
    """Channels of a concatenated clip of `layout`."""
    return sum(STREAM_CHANNELS[s] for s in layout)


def model_streams(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(layout, active) of a model: its `input_layout`/`active_streams` attributes (two_stream),
    else from its first conv's input channels (1 grey, 2 flow, 3 grey + flow)."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "input_layout"):
        return check_layout(inner.input_layout, getattr(inner, "active_streams", None))
    conv = next((m for m in inner.modules() if isinstance(m, nn.Conv3d | nn.Conv2d)), None)
    channels = getattr(conv, "in_channels", None)
    if channels not in LAYOUT_BY_CHANNELS:
        raise InputError(None, "model.in_channels", f"one of {sorted(LAYOUT_BY_CHANNELS)} "
                         "(grey, flow, grey + flow)", repr(channels))
    return check_layout(LAYOUT_BY_CHANNELS[channels])


@lru_cache(maxsize=FLOW_CACHE)
def _flow_scale(meta_path: str, mtime_ns: int) -> float:
    return float(read_json(meta_path)["scale"])


def flow_scale(root: str | Path, sample_id: str) -> float:
    """The quantisation scale (px) of a sample's flow."""
    meta = flow_files(root, sample_id)["meta"]
    if not meta.exists():
        raise InputError(meta, "flow", "optical flow beside the frames",
                         "no flow for this sample", "run `cinelab rvf flow STORE` first")
    return _flow_scale(str(meta), meta.stat().st_mtime_ns)


def check_flow(store: PreparedStore, ids: Sequence[str]) -> None:
    """Raise naming the samples of `ids` that have no flow in the store."""
    missing = [i for i in ids if not flow_files(store.root, i)["meta"].exists()]
    if missing:
        raise InputError(store.root, "flow", "optical flow for every sample (flow stream)",
                         f"{len(missing)} sample(s) without flow, e.g. {missing[:3]}",
                         "run `cinelab rvf flow STORE` (or `cinelab rvf prepare`)")


def grey_frames(store: PreparedStore, sample_id: str, idx: np.ndarray | None = None
                ) -> np.ndarray:
    """uint8 (T, H, W) grey frames (all, or those at `idx`); RGB is averaged."""
    video = store.frames(sample_id)
    video = video if idx is None else video[idx]
    if video.ndim == 3:
        return np.asarray(video)
    if video.shape[-1] == 1:
        return np.asarray(video[..., 0])
    return np.rint(np.asarray(video, np.float32).mean(-1)).astype(np.uint8)


def stream_clip(store: PreparedStore, sample_id: str, idx: np.ndarray,
                layout: Sequence[str], active: Sequence[str]) -> np.ndarray:
    """float32 (C, T, H, W): the streams of `layout` at frame indices `idx` (inactive: 0)."""
    height, width = store.frames(sample_id).shape[1:3]
    parts = []
    for name in layout:
        if name not in active:
            parts.append(np.zeros((STREAM_CHANNELS[name], len(idx), height, width),
                                  np.float32))
        elif name == "grey":
            parts.append(grey_frames(store, sample_id, idx)[None].astype(np.float32))
        else:
            q = read_flow(store.root, sample_id, dequantise=False)[idx]
            flow = dequantise_flow(q, flow_scale(store.root, sample_id))
            parts.append(np.moveaxis(flow, -1, 0))
    return np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)


class StreamClipDataset(ClipDataset):
    """(float32 clip (C, T, H, W) of `layout`, target float32 ()) per sample id.

    Clips are drawn as in `ClipDataset` (random per sample and epoch, or the middle one).
    With `balance`, each epoch serves a class-balanced resample of the ids (binary target:
    every class equally likely; a weighted sampler that needs no sampler plumbing).
    """

    def __init__(self, store_root: str | Path | PreparedStore, ids: Sequence[str],
                 frames: int, period: int, layout: Sequence[str] = STREAMS,
                 active: Sequence[str] | None = None, target: str = "label",
                 random_clip: bool = True, seed: int = DEFAULT_SEED,
                 pad_mode: str = DEFAULT_PAD, balance: bool = False) -> None:
        super().__init__(store_root, ids, frames, period, target, random_clip, seed, pad_mode)
        self.layout, self.active = check_layout(layout, active)
        if "flow" in self.active:
            check_flow(self.store, self.ids)
        self.balance = bool(balance)
        self.order = self._draw_order()

    def set_epoch(self, epoch: int) -> None:
        """Draw the clips (and the balanced resample) of epoch `epoch` from now on."""
        super().set_epoch(epoch)
        self.order = self._draw_order()

    def _draw_order(self) -> np.ndarray:
        n = len(self.ids)
        if not self.balance:
            return np.arange(n)
        classes, inverse, counts = np.unique(self.targets, return_inverse=True,
                                             return_counts=True)
        weights = 1.0 / counts[inverse]
        rng = np.random.default_rng([self.seed, self.epoch, len(classes)])
        return rng.choice(n, size=n, replace=True, p=weights / weights.sum())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(self.order[index])
        sample_id = self.ids[i]
        n_total = int(self.store.frames(sample_id).shape[0])
        start = self.clip_start(sample_id, n_total)
        idx = clip_indices(start, self.frames, self.period, n_total, self.pad_mode)
        clip = stream_clip(self.store, sample_id, idx, self.layout, self.active)
        return torch.from_numpy(clip), torch.tensor(self.targets[i], dtype=torch.float32)


def flow_std(store: PreparedStore, ids: Sequence[str],
             max_samples: int = FLOW_STAT_SAMPLES) -> float:
    """Root mean square of the flow (px) over (up to `max_samples` of) `ids`."""
    check_flow(store, ids)
    chosen = list(ids)[:max_samples]
    total, count = 0.0, 0
    for sid in chosen:
        flow = read_flow(store.root, sid)
        total += float(np.square(flow, dtype=np.float64).sum())
        count += flow.size
    return max(float(np.sqrt(total / max(count, 1))), MIN_FLOW_STD)


def stream_normalisation(store: PreparedStore, ids: Sequence[str], layout: Sequence[str],
                         active: Sequence[str], mode: str = "dataset"
                         ) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of a layout's clip: grey from the store's statistics, flow
    zero-mean scaled by its RMS over `ids` ("dataset"); identity with mode "none"."""
    if mode == "none":
        return [0.0] * layout_channels(layout), [1.0] * layout_channels(layout)
    if mode != "dataset":
        raise InputError(None, "data.normalize", "'dataset' or 'none'", repr(mode))
    mean, std = [], []
    for name in layout:
        if name == "grey":
            mean.append(float(np.mean(store.mean)))
            std.append(float(np.sqrt(np.mean(np.square(store.std)))))
        else:
            scale = flow_std(store, ids) if name in active else 1.0
            mean += [0.0, 0.0]
            std += [scale, scale]
    return mean, std
