"""Echo preprocessing: sector mask, crop/blank/pad/resize, point and mask mapping."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.io.dicom import read_ultrasound
from cinelab.io.video import read_video
from cinelab.prep.echo import map_mask, map_points, preprocess_echo, sector_mask
from conftest import real_path

H, W, T = 96, 128, 8
APEX, RADIUS = (10, 64), 70  # (y, x) apex and depth of the synthetic sector
TEXT_BOX = (80, 0, 96, 30)  # y0, x0, y1, x1 of the burned-in label


def _sector() -> np.ndarray:
    """A 90-degree fan opening downward from APEX."""
    yy, xx = np.mgrid[:H, :W]
    dy, dx = yy - APEX[0], xx - APEX[1]
    return (np.hypot(dy, dx) <= RADIUS) & (dy >= np.abs(dx))


def _echo(seed: int = 0) -> np.ndarray:
    """Speckle in a moving sector, static white text and a moving ECG line outside it."""
    rng = np.random.default_rng(seed)
    sector = _sector()
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        speckle = rng.integers(20, 200, (H, W), dtype=np.uint8) * sector
        frames[t] = speckle[..., None]
        cv2.putText(frames[t], "HR 72", (0, 92), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 2, cv2.LINE_8)  # bold enough to survive OpenCV 5's glyphs
        frames[t, 4, : 10 + 10 * t] = (0, 255, 0)  # ECG sweep across the top
    return frames


def test_sector_mask_excludes_text_and_trace() -> None:
    frames = _echo()
    mask = sector_mask(frames)
    truth = _sector()
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    y0, x0, y1, x1 = TEXT_BOX
    assert not mask[y0:y1, x0:x1].any() and not mask[4].any()


def test_blanks_burned_in_text() -> None:
    frames = _echo()
    out, transform = preprocess_echo(frames, size=64)
    assert out.shape == (T, 64, 64, 3) and out.dtype == np.uint8
    whole = (0, 0, H, W)  # crop nothing: only blanking can remove the label
    blanked, _ = preprocess_echo(frames, region=whole, size=64)
    unblanked, _ = preprocess_echo(frames, region=whole, size=64, blank=False)
    assert (unblanked.min(-1) > 200).sum() > 0  # the white label survives without blanking
    assert (blanked.min(-1) > 200).sum() == 0  # and is gone with it (speckle tops out at 199)
    assert blanked.shape == (T, 64, 64, 3)
    # the crop is the sector's bounding box, padded square
    ys, xs = np.nonzero(_sector())
    y0, x0, y1, x1 = transform["crop"]
    assert abs(y0 - ys.min()) <= 2 and abs(y1 - ys.max() - 1) <= 2
    assert abs(x0 - xs.min()) <= 2 and abs(x1 - xs.max() - 1) <= 2
    side = max(y1 - y0, x1 - x0)
    assert transform["scale"] == pytest.approx(64 / side)
    assert transform["pad"] == [(side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2]


def test_region_crop_and_grey_output() -> None:
    frames = _echo()
    out, transform = preprocess_echo(frames, region=(10, 14, 90, 114), size=40, channels=1)
    assert transform["crop"] == [10, 14, 90, 114] and transform["pad"] == [10, 0]
    assert out.shape == (T, 40, 40, 1)
    assert out[:, :4].max() == 0  # top padding rows are black


def test_map_points_follow_the_image() -> None:
    """A bright dot drawn at (x, y) lands where map_points says."""
    frames = np.zeros((2, H, W, 3), np.uint8)
    points = [(40, 30), (90, 70), (64, 50)]
    for x, y in points:
        cv2.circle(frames[0], (x, y), 3, (255, 255, 255), -1)
    region = (5, 8, 95, 120)
    out, transform = preprocess_echo(frames, region=region, size=56, blank=False)
    xs2, ys2 = map_points(transform, np.array([p[0] for p in points]),
                          np.array([p[1] for p in points]))
    grey = out[0, ..., 0].astype(float)
    for x2, y2 in zip(xs2, ys2, strict=True):
        yi, xi = int(round(y2)), int(round(x2))
        patch = grey[yi - 3:yi + 4, xi - 3:xi + 4]
        py, px = np.mgrid[yi - 3:yi + 4, xi - 3:xi + 4]
        cy, cx = (patch * py).sum() / patch.sum(), (patch * px).sum() / patch.sum()
        assert abs(cy - y2) < 0.5 and abs(cx - x2) < 0.5


def test_map_mask_nearest_and_consistent() -> None:
    frames = _echo()
    labels = np.zeros((H, W), np.int32)
    labels[40:60, 50:80] = 7
    out, transform = preprocess_echo(frames, size=64)
    mapped = map_mask(transform, labels)
    assert mapped.shape == (64, 64) and mapped.dtype == np.int32
    assert set(np.unique(mapped)) == {0, 7}
    ys, xs = np.nonzero(mapped)
    (xa, xb), (ya, yb) = map_points(transform, np.array([50, 79]), np.array([40, 59]))
    assert abs(xs.min() - xa) <= 1 and abs(xs.max() - xb) <= 1
    assert abs(ys.min() - ya) <= 1 and abs(ys.max() - yb) <= 1
    assert map_mask(transform, labels.astype(bool)).dtype == bool


def test_no_crop_is_identity_on_square_input() -> None:
    frames = _echo()[:, :, :H]  # 96 x 96
    out, transform = preprocess_echo(frames, size=96, crop=False)
    assert np.array_equal(out, frames)
    assert transform == {"crop": [0, 0, 96, 96], "pad": [0, 0], "scale": 1.0, "out_size": 96}
    resized, _ = preprocess_echo(frames, size=48, crop=False)
    assert resized.shape == (T, 48, 48, 3)


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="channels"):
        preprocess_echo(_echo(), channels=2)
    with pytest.raises(InputError, match="frames"):
        preprocess_echo(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match="region"):
        preprocess_echo(_echo(), region=(200, 200, 300, 300))


def test_static_image_uses_lit_pixels() -> None:
    frame = (_sector() * 120).astype(np.uint8)[None, ..., None]
    mask = sector_mask(frame)
    assert (mask & _sector()).sum() / (mask | _sector()).sum() > 0.9


def test_real_dicom_sector() -> None:
    path = real_path("echo-dicom", "examples_ybr_color.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = read_ultrasound(path).frames
    mask = sector_mask(frames)
    ys, xs = np.nonzero(mask)
    # the fan spans about x 42-297, y 15-207 (the header's 640x480 region halved)
    assert abs(xs.min() - 42) <= 6 and abs(xs.max() - 297) <= 6
    assert abs(ys.min() - 15) <= 8 and abs(ys.max() - 207) <= 6
    assert not mask[220:].any() and not mask[:, 300:].any()  # toolbar and right-hand labels
    out, _ = preprocess_echo(frames)
    assert out.shape == (30, 112, 112, 3) and out.mean() > 5


def test_real_echonet_sector_kept() -> None:
    folder = real_path("echonet-mini", "Videos")
    video = read_video(sorted(folder.glob("*.avi"))[0], count=64)
    mask = sector_mask(video.frames)
    moving = video.frames.astype(np.float32).mean(-1).std(0) > 2
    assert (mask & moving).sum() / moving.sum() > 0.97
    assert mask.mean() > 0.5
    out, _ = preprocess_echo(video.frames, crop=False)
    assert np.array_equal(out, video.frames)
