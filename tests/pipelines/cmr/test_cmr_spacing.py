"""Resampling to a fixed in-plane spacing ("spacing:<mm>"): sources of different pixel sizes
land on one grid of known mm, and labels restored to the source grid keep its geometry."""

from __future__ import annotations

import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.pipelines.cmr.prepare import CmrSource, preprocess_cmr, restore_labels

SIZE = 48
TARGET = 1.5


def _disk_source(pixel_mm: float, shape: tuple[int, int], radius_mm: float = 20.0):
    """A 2-slice stack with an LV disk (label 3) of `radius_mm` at the centre."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot((yy - shape[0] / 2) * pixel_mm, (xx - shape[1] / 2) * pixel_mm)
    labels = np.repeat((r < radius_mm)[None].astype(np.uint8) * 3, 2, axis=0)
    image = labels.astype(np.float32) * 100 + 10
    return CmrSource(image, labels, (8.0, pixel_mm, pixel_mm), "stack")


@pytest.mark.parametrize(("pixel_mm", "shape"), [(1.25, (80, 96)), (1.8, (40, 36))])
def test_fixed_spacing_grid_and_round_trip(pixel_mm: float, shape: tuple[int, int]) -> None:
    source = _disk_source(pixel_mm, shape)
    frames, mask, meta = preprocess_cmr(source, SIZE, crop=f"spacing:{TARGET}")
    assert frames.shape == (2, SIZE, SIZE, 1) and mask.shape == (2, SIZE, SIZE)
    assert meta["pixel_spacing_mm"] == pytest.approx([TARGET, TARGET], rel=0.03)
    # the disk is 20 mm in radius whatever the source pixel: about pi 20^2 / 1.5^2 pixels
    area = (mask[0] == 3).sum() * np.prod(meta["pixel_spacing_mm"])
    assert area == pytest.approx(np.pi * 20.0 ** 2, rel=0.05)
    back = restore_labels(mask, meta["transform"])
    assert back.shape == source.labels.shape  # on the source grid again
    t, b = source.labels == 3, back == 3
    assert 2 * (t & b).sum() / (t.sum() + b.sum()) > 0.95


def test_fixed_spacing_needs_a_source_spacing() -> None:
    source = _disk_source(1.5, (40, 40))
    source.spacing = None
    with pytest.raises(InputError, match="crop"):
        preprocess_cmr(source, SIZE, crop=f"spacing:{TARGET}")
    with pytest.raises(InputError, match="positive"):
        preprocess_cmr(_disk_source(1.5, (40, 40)), SIZE, crop="spacing:x")
