"""Clip indices, start positions and bounded-memory clip batches."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from cinelab.data.sampling import (
    all_clip_starts,
    clip_ending_at,
    clip_indices,
    clip_span,
    iter_clip_batches,
    random_clip_start,
)


def _ramp_video(n: int, h: int = 4, w: int = 5, c: int = 3) -> np.ndarray:
    """Frame t holds value t + 10 * channel everywhere."""
    values = np.arange(n)[:, None, None, None] + 10 * np.arange(c)[None, None, None, :]
    return np.broadcast_to(values, (n, h, w, c)).astype(np.uint8).copy()


def test_clip_indices_with_period():
    np.testing.assert_array_equal(clip_indices(3, 4, 2, 20), [3, 5, 7, 9])
    assert clip_span(4, 2) == 7


def test_clip_indices_pad_short_video():
    np.testing.assert_array_equal(clip_indices(0, 5, 2, 6, pad="loop"), [0, 2, 4, 0, 2])
    np.testing.assert_array_equal(clip_indices(0, 5, 2, 6, pad="edge"), [0, 2, 4, 5, 5])
    np.testing.assert_array_equal(clip_indices(0, 3, 1, 1, pad="loop"), [0, 0, 0])


@pytest.mark.parametrize("kwargs", [
    dict(start=0, frames=4, period=1, n_total=10, pad="zero"),
    dict(start=10, frames=4, period=1, n_total=10),
    dict(start=-1, frames=4, period=1, n_total=10),
    dict(start=0, frames=0, period=1, n_total=10),
    dict(start=0, frames=4, period=0, n_total=10),
])
def test_clip_indices_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        clip_indices(**kwargs)


def test_all_clip_starts():
    np.testing.assert_array_equal(all_clip_starts(10, 4, 2), [0, 1, 2, 3])
    np.testing.assert_array_equal(all_clip_starts(10, 4, 2, stride=2), [0, 2])
    np.testing.assert_array_equal(all_clip_starts(7, 4, 2), [0])
    np.testing.assert_array_equal(all_clip_starts(3, 4, 2), [0])


def test_random_clip_start_fits_and_is_reproducible():
    draws = [random_clip_start(np.random.default_rng(s), 10, 4, 2) for s in range(50)]
    assert set(draws) == {0, 1, 2, 3}
    again = [random_clip_start(np.random.default_rng(s), 10, 4, 2) for s in range(50)]
    assert draws == again
    assert random_clip_start(np.random.default_rng(0), 5, 4, 2) == 0


def test_clip_ending_at():
    start = clip_ending_at(20, 4, 2, 30)
    assert start == 14
    assert clip_indices(start, 4, 2, 30)[-1] == 20
    assert clip_ending_at(3, 4, 2, 30) == 0  # too early: the clip starts at 0
    with pytest.raises(ValueError):
        clip_ending_at(30, 4, 2, 30)


def test_iter_clip_batches_shapes_and_values():
    video = _ramp_video(12)
    mean, std = (1.0, 2.0, 3.0), (2.0, 4.0, 8.0)
    batches = list(iter_clip_batches(video, [0, 2, 5], 3, 2, 2, mean, std))
    assert [len(s) for s, _ in batches] == [2, 1]
    starts, clips = batches[1]
    assert starts.tolist() == [5]
    assert clips.shape == (1, 3, 3, 4, 5) and clips.dtype == torch.float32
    frames = np.array([5, 7, 9])
    for ch in range(3):
        expected = (frames + 10 * ch - mean[ch]) / std[ch]
        np.testing.assert_allclose(clips[0, ch, :, 0, 0].numpy(), expected, rtol=1e-6)


def test_iter_clip_batches_constant_video_normalises_to_expected_mean():
    video = np.full((6, 3, 3, 3), 100, dtype=np.uint8)
    (_, clips), = iter_clip_batches(video, [0, 1], 4, 1, 8, 100.0, 50.0, dtype=torch.float64)
    assert clips.dtype == torch.float64
    assert float(clips.abs().max()) == 0.0
    (_, clips), = iter_clip_batches(video, [0], 4, 1, 8, 50.0, 25.0)
    assert float(clips.mean()) == pytest.approx(2.0)


def test_iter_clip_batches_greyscale_and_short_video_padding():
    video = _ramp_video(3, c=1)[..., 0]  # (T, H, W)
    (_, clips), = iter_clip_batches(video, [0], 5, 1, 1, 0.0, 1.0, pad="edge")
    assert clips.shape == (1, 1, 5, 4, 5)
    assert clips[0, 0, :, 0, 0].tolist() == [0, 1, 2, 2, 2]


def test_iter_clip_batches_rejects_bad_inputs():
    video = _ramp_video(8)
    with pytest.raises(ValueError, match="video"):
        next(iter_clip_batches(video.astype(np.float32), [0], 2, 1, 1, 0.0, 1.0))
    with pytest.raises(ValueError, match="mean"):
        next(iter_clip_batches(video, [0], 2, 1, 1, (0.0, 1.0), 1.0))
    with pytest.raises(ValueError, match="std"):
        next(iter_clip_batches(video, [0], 2, 1, 1, 0.0, 0.0))


def test_iter_clip_batches_reads_a_memmap_one_batch_at_a_time(tmp_path):
    n, h, w, c = 400, 32, 32, 3
    path = tmp_path / "video.u8"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, h, w, c))[:] = 7
    video = np.load(path, mmap_mode="r")
    assert isinstance(video, np.memmap)
    starts = all_clip_starts(n, 4, 2, stride=3)
    batch_bytes = 2 * 4 * h * w * c
    tracemalloc.start()
    try:
        shapes = [tuple(clips.shape) for _, clips in
                  iter_clip_batches(video, starts, 4, 2, 2, 7.0, 1.0)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shapes[0] == (2, 3, 4, h, w) and len(shapes) == (len(starts) + 1) // 2
    assert peak < 8 * batch_bytes < video.nbytes // 4
