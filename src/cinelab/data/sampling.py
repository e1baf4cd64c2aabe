"""Clip sampling from uint8 videos (T, H, W, C): indices, start positions and batches.

A clip is `frames` frames taken every `period` frames from `start`; it covers
`span = (frames - 1) * period + 1` frames of the video.

Short videos. EchoNet-Dynamic appends black (zero) frames when a video is shorter than one
clip. Here the clip is padded with real frames instead, chosen by `pad`:

- ``"loop"`` (default): indices wrap around (``i % n_total``), as if the loop restarted;
  the motion stays cardiac-like apart from one seam.
- ``"edge"``: indices past the end repeat the last frame (the heart freezes).

Batches are built by fancy-indexing the (memory-mapped) uint8 array one batch at a time, so
the whole video is never converted to float: peak memory is about one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

PAD_MODES = ("loop", "edge")
DEFAULT_PAD = "loop"


def clip_span(frames: int, period: int) -> int:
    """Number of video frames one clip covers: (frames - 1) * period + 1."""
    _check_positive(frames=frames, period=period)
    return (frames - 1) * period + 1


def clip_indices(start: int, frames: int, period: int, n_total: int,
                 pad: str = DEFAULT_PAD) -> np.ndarray:
    """Frame indices start, start + period, ... (`frames` of them), padded past the end.

    Indices beyond the last frame wrap around (``pad="loop"``) or repeat the last frame
    (``pad="edge"``); see the module docstring.
    """
    _check_positive(frames=frames, period=period, n_total=n_total)
    if pad not in PAD_MODES:
        raise ValueError(f"pad: expected one of {PAD_MODES}, found {pad!r}")
    if not 0 <= start < n_total:
        raise ValueError(f"start: expected 0 <= start < n_total={n_total}, found {start}")
    idx = start + period * np.arange(frames, dtype=np.int64)
    if pad == "loop":
        return idx % n_total
    return np.minimum(idx, n_total - 1)


def random_clip_start(rng: np.random.Generator, n_total: int, frames: int, period: int) -> int:
    """A uniformly drawn start such that the clip fits; 0 when the video is too short."""
    last = _last_start(n_total, frames, period)
    return int(rng.integers(0, last + 1))


def all_clip_starts(n_total: int, frames: int, period: int, stride: int = 1) -> np.ndarray:
    """Every start (every `stride` frames) such that the clip fits; [0] for short videos."""
    _check_positive(stride=stride)
    return np.arange(0, _last_start(n_total, frames, period) + 1, stride, dtype=np.int64)


def clip_ending_at(end_frame: int, frames: int, period: int, n_total: int) -> int:
    """Start of the clip whose last frame is `end_frame`.

    Fallback: when `end_frame` is too early for a full clip ending there, the clip starts
    at 0 (it then ends after `end_frame`, or is padded if the video is short).
    """
    _check_positive(n_total=n_total)
    if not 0 <= end_frame < n_total:
        raise ValueError(f"end_frame: expected 0 <= end_frame < n_total={n_total}, "
                         f"found {end_frame}")
    return max(0, end_frame - clip_span(frames, period) + 1)


def iter_clip_batches(
    video: np.ndarray,
    starts: Sequence[int] | np.ndarray,
    frames: int,
    period: int,
    batch_size: int,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    pad: str = DEFAULT_PAD,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (starts, clips (B, C, frames, H, W)) normalised as (x - mean) / std.

    `video` is uint8 (T, H, W, C) or (T, H, W), typically a np.memmap; only the frames of
    one batch are read, moved to `device` as uint8 and converted there. `mean` and `std`
    are per channel (or scalars) in 0-255 units.
    """
    video = _as_thwc(video)
    _check_positive(batch_size=batch_size)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    channels = video.shape[-1]
    mean_t = _channel_vector(mean, channels, "mean", device, dtype)
    std_t = _channel_vector(std, channels, "std", device, dtype)
    if torch.any(std_t <= 0):
        raise ValueError(f"std: expected values > 0, found {std_t.tolist()}")
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first:first + batch_size]
        idx = np.stack([clip_indices(int(s), frames, period, len(video), pad)
                        for s in batch_starts])
        clips = torch.from_numpy(np.ascontiguousarray(video[idx]))  # (B, F, H, W, C) uint8
        clips = clips.to(device, non_blocking=True).to(dtype)
        clips = (clips - mean_t) / std_t
        yield batch_starts, clips.permute(0, 4, 1, 2, 3).contiguous()


def _as_thwc(video: np.ndarray) -> np.ndarray:
    """Check a (T, H, W[, C]) uint8 video; add a channel axis to greyscale."""
    if video.dtype != np.uint8 or video.ndim not in (3, 4) or len(video) == 0:
        raise ValueError(f"video: expected uint8 (T, H, W[, C]) with T >= 1, found "
                         f"{video.dtype} {video.shape}")
    return video[..., None] if video.ndim == 3 else video


def _channel_vector(value: float | Sequence[float], channels: int, name: str,
                    device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A per-channel tensor broadcastable over (..., C)."""
    vec = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if vec.ndim != 1 or len(vec) not in (1, channels):
        raise ValueError(f"{name}: expected a scalar or {channels} values, found {value!r}")
    return torch.as_tensor(np.broadcast_to(vec, (channels,)).copy(), dtype=dtype,
                           device=device)


def _last_start(n_total: int, frames: int, period: int) -> int:
    """Largest start whose clip fits in the video (0 when none fits)."""
    _check_positive(n_total=n_total)
    return max(0, n_total - clip_span(frames, period))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, found {value!r}")
