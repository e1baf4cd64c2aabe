"""CXR stores in one call (crop/uncrop x sizes, fallback reasons), and the lung-mask step:
train the lung U-Net on masked images, predict masks for the others."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.prepare import (
    CROPS_CSV,
    SOURCE_COLUMN,
    crop_source,
    lung_dice,
    mask_file_name,
    predict_lung_masks,
    prepare_cxr_stores,
    read_store_index,
    store_name,
    stores_crop_source,
    stores_for_recipe,
    train_lung_unet,
)
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.train.recipe import load_recipe

SIZES = [32, 48]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pd.DataFrame:
    """A tiny cohort: one row without a mask, one with a full-frame mask, one empty file."""
    tmp = tmp_path_factory.mktemp("cxrstore")
    cohort = synth_cxr_cohort(tmp / "cohort", n=12, seed=2, size=64)
    m = read_cxr_folders(cohort).manifest.reset_index(drop=True)
    m.loc[0, "mask_path"] = ""
    full = tmp / "full.png"
    cv2.imwrite(str(full), np.full((64, 64), 255, np.uint8))
    m.loc[1, "mask_path"] = str(full)
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    m.loc[2, "path"] = str(empty)
    return m


def test_every_crop_and_size_store_with_reasons(manifest, tmp_path):
    result = prepare_cxr_stores(manifest, tmp_path, sizes=SIZES, channels=1, workers=1)
    assert set(result.stores) == {(c, s) for c in ("crop", "uncrop") for s in SIZES}
    for (crop, size), path in result.stores.items():
        assert path == tmp_path / store_name(crop, size)
        store = PreparedStore(path)
        assert len(store.ids) == len(manifest) - 1  # the empty file is a problem, not a crash
        assert store.frames(store.ids[0]).shape == (1, size, size, 1)
    assert len(result.problems) == len(result.stores)
    assert all("empty.png" in p.file for p in result.problems)
    crops = pd.read_csv(tmp_path / CROPS_CSV, dtype={"sample_id": str}).set_index("sample_id")
    ids = manifest["sample_id"].astype(str)
    assert crops.loc[ids[0], "reason"] == "no lung mask"
    assert "four image borders" in crops.loc[ids[1], "reason"]
    assert not crops.loc[ids[0], "crop_applied"] and crops.loc[ids[3], "crop_applied"]
    assert crops.loc[ids[0], SOURCE_COLUMN] == "none" and crops.loc[ids[3], SOURCE_COLUMN] == "file"
    assert read_store_index(tmp_path) == result.stores
    assert stores_crop_source(tmp_path) == "files"  # recorded for the ensemble and predict
    assert all(PreparedStore(p).info["crop_source"] == "files" for p in result.stores.values())
    assert stores_crop_source(result.stores) == "files"
    cropped = PreparedStore(result.stores[("crop", 32)]).frames(ids[3])
    whole = PreparedStore(result.stores[("uncrop", 32)]).frames(ids[3])
    assert not np.array_equal(cropped, whole)
    again = prepare_cxr_stores(manifest, tmp_path, sizes=SIZES, channels=1, workers=1)
    assert all(s.prepared == 0 for s in again.summaries.values())  # resumable


def test_stores_for_a_recipe_follow_its_members(manifest, tmp_path):
    recipe = load_recipe("cxr-ensemble-cpu", ["ensemble.members=[{model: resnet10t, size: 32,"
                                              " crop: uncrop}]"])
    result = stores_for_recipe(recipe, manifest, tmp_path, workers=1)
    assert list(result.stores) == [("uncrop", 32)] and result.crops.empty
    with pytest.raises(InputError, match="crop"):
        store_name("lungs", 32)


@pytest.mark.slow
def test_lung_unet_trains_and_fills_missing_masks(manifest, tmp_path):
    usable = manifest.drop(index=[1, 2])  # no full-frame mask, no empty file
    checkpoint = train_lung_unet(usable, tmp_path / "lung", overrides=[
        "data.size=32", "trainer.max_epochs=1", "data.batch_size=4"])
    assert checkpoint.is_file() and (tmp_path / "lung" / "store").is_dir()
    unmasked = manifest.copy()
    unmasked.loc[2, "mask_path"] = ""  # the empty file: no mask, and unreadable
    filled, problems = predict_lung_masks(unmasked, checkpoint, tmp_path / "masks",
                                          only_missing=True)
    assert len(problems) == 1 and "empty.png" in problems[0].file
    assert filled.loc[0, SOURCE_COLUMN] == "predicted"
    assert filled.loc[0, "mask_path"].endswith(mask_file_name(str(filled.loc[0, "sample_id"])))
    predicted = cv2.imread(filled.loc[0, "mask_path"], cv2.IMREAD_GRAYSCALE)
    assert predicted.shape == (64, 64) and set(np.unique(predicted)) <= {0, 255}
    assert filled.loc[3, SOURCE_COLUMN] == "file"
    assert filled.loc[3, "mask_path"] == manifest.loc[3, "mask_path"]
    every, _ = predict_lung_masks(unmasked, checkpoint, tmp_path / "all")  # one source
    assert every.loc[3, SOURCE_COLUMN] == "predicted" and crop_source(every) == "unet"
    assert crop_source(manifest) == "files" and crop_source(manifest.drop(
        columns="mask_path")) == "none"
    scores = lung_dice(checkpoint, usable.iloc[1:3])
    assert len(scores) == 2 and scores["dice"].between(0, 1).all()
    with pytest.raises(InputError, match="mask_path"):
        train_lung_unet(manifest.assign(mask_path=""), tmp_path / "none")
