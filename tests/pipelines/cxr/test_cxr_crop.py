"""Lung crop (real masks, implausible masks), Lanczos sizes, variants, the CXR preparer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cinelab.data.manifest import new_manifest
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.io.cxr_dicom import write_cxr_dicom
from cinelab.io.image import read_image, write_image
from cinelab.pipelines.cxr.crop import (
    REASON_NO_MASK,
    REASON_OK,
    crop_and_resize,
    cxr_variants,
    lung_crop_box,
    prepare_cxr_sample,
    read_lung_mask,
    resize_lanczos,
    restore_map,
    square_box,
)
from cinelab.prep.prepare import PREPARERS, PrepSpec, prepare
from conftest import real_path

N = 100


def _two_lungs(shape: tuple[int, int] = (N, N)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    h, w = shape
    mask[int(0.2 * h):int(0.8 * h), int(0.12 * w):int(0.42 * w)] = True
    mask[int(0.2 * h):int(0.75 * h), int(0.58 * w):int(0.86 * w)] = True
    return mask


def _real_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    data = real_path("cxr-lungseg", "Data")
    return [(read_image(data / f"{i}.jpg"), read_lung_mask(data / f"{i}-mask.png"))
            for i in range(1, 5)]


# --- the crop box -----------------------------------------------------------------------


def test_real_masks_crop_keeps_both_lungs() -> None:
    for image, mask in _real_pairs():
        box, reason = lung_crop_box(mask)
        assert reason == REASON_OK and box is not None
        y0, x0, y1, x1 = box
        assert y1 - y0 == x1 - x0 and 0 <= y0 and 0 <= x0
        assert y1 <= mask.shape[0] and x1 <= mask.shape[1]
        assert mask[y0:y1, x0:x1].sum() >= 0.99 * mask.sum()
        assert (y1 - y0) < mask.shape[0] or (x1 - x0) < mask.shape[1]  # it does crop
        variants = cxr_variants(image, mask, sizes=(64, 96))
        assert variants.cropped and set(variants.images) == {
            ("crop", 64), ("crop", 96), ("uncrop", 64), ("uncrop", 96)}


def test_margin_surrounds_the_lungs() -> None:
    mask = _two_lungs((200, 200))
    box, _ = lung_crop_box(mask, margin=0.05)
    ys, xs = np.nonzero(mask)
    y0, x0, y1, x1 = box
    span = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    assert ys.min() - y0 >= 0.04 * span and x1 - (xs.max() + 1) >= 0.04 * span
    wider, _ = lung_crop_box(mask, margin=0.15)
    assert wider[2] - wider[0] > y1 - y0


def test_square_box_is_clamped_inside_the_image() -> None:
    # 80 px wide + 2 x 10 % -> 96 px square about x = 50, moved down to start at row 0
    assert square_box((0, 10, 40, 90), (100, 100), margin=0.1) == (0, 2, 96, 98)
    top, left, bottom, right = square_box((5, 0, 95, 100), (100, 120), margin=0.1)
    assert (top, bottom) == (0, 100) and right - left == 100  # capped by the image height


@pytest.mark.parametrize("mask,reason", [
    (np.zeros((N, N), bool), "empty"),
    (np.ones((N, N), bool), "four image borders"),
])
def test_empty_and_full_frame_masks_fall_back(mask: np.ndarray, reason: str) -> None:
    box, why = lung_crop_box(mask)
    assert box is None and reason in why


def test_one_lung_masks_fall_back_with_a_reason() -> None:
    one = _two_lungs()
    one[:, N // 2:] = False
    assert lung_crop_box(one) == (None, "one lung: the mask has a single component")
    speck = one.copy()
    speck[50:52, 70:72] = True  # a speck is not a second lung
    box, why = lung_crop_box(speck)
    assert box is None and why.startswith("one lung: the second component")
    same_side = np.zeros((N, N), bool)
    same_side[15:45, 10:40] = True
    same_side[55:90, 10:40] = True  # one lung in two pieces
    box, why = lung_crop_box(same_side)
    assert box is None and "one side of the midline" in why
    tiny = np.zeros((N, N), bool)
    tiny[40:44, 20:24] = tiny[40:44, 70:74] = True
    assert "too small" in lung_crop_box(tiny)[1]
    with pytest.raises(InputError, match="mask"):
        lung_crop_box(np.zeros((2, 3, 4)))


# --- sizes ------------------------------------------------------------------------------


def test_lanczos_sizes_match_opencv() -> None:
    image = np.random.default_rng(0).integers(0, 255, (300, 260), dtype=np.uint8)
    out = crop_and_resize(image, None, sizes=(224, 160))
    assert set(out) == {224, 160} and out[224].dtype == np.uint8
    expected = cv2.resize(image, (224, 224), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(out[224], expected)
    box = (10, 20, 210, 220)
    cropped = crop_and_resize(image, box, sizes=(150,))[150]
    np.testing.assert_array_equal(cropped, cv2.resize(
        image[10:210, 20:220], (150, 150), interpolation=cv2.INTER_LANCZOS4))


def test_large_shrink_is_prefiltered() -> None:
    stripes = np.zeros((1000, 1000), np.uint8)
    stripes[:, ::2] = 255  # finest detail: must average out, not alias
    small = resize_lanczos(stripes, 64)
    assert small.shape == (64, 64) and abs(float(small.mean()) - 127.5) < 3
    assert small.std() < 5


def test_pad_fit_keeps_the_aspect_ratio() -> None:
    image = np.full((50, 100), 200, np.uint8)
    padded = crop_and_resize(image, None, sizes=(40,), fit="pad")[40]
    assert padded[0, 20] == 0 and padded[20, 20] == 200
    assert crop_and_resize(image, None, sizes=(40,))[40].min() == 200
    with pytest.raises(InputError, match="fit"):
        crop_and_resize(image, None, fit="zoom")


def test_variants_fall_back_without_a_mask_and_resize_small_masks() -> None:
    image = np.random.default_rng(1).integers(0, 255, (N, N), dtype=np.uint8)
    plain = cxr_variants(image, None, sizes=(32,))
    assert not plain.cropped and plain.reason == REASON_NO_MASK
    np.testing.assert_array_equal(plain.images[("crop", 32)], plain.images[("uncrop", 32)])
    big = np.random.default_rng(1).integers(0, 255, (4 * N, 4 * N), dtype=np.uint8)
    scaled = cxr_variants(big, _two_lungs(), sizes=(32,))  # mask at 1/4 the resolution
    assert scaled.cropped and scaled.box[2] - scaled.box[0] > 2 * N


def test_lung_masks_read_from_0_255_and_0_1_files(tmp_path: Path) -> None:
    mask = _two_lungs()
    for name, scale in (("a.png", 255), ("b.png", 1)):
        write_image(tmp_path / name, mask.astype(np.uint8) * scale)
        np.testing.assert_array_equal(read_lung_mask(tmp_path / name), mask)
    assert read_lung_mask("") is None and read_lung_mask(None) is None


def test_restore_map_puts_values_back_inside_the_box() -> None:
    transform = {"original_shape": [N, 2 * N], "box": [10, 20, 60, 70], "fit": "stretch"}
    back = restore_map(np.ones((8, 8), np.float32), transform)
    assert back.shape == (N, 2 * N)
    assert back[10:60, 20:70].min() == 1.0 and back.sum() == 50 * 50


# --- the preparer -----------------------------------------------------------------------


def _cohort(root: Path) -> pd.DataFrame:
    """Two good images with masks, one without, and bad files."""
    rows = []
    for i in range(3):
        image = (np.random.default_rng(i).integers(0, 255, (120, 100))).astype(np.uint8)
        path = write_image(root / f"g{i}.png", image)
        mask_path = ""
        if i < 2:
            mask_path = str(write_image(root / "masks" / f"g{i}.png",
                                        _two_lungs((120, 100)).astype(np.uint8) * 255))
        rows.append({"sample_id": f"g{i}", "path": str(path), "mask_path": mask_path,
                     "split": "train", "label": i % 2})
    write_cxr_dicom(root / "m1.dcm", np.full((256, 256), 4000, np.uint16),
                    photometric="MONOCHROME1", bits_stored=12, window=(2048, 4096))
    (root / "empty.png").write_bytes(b"")
    one_lung = _two_lungs((120, 100))
    one_lung[:, 50:] = False
    write_image(root / "masks" / "g2.png", one_lung.astype(np.uint8) * 255)
    rows += [{"sample_id": "m1", "path": str(root / "m1.dcm"), "mask_path": "",
              "split": "val", "label": 0},
             {"sample_id": "bad", "path": str(root / "empty.png"), "mask_path": "",
              "split": "val", "label": 0},
             {"sample_id": "g2b", "path": str(root / "g2.png"),
              "mask_path": str(root / "masks" / "g2.png"), "split": "test", "label": 1}]
    for row in rows:
        row["modality"] = "cxr"
    return new_manifest(rows)


def test_prepare_writes_crop_store_and_reports_problems(tmp_path: Path) -> None:
    assert PREPARERS.get("cxr") is prepare_cxr_sample  # registered by the cxr package
    manifest = _cohort(tmp_path / "raw")
    summary = prepare(manifest, tmp_path / "crop32", PrepSpec(size=32, channels=1,
                                                               crop="auto"), workers=1)
    assert (summary.prepared, summary.failed) == (5, 1)
    store = PreparedStore(tmp_path / "crop32")
    assert sorted(store.ids) == ["g0", "g1", "g2", "g2b", "m1"]
    assert store.frames("g0").shape == (1, 32, 32, 1) and store.mask("g0").shape == (1, 32, 32)
    assert store.mask("g2") is None
    crops = {s: store.meta(s)["crop"] for s in store.ids}
    assert crops["g0"] == {"applied": True, "reason": REASON_OK}
    assert crops["g2"]["reason"] == REASON_NO_MASK and not crops["g2"]["applied"]
    assert crops["g2b"]["reason"].startswith("one lung")
    assert store.frames("m1")[0].max() < 10  # MONOCHROME1 high values -> dark
    assert "0 bytes" in store.problems["error"].iat[0]
    assert store.meta("g0")["transform"]["box"] is not None


def test_prepare_uncropped_store_with_three_channels(tmp_path: Path) -> None:
    manifest = _cohort(tmp_path / "raw")
    prepare(manifest, tmp_path / "full", PrepSpec(size=24, channels=3, crop="never"),
            workers=1)
    store = PreparedStore(tmp_path / "full")
    assert store.frames("g0").shape == (1, 24, 24, 3)
    assert store.meta("g0")["crop"] == {"applied": False, "reason": "crop not requested"}
    assert len(store.mean) == 3


def test_prepare_sample_never_raises(tmp_path: Path) -> None:
    task = {"row": {"sample_id": "x", "path": str(tmp_path / "nothing.png")},
            "root": str(tmp_path / "s"), "spec": PrepSpec(size=16).to_dict(), "hash": "0"}
    result = prepare_cxr_sample(task)
    assert result["sample_id"] == "x" and "nothing at that path" in result["problem"]["error"]
