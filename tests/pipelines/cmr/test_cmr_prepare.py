"""CMR stacks into the prepared store: ACDC NIfTI (spacing, masks, volumes), ACDC HDF5 (no
spacing), 4D cines, PNG pairs; geometry helpers; bad files become problems."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cinelab.data.manifest import new_manifest
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.io.nifti import write_volume
from cinelab.pipelines.cmr.acdc import LV_LABEL, read_acdc, read_acdc_h5
from cinelab.pipelines.cmr.prepare import (
    cine_frames,
    cmr_manifest,
    crop_box,
    fit_transform,
    normalise_intensity,
    prepare_cmr,
    resize_labels,
    restore_labels,
    sample_volume_ml,
)
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from conftest import real_path

SIZE = 32
VOLUME_TOLERANCE = 0.10  # store-size LV volume vs the source mask's (resampling)


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmr")
    cohort = synth_cmr_cohort(root / "synth", n=2, seed=3, layout="acdc", size=(48, 40),
                              n_frames=4)
    manifest, problems = read_acdc(cohort.acdc_root)
    assert not problems
    summary = prepare_cmr(manifest, root / "store", size=SIZE, workers=1)
    assert summary.failed == 0
    return cohort, PreparedStore(root / "store")


def test_acdc_stacks_keep_labels_spacing_and_volumes(acdc):
    cohort, store = acdc
    m = store.manifest
    assert set(m["phase"]) == {"ED", "ES"} and m["group"].notna().all()
    assert {"EDV", "ESV", "EF", "volume_unit"} <= set(m.columns)
    for sid in store.ids:
        meta, frames, mask = store.meta(sid), store.frames(sid), store.mask(sid)
        z = meta["original_shape"][0]
        assert frames.shape == (z, SIZE, SIZE, 1) and frames.dtype == np.uint8
        assert mask.shape == (z, SIZE, SIZE) and set(np.unique(mask)) <= {0, 1, 2, 3}
        source = nib.load(meta["source"])
        dx, dy, dz = (float(v) for v in source.header.get_zooms()[:3])
        scale = meta["transform"]["scale"]
        assert meta["pixel_spacing_mm"] == pytest.approx([dy / scale[0], dx / scale[1]])
        assert meta["slice_spacing_mm"] == pytest.approx(dz)
    truth = cohort.truth.set_index("acdc_id")
    ed = m[m["phase"] == "ED"]
    for sid, pid in zip(ed["sample_id"], ed["patient_id"], strict=True):
        ml = sample_volume_ml(store.mask(sid), store.meta(sid), LV_LABEL)
        assert ml == pytest.approx(truth.loc[pid, "EDV"], rel=VOLUME_TOLERANCE)


def test_restore_labels_returns_to_the_source_grid(acdc):
    _, store = acdc
    sid = store.ids[0]
    meta = store.meta(sid)
    restored = restore_labels(np.asarray(store.mask(sid)), meta["transform"])
    assert list(restored.shape) == meta["original_shape"]
    source = np.asarray(nib.load(store.manifest.loc[0, "mask_path"]).dataobj).T
    lv_a, lv_b = restored == LV_LABEL, source == LV_LABEL
    assert 2 * (lv_a & lv_b).sum() / (lv_a.sum() + lv_b.sum()) > 0.85


def test_fit_transform_keeps_aspect_by_padding():
    t = fit_transform((100, 50), 64)
    assert t["resized_shape"] == [64, 32] and t["pad"] == [0, 16]
    labels = np.zeros((1, 100, 50), np.uint8)
    labels[0, 40:60, 20:30] = 3
    out = resize_labels(labels, t)
    assert out.shape == (1, 64, 64) and out[0, :, :16].max() == 0 and out.max() == 3


def test_intensity_normalisation_is_per_volume():
    volume = np.linspace(0, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    out = normalise_intensity(volume)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(normalise_intensity(np.ones((2, 4, 4))) == 0)


def _h5(path, image, label):
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = image, label


def test_h5_samples_have_no_spacing_and_voxel_volumes(tmp_path):
    rng = np.random.default_rng(0)
    for frame, radius in ((1, 8), (2, 5)):
        label = np.zeros((3, 40, 30), np.uint8)
        yy, xx = np.mgrid[:40, :30]
        label[:, (yy - 20) ** 2 + (xx - 15) ** 2 < radius**2] = LV_LABEL
        _h5(tmp_path / f"patient011_frame{frame:02d}.h5", rng.random((3, 40, 30),
                                                                     dtype=np.float32), label)
    manifest, _ = read_acdc_h5(tmp_path)
    prepare_cmr(manifest, tmp_path / "store", size=SIZE, workers=1)
    store = PreparedStore(tmp_path / "store")
    meta = store.meta("patient011_frame01")
    assert meta["pixel_spacing_mm"] is None and meta["slice_spacing_mm"] is None
    row = store.manifest.set_index("sample_id").loc["patient011_frame01"]
    assert row["volume_unit"] == "voxels" and row["group"] == "DCM"
    assert row["EF"] == pytest.approx(100 * (row["EDV"] - row["ESV"]) / row["EDV"])
    assert sample_volume_ml(store.mask("patient011_frame01"), meta) > 0


def test_real_acdc_h5_store(tmp_path):
    data = real_path("acdc-h5", "data")
    manifest, _ = read_acdc_h5(data)
    manifest = manifest[manifest["patient_id"] == "patient080"]
    prepare_cmr(manifest, tmp_path / "store", size=64, workers=1)
    store = PreparedStore(tmp_path / "store")
    assert len(store.ids) == 2
    mask = store.mask("patient080_frame01")
    assert mask.shape == (6, 64, 64) and set(np.unique(mask)) == {0, 1, 2, 3}
    assert store.manifest["EF"].iloc[0] == pytest.approx(62.2, abs=0.1)


def test_cine_is_stored_time_major(tmp_path):
    cine = np.random.default_rng(1).random((5, 3, 20, 24)).astype(np.float32)
    path = write_volume(tmp_path / "c" / "sa.nii.gz", cine, (0.04, 8.0, 1.5, 1.5))
    manifest = new_manifest([{"sample_id": "c1", "path": str(path), "patient_id": "p1"}])
    prepare_cmr(manifest, tmp_path / "store", size=SIZE, workers=1)
    store = PreparedStore(tmp_path / "store")
    meta = store.meta("c1")
    assert meta["kind"] == "cine" and meta["cine_shape"] == [5, 3]
    assert store.frames("c1").shape == (15, SIZE, SIZE, 1) and store.mask("c1") is None
    assert meta["fps"] == pytest.approx(25.0) and meta["slice_spacing_mm"] == 8.0
    view = cine_frames(store.frames("c1"), meta)
    assert view.shape == (5, 3, SIZE, SIZE, 1)
    cine[2, 1] += 10  # the brightest image must come back at (t=2, z=1)
    path = write_volume(tmp_path / "d" / "sa.nii.gz", cine, (0.04, 8.0, 1.5, 1.5))
    prepare_cmr(new_manifest([{"sample_id": "c2", "path": str(path)}]), tmp_path / "s2",
                size=SIZE, workers=1)
    s2 = PreparedStore(tmp_path / "s2")
    means = cine_frames(s2.frames("c2"), s2.meta("c2")).mean(axis=(2, 3, 4))
    assert np.unravel_index(np.argmax(means), means.shape) == (2, 1)


def test_png_pair_and_bad_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = (np.random.default_rng(2).random((30, 20)) * 255).astype(np.uint8)
    mask = np.zeros((30, 20), np.uint8)
    mask[10:20, 5:15] = 2
    Image.fromarray(image).save(tmp_path / "images" / "p1-frame001-slice002.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "p1-frame001-slice002.png")
    rows = [{"sample_id": "png", "patient_id": "p1",
             "path": str(tmp_path / "images" / "p1-frame001-slice002.png"),
             "mask_path": str(tmp_path / "masks" / "p1-frame001-slice002.png")},
            {"sample_id": "bad", "path": str(tmp_path / "broken.nii.gz")}]
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    summary = prepare_cmr(cmr_manifest(new_manifest(rows)), tmp_path / "store", size=SIZE,
                          workers=1)
    assert summary.prepared == 1 and summary.failed == 1
    assert "broken.nii.gz" in summary.problems[0].file
    store = PreparedStore(tmp_path / "store")
    assert store.frames("png").shape == (1, SIZE, SIZE, 1)
    assert set(np.unique(store.mask("png"))) == {0, 2}


def test_centre_crop_keeps_the_heart_and_restores(tmp_path, acdc):
    _, store = acdc
    manifest = store.manifest.iloc[:1]
    prepare_cmr(manifest, tmp_path / "store", size=SIZE, crop="centre:0.7", workers=1)
    cropped = PreparedStore(tmp_path / "store")
    meta, full = cropped.meta(cropped.ids[0]), store.meta(store.ids[0])
    assert meta["transform"]["box"] == crop_box((48, 40), "centre:0.7") == [7, 3, 41, 37]
    assert meta["pixel_spacing_mm"][0] < full["pixel_spacing_mm"][0]  # finer pixels
    restored = restore_labels(np.asarray(cropped.mask(cropped.ids[0])), meta["transform"])
    original = restore_labels(np.asarray(store.mask(store.ids[0])), full["transform"])
    assert restored.shape == original.shape and restored[:, :7].max() == 0
    assert np.count_nonzero(restored == LV_LABEL) == pytest.approx(
        np.count_nonzero(original == LV_LABEL), rel=VOLUME_TOLERANCE)
    with pytest.raises(InputError, match="crop"):
        crop_box((48, 40), "middle:2")
