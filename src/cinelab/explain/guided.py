"""Guided backpropagation (captum) on video classifiers, per stream, as videos and strips.

For a two-stream model the attribution of the concatenated input (grey | dx | dy) splits into
the grey stream's saliency (|attribution| of the grey channel) and the flow stream's (the
norm of the dx, dy attributions): one backward pass explains both streams. Saliency is drawn
over the greyscale echo (`explain.overlay.overlay_heatmap`) and written, per video, as
``<sample_id>_<stream>.avi`` and a PNG strip of frames ``<sample_id>_<stream>.png``, plus
``saliency.csv`` (one row per video). File names hold only the store's (pseudonymous)
sample ids; nothing is read from DICOM headers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from captum.attr import GuidedBackprop
from torch import nn

from cinelab.data.sampling import all_clip_starts, clip_indices
from cinelab.data.store import PreparedStore
from cinelab.data.streams import STREAM_CHANNELS, grey_frames, model_streams, stream_clip
from cinelab.errors import InputError
from cinelab.explain.overlay import frame_strip, overlay_heatmap
from cinelab.infer.video_classify import clip_probabilities, read_predictions, select_ids
from cinelab.io.video import write_video
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint, load_checkpoint
from cinelab.utils import write_csv

DEFAULT_TOP = 4
STRIP_FRAMES = 8
DISPLAY_MIN_SIDE = 192  # frames are upscaled to at least this for viewing
SALIENCY_CLIP = 99.0  # percentile of the saliency mapped to the top of the colour map
VIDEO_FPS = 10.0
INDEX_FILE = "saliency.csv"
INDEX_COLUMNS = ["sample_id", "patient_id", "label", "prob", "clip_start", "stream",
                 "video", "strip"]


@dataclass
class Saliency:
    """One clip's saliency per stream (T, H, W) and its greyscale frames (T, H, W) uint8."""

    sample_id: str
    start: int
    frames: np.ndarray
    maps: dict[str, np.ndarray]


def _plain_relus(model: nn.Module) -> nn.Module:
    """A copy of the model whose ReLUs are not in place (captum's hooks need that)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def guided_backprop(model: nn.Module, clip: torch.Tensor, target: int = 0) -> np.ndarray:
    """Guided-backprop attribution (C, T, H, W) of output `target` for a normalised clip
    (1, C, T, H, W) or (C, T, H, W)."""
    x = clip[None] if clip.ndim == 4 else clip
    if x.ndim != 5 or len(x) != 1:
        raise ValueError(f"clip: expected (1, C, T, H, W), found {tuple(clip.shape)}")
    explainer = GuidedBackprop(_plain_relus(model))
    with warnings.catch_warnings():  # captum announces its (temporary) ReLU hooks
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        attr = explainer.attribute(x.detach().clone().requires_grad_(True), target=target)
    return attr[0].detach().float().cpu().numpy()


def stream_saliency(attr: np.ndarray, layout: Sequence[str],
                    active: Sequence[str]) -> dict[str, np.ndarray]:
    """Per active stream, the attribution magnitude (T, H, W): |grey|, ||(dx, dy)||."""
    out, start = {}, 0
    for name in layout:
        part = attr[start:start + STREAM_CHANNELS[name]]
        start += STREAM_CHANNELS[name]
        if name in active:
            out[name] = np.sqrt(np.square(part).sum(axis=0)).astype(np.float32)
    return out


def explain_clip(model: nn.Module, store: PreparedStore, sample_id: str, spec: InputSpec,
                 start: int | None = None) -> Saliency:
    """Guided backprop of one clip of a video (the middle clip by default)."""
    layout, active = model_streams(model)
    n_total = int(store.frames(sample_id).shape[0])
    frames, period = spec.frames or n_total, spec.period or 1
    if start is None:
        starts = all_clip_starts(n_total, frames, period)
        start = int(starts[(len(starts) - 1) // 2])
    idx = clip_indices(int(start), frames, period, n_total)
    clip = torch.from_numpy(stream_clip(store, sample_id, idx, layout, active))
    mean = torch.tensor(spec.mean, dtype=torch.float32).reshape(-1, 1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).reshape(-1, 1, 1, 1)
    attr = guided_backprop(model, (clip - mean) / std)
    return Saliency(sample_id, int(start), grey_frames(store, sample_id, idx),
                    stream_saliency(attr, layout, active))


def _display(frames: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Frames upscaled for viewing, with the heat (clipped at its top percentile) on top."""
    factor = max(1, int(np.ceil(DISPLAY_MIN_SIDE / min(frames.shape[1:3]))))
    size = (frames.shape[2] * factor, frames.shape[1] * factor)
    big = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])
    top = float(np.percentile(heat, SALIENCY_CLIP)) if heat.size else 0.0
    heat = np.minimum(heat, top) if top > 0 else heat
    smooth = np.stack([cv2.GaussianBlur(h, (0, 0), 1.0) for h in heat])
    return overlay_heatmap(big, smooth)


