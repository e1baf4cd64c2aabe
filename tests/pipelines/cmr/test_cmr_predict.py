"""segment_stack (class indices and store labels) and predict_cmr over a store or a raw
ACDC folder: one label file per (patient, phase), an index with spacing, native grids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cinelab.errors import InputError
from cinelab.io.nifti import read_volume
from cinelab.models import create_model
from cinelab.pipelines.cmr.acdc import read_acdc
from cinelab.pipelines.cmr.predict import (
    INDEX_FILE,
    choose_largest_component,
    keep_largest_components,
    predict_cmr,
    record_postprocess,
    resolve_largest_component,
    segment_stack,
    validate_largest_component,
)
from cinelab.pipelines.cmr.prepare import prepare_cmr
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint

SIZE = 32
CLASSES = {"LV": 3, "MYO": 2, "RV": 1}


class Threshold(nn.Module):
    """Logits that make class 1 win where the (normalised) input is positive, else 0."""

    def forward(self, x):
        return torch.cat([-x, x, torch.full_like(x, -9), torch.full_like(x, -9)], dim=1)


def test_segment_stack_classes_and_store_labels():
    slices = np.zeros((3, SIZE, SIZE), np.uint8)
    slices[:, 4:10, 4:10] = 200
    spec = InputSpec("image_segmentation", SIZE, 1, mean=[100.0], std=[50.0])
    indices = segment_stack(Threshold(), slices, spec, batch_size=2)
    assert indices.shape == (3, SIZE, SIZE) and set(np.unique(indices)) == {0, 1}
    assert indices[:, 4:10, 4:10].all() and indices.sum() == 3 * 36
    labels = segment_stack(Threshold(), slices[..., None], spec, CLASSES)
    assert set(np.unique(labels)) == {0, 3}  # class 1 = LV = store label 3
    with pytest.raises(InputError, match="slices"):
        segment_stack(Threshold(), np.zeros((2, 16, 16), np.uint8), spec)


def test_largest_component_per_label():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[0:3, 2:5, 2:5] = 3  # a 27-voxel LV through all slices
    labels[1, 8, 8] = 3  # a stray LV voxel
    labels[0, 7:9, 0:2] = 2  # myocardium: one region only
    out = keep_largest_components(labels)
    assert out[1, 8, 8] == 0 and (out == 3).sum() == 27 and (out == 2).sum() == 4
    assert labels[1, 8, 8] == 3  # the input is not changed


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    cohort = synth_cmr_cohort(root / "synth", n=2, seed=5, layout="acdc", size=(40, 36),
                              n_frames=4)
    torch.manual_seed(0)
    model = create_model("unet_small", in_channels=1, out_channels=4, channels=[8, 16],
                         strides=[2])
    recipe = {"model": {"name": "unet_small",
                        "kwargs": {"in_channels": 1, "out_channels": 4, "channels": [8, 16],
                                   "strides": [2]}},
              "data": {"classes": CLASSES}}
    spec = InputSpec("image_segmentation", SIZE, 1, mean=[50.0], std=[40.0], target="labels")
    save_checkpoint(root / "model.pt", model, recipe, spec, {"classes": CLASSES})
    return root, cohort


def test_predict_store_writes_nifti_per_phase_and_index(cohort):
    root, synth = cohort
    manifest, _ = read_acdc(synth.acdc_root)
    prepare_cmr(manifest, root / "store", size=SIZE, workers=1)
    index = predict_cmr(root / "model.pt", root / "store", root / "out")
    assert len(index) == 4 and set(index["phase"]) == {"ED", "ES"}
    assert pd.read_csv(root / "out" / INDEX_FILE).shape[0] == 4
    row = index.iloc[0]
    labels, spacing = read_volume(row["mask_path"])
    assert labels.shape[1:] == (SIZE, SIZE) and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert spacing[1] == pytest.approx(row["pixel_spacing_y"])
    assert row["voxel_ml"] == pytest.approx(row["pixel_spacing_y"] * row["pixel_spacing_x"]
                                            * row["slice_spacing"] / 1000)


def test_predict_raw_folder_on_native_grid_as_npz(cohort):
    root, synth = cohort
    index = predict_cmr(root / "model.pt", synth.acdc_root, root / "native", fmt="npz",
                        native=True)
    assert (root / "native" / "store" / "store.json").exists()
    row = index.iloc[0]
    with np.load(row["mask_path"]) as data:
        assert data["labels"].shape[1:] == (40, 36)
        assert data["spacing"][1] == pytest.approx(synth.truth["pixel_spacing"].iloc[0])
    with pytest.raises(InputError, match="fmt"):
        predict_cmr(root / "model.pt", root / "store", root / "x", fmt="png")


def _oblique(zooms):
    """A voxel-to-world matrix rotated 30 degrees about z and 20 about x, with an offset."""
    a, b = np.deg2rad(30), np.deg2rad(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(zooms[:3])
    affine[:3, 3] = [-120.5, 33.25, 71.0]
    return affine


def test_native_masks_carry_the_oblique_source_affine(cohort, tmp_path):
    import shutil

    import nibabel as nib

    root, synth = cohort
    acdc = tmp_path / "acdc"
    shutil.copytree(synth.acdc_root, acdc)
    sources = {}
    for path in sorted(acdc.rglob("*_frame*.nii.gz")):  # images and their _gt masks
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        affine = _oblique(image.header.get_zooms())
        nib.save(nib.Nifti1Image(data, affine), path)
        sources[path.name] = affine
    index = predict_cmr(root / "model.pt", acdc, tmp_path / "out", native=True)
    assert len(index) == 4
    for _, row in index.iterrows():
        source = nib.load(row["source"])
        mask = nib.load(row["mask_path"])
        assert mask.shape == source.shape
        np.testing.assert_allclose(mask.affine, sources[source.get_filename().split("/")[-1]],
                                   atol=1e-5)
        np.testing.assert_allclose(mask.get_qform(), source.affine, atol=1e-4)
        np.testing.assert_allclose(mask.header.get_zooms(), source.header.get_zooms(),
                                   atol=1e-6)


def test_largest_component_is_kept_only_where_it_does_not_lower_validation_dice():
    true = np.zeros((2, 12, 12), np.uint8)
    true[:, 1:4, 1:4] = 3  # LV: small true region
    true[:, 6:9, 6:9] = 2  # MYO
    pred = true.copy()
    pred[:, 8:12, 0:4] = 3  # a false LV blob larger than the true LV (patient065 ES)
    pred[0, 11, 11] = 2  # a stray myocardium voxel
    decision = choose_largest_component([(pred, true)], [1, 2, 3])
    assert decision["labels"] == [2]  # LV: the filter would delete the true LV
    lv = decision["dice"]["3"]
    assert lv["raw"] == pytest.approx(2 * 18 / (18 + 32 + 18)) and lv["largest"] == 0.0
    assert decision["dice"]["2"]["largest"] == 1.0 > decision["dice"]["2"]["raw"]
    assert decision["dice"]["1"]["n"] == 0  # no RV anywhere: not scored, not kept


def test_validated_post_processing_is_recorded_and_used_by_auto(cohort, tmp_path):
    import shutil

    root, synth = cohort
    manifest, _ = read_acdc(synth.acdc_root)
    store = tmp_path / "store"
    prepare_cmr(manifest.assign(split="val"), store, size=SIZE, workers=1)
    model = tmp_path / "model.pt"
    shutil.copy(root / "model.pt", model)
    assert resolve_largest_component(load_checkpoint(model), "auto") == []  # never blindly
    decision = validate_largest_component(model, store, "val")
    assert decision["samples"] == 4 and set(decision["dice"]) == {"1", "2", "3"}
    for value, dice in decision["dice"].items():
        assert (int(value) in decision["labels"]) == (dice["n"] > 0
                                                      and dice["largest"] >= dice["raw"])
    record_postprocess(model, decision)
    loaded = load_checkpoint(model)
    assert resolve_largest_component(loaded, "auto") == decision["labels"]
    assert resolve_largest_component(loaded, "none") is False
    assert resolve_largest_component(loaded, "all") is True
    with pytest.raises(InputError, match="largest_component"):
        resolve_largest_component(loaded, "some")
    with pytest.raises(InputError, match="split"):
        validate_largest_component(model, store, "train")
