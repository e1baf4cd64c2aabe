"""Mask outlines, heatmaps, overlay videos and frame strips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cinelab.explain.overlay import (
    frame_strip,
    outline,
    overlay_heatmap,
    overlay_masks,
    write_overlay_video,
)
from cinelab.io.video import read_video
from conftest import real_path

RED = (255, 0, 0)


def _square_masks(t: int = 3, size: int = 32, lo: int = 8, hi: int = 24) -> np.ndarray:
    masks = np.zeros((t, size, size), dtype=np.uint8)
    masks[:, lo:hi, lo:hi] = 1
    return masks


def test_outline_is_the_ring_of_a_square():
    mask = _square_masks(1)[0]
    ring = outline(mask)
    assert ring.dtype == bool and ring.shape == mask.shape
    assert ring.sum() == 4 * 16 - 4
    assert not ring[~mask.astype(bool)].any()  # inside the mask only
    assert not ring[9:23, 9:23].any()  # the interior stays empty
    assert not outline(np.zeros((5, 5), bool)).any()
    with pytest.raises(ValueError, match="mask"):
        outline(np.zeros((2, 5, 5)))


def test_overlay_masks_colours_only_the_outline():
    frames = np.full((3, 32, 32), 40, dtype=np.uint8)  # greyscale
    masks = _square_masks()
    out = overlay_masks(frames, masks, color=RED)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    coloured = np.all(out == RED, axis=-1)
    for t in range(3):
        np.testing.assert_array_equal(coloured[t], outline(masks[t]))
    assert np.all(out[~coloured] == 40)
    assert np.all(frames == 40)  # input untouched


def test_overlay_masks_fill_alpha_and_errors():
    frames = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    masks = _square_masks()
    out = overlay_masks(frames, masks, color=(0, 200, 0), alpha=0.5)
    np.testing.assert_array_equal(out[0, 16, 16], [0, 100, 0])
    np.testing.assert_array_equal(out[0, 8, 8], [0, 200, 0])
    np.testing.assert_array_equal(out[0, 2, 2], [0, 0, 0])
    with pytest.raises(ValueError, match="masks"):
        overlay_masks(frames, masks[:2])
    with pytest.raises(ValueError, match="frames"):
        overlay_masks(frames.astype(np.float32), masks)


def test_overlay_heatmap_maps_extremes_to_colormap_ends():
    frames = np.full((2, 16, 16, 3), 90, dtype=np.uint8)
    heat = np.zeros((2, 16, 16), dtype=np.float32)
    heat[1, 4, 4] = 3.0
    out = overlay_heatmap(frames, heat, alpha=1.0)
    jet = cv2.cvtColor(cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET),
                       cv2.COLOR_BGR2RGB)[0]
    np.testing.assert_array_equal(out[1, 4, 4], jet[1])
    np.testing.assert_array_equal(out[0, 0, 0], jet[0])
    np.testing.assert_array_equal(overlay_heatmap(frames, heat, alpha=0.0), frames)


def test_overlay_heatmap_resizes_low_resolution_maps():
    frames = np.zeros((2, 16, 16), dtype=np.uint8)
    heat = np.zeros((2, 4, 4))
    heat[:, :, 2:] = 1.0
    out = overlay_heatmap(frames, heat, alpha=1.0)
    assert out.shape == (2, 16, 16, 3)
    assert out[0, 8, 15, 0] > out[0, 8, 0, 0]  # hot (red) on the right only
    with pytest.raises(ValueError, match="heat"):
        overlay_heatmap(frames, heat[:1])


def test_write_overlay_video_round_trip(tmp_path):
    frames = np.full((4, 64, 64), 30, dtype=np.uint8)
    masks = np.zeros((4, 64, 64), dtype=np.uint8)
    masks[:, 16:48, 16:48] = 1
    path = write_overlay_video(tmp_path / "lv.avi", frames, masks, fps=25.0)
    video = read_video(path)
    assert video.frames.shape == (4, 64, 64, 3)
    # lossy codec: the outline is clearly redder than the background
    assert video.frames[0, 32, 16, 0] > 150 > video.frames[0, 32, 4, 0]


def test_frame_strip_writes_an_rgb_png(tmp_path):
    frames = np.zeros((3, 8, 6, 3), dtype=np.uint8)
    frames[0, ..., 0] = 255  # red
    frames[2, ..., 2] = 255  # blue
    strip = frame_strip(frames, [0, 2], path=tmp_path / "strip.png")
    assert strip.shape == (8, 12, 3)
    np.testing.assert_array_equal(strip[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(strip[0, 6], [0, 0, 255])
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "strip.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, strip)
    with pytest.raises(ValueError, match="indices"):
        frame_strip(frames, [5])


def test_overlay_on_a_real_echonet_video(tmp_path):
    videos = sorted(real_path("echonet-mini", "Videos").glob("*.avi"))
    frames = read_video(videos[0], count=4).frames
    masks = np.zeros(frames.shape[:3], dtype=np.uint8)
    cv2.circle(masks[0], (56, 56), 20, 1, -1)
    out = overlay_masks(frames, masks, color=RED)
    ring = outline(masks[0])
    assert ring.sum() > 0 and np.all(out[0][ring] == RED)
    np.testing.assert_array_equal(out[0][~ring], frames[0][~ring])
    np.testing.assert_array_equal(out[1:], frames[1:])
    strip = frame_strip(out, [0, 3], path=tmp_path / "real.png")
    assert strip.shape == (frames.shape[1], 2 * frames.shape[2], 3)