def write_saliency(sal: Saliency, out: str | Path, fps: float = VIDEO_FPS,
                   strip_frames: int = STRIP_FRAMES) -> dict[str, dict[str, Path]]:
    """Per stream: an AVI of the overlaid clip and a PNG strip of evenly spaced frames."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for stream, heat in sal.maps.items():
        shown = _display(sal.frames, heat)
        k = min(strip_frames, len(shown))
        picks = np.unique(np.linspace(0, len(shown) - 1, k).round().astype(int))
        video = write_video(out / f"{sal.sample_id}_{stream}.avi", shown, fps)
        strip = out / f"{sal.sample_id}_{stream}.png"
        frame_strip(shown, picks.tolist(), strip)
        files[stream] = {"video": video, "strip": strip}
    return files


def most_confident(predictions: pd.DataFrame, top: int) -> list[str]:
    """The `top` sample ids whose probabilities are furthest from 0.5."""
    order = (predictions["prob"] - 0.5).abs().sort_values(ascending=False, kind="mergesort")
    return predictions.loc[order.index[:top], "sample_id"].astype(str).tolist()


def _probabilities(loaded: LoadedCheckpoint, store: PreparedStore,
                   ids: Sequence[str]) -> pd.DataFrame:
    """Middle-clip probabilities of `ids` (when no prediction table is given)."""
    spec, rows = loaded.input_spec, []
    for sid in ids:
        starts = all_clip_starts(int(store.frames(sid).shape[0]), spec.frames or 1,
                                 spec.period or 1)
        start = int(starts[(len(starts) - 1) // 2])
        prob = clip_probabilities(loaded.model, store, sid, spec, [start])[0]
        rows.append({"sample_id": sid, "prob": float(prob)})
    return pd.DataFrame(rows, columns=["sample_id", "prob"])


def explain_videos(checkpoint: str | Path | LoadedCheckpoint,
                   store: str | Path | PreparedStore, out: str | Path,
                   sample_ids: Sequence[str] | None = None, top: int = DEFAULT_TOP,
                   predictions: str | Path | pd.DataFrame | None = None,
                   split: str | None = None,
                   progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Saliency videos and strips for `sample_ids`, or for the `top` most confident videos
    (of `predictions`, a table or prediction folder; else of the store/split, one clip
    each). Writes them and saliency.csv into `out`; returns the index table."""
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) \
        else load_checkpoint(checkpoint)
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    table = _prediction_table(predictions)
    if sample_ids is None:
        if table is None:
            table = _probabilities(loaded, store, select_ids(store, split))
        sample_ids = most_confident(table, top)
    ids = select_ids(store, ids=list(sample_ids))
    probs = {} if table is None else dict(zip(table["sample_id"].astype(str), table["prob"],
                                              strict=True))
    m = store.manifest.set_index(store.manifest["sample_id"].astype(str))
    rows = []
    for sid in ids:
        sal = explain_clip(loaded.model, store, sid, loaded.input_spec)
        for stream, files in write_saliency(sal, out).items():
            rows.append({"sample_id": sid, "patient_id": m.loc[sid].get("patient_id", ""),
                         "label": m.loc[sid].get(loaded.input_spec.target or "label"),
                         "prob": probs.get(sid), "clip_start": sal.start, "stream": stream,
                         "video": files["video"].name, "strip": files["strip"].name})
        if progress is not None:
            progress(sid)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    write_csv(index, Path(out) / INDEX_FILE)
    return index


def _prediction_table(predictions: str | Path | pd.DataFrame | None) -> pd.DataFrame | None:
    if predictions is None or isinstance(predictions, pd.DataFrame):
        return predictions
    path = Path(predictions)
    if path.is_dir():
        return read_predictions(path)
    if not path.exists():
        raise InputError(path, "predictions", "a predictions.csv or its folder",
                         "nothing at that path")
    return pd.read_csv(path, dtype={"sample_id": str})
