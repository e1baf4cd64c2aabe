"""CXR ensemble prediction on raw files: good and bad images, crops, TTA, real images,
Grad-CAM. The tiny ensemble here has random weights (its numbers mean nothing)."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from cinelab.errors import InputError
from cinelab.infer.contract import read_predictions, read_problems, read_run
from cinelab.infer.ensemble import EnsembleWeights, save_ensemble_weights
from cinelab.io.cxr_dicom import write_cxr_dicom
from cinelab.io.image import read_image, write_image
from cinelab.models.registry import create_model
from cinelab.pipelines.cxr.gradcam import cxr_gradcam
from cinelab.pipelines.cxr.predict import (
    load_cxr_ensemble,
    predict,
    predict_cxr,
    to_batch,
)
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from conftest import real_path

SIDE = 96
MEMBERS = {"resnet10t-32-crop": ("resnet10t", 32, "crop", 1),
           "mobilenetv3_small-40-uncrop": ("mobilenetv3_small", 40, "uncrop", 3)}
WEIGHTS = [0.7, 0.3]


def _checkpoint(path: Path, name: str, size: int, channels: int, task: str,
                **kwargs) -> str:
    torch.manual_seed(size)
    model = create_model(name, in_channels=channels, **kwargs)
    recipe = {"model": {"name": name, "kwargs": {"in_channels": channels, **kwargs}}}
    spec = InputSpec(task=task, size=size, channels=channels, mean=[110.0] * channels,
                     std=[60.0] * channels)
    save_checkpoint(path, model, recipe, spec)
    return str(path.relative_to(path.parents[2] if task != "segmentation" else path.parents[1]))


def make_ensemble(root: Path, lung: bool = True, crop_source: str | None = None) -> Path:
    """A two-member ensemble folder (+ a lung U-Net) as train_ensemble lays it out."""
    info = {}
    for name, (model, size, crop, channels) in MEMBERS.items():
        rel = _checkpoint(root / "members" / name / "model.pt", model, size, channels,
                          "image_classification", num_outputs=1)
        info[name] = {"model": model, "size": size, "crop": crop, "checkpoint": rel}
    details = {"member_info": info, "threshold": 0.5}
    if crop_source:
        details["crop_source"] = crop_source
    if lung:
        details["lung_model"] = _checkpoint(root / "lung" / "model.pt", "unet_small", 32, 1,
                                            "segmentation", out_channels=1)
    ens = EnsembleWeights(np.array(WEIGHTS), "bmc", "binary", list(MEMBERS), details)
    save_ensemble_weights(root / "ensemble.json", ens)
    return root


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    return make_ensemble(tmp_path_factory.mktemp("ens"))


def _bad_folder(root: Path) -> Path:
    cohort = synth_cxr_cohort(root / "synth", n=2, size=SIDE, seed=3)
    good = sorted(cohort.rglob("P*.png"))
    good = [p for p in good if p.parent.name != "masks"][0]
    img = read_image(good)
    folder = root / "in"
    folder.mkdir()
    write_image(folder / "good.png", img)
    Image.fromarray(img).convert("RGB").save(folder / "good.jpg", quality=95)
    write_image(folder / "deep16.png", img.astype(np.uint16) * 257)
    rgba = np.dstack([img, img, img, np.full_like(img, 255)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    big = np.kron(img, np.ones((3, 3), np.uint8))  # 288 px: above the DICOM minimum side
    write_cxr_dicom(folder / "mono1.dcm", (4095 - big.astype(np.uint16) * 16),
                    photometric="MONOCHROME1", bits_stored=12)
    write_cxr_dicom(folder / "ct.dcm", big, Modality="CT")  # not a radiograph
    write_cxr_dicom(folder / "lateral.dcm", big, ViewPosition="LL")
    write_cxr_dicom(folder / "thumb.dcm", img)  # 96 px: a thumbnail
    (folder / "empty.png").write_bytes(b"")
    (folder / "trunc.png").write_bytes((folder / "good.png").read_bytes()[:300])
    nopix = write_cxr_dicom(folder / "nopix.dcm", big)
    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)
    return folder


def test_good_and_bad_files(ensemble_dir, tmp_path):
    folder = _bad_folder(tmp_path)
    result = predict_cxr(ensemble_dir, folder, tmp_path / "out", tta=2)
    table = result.table.set_index("sample_id")
    assert sorted(table.index) == ["deep16", "good.jpg", "good.png", "mono1", "rgba"]
    bad = {Path(p.file).name: p.error for p in result.problems}
    assert sorted(bad) == ["ct.dcm", "empty.png", "lateral.dcm", "nopix.dcm", "thumb.dcm",
                           "trunc.png"]
    assert "0 bytes" in bad["empty.png"] and "PixelData" in bad["nopix.dcm"]
    assert "Modality" in bad["ct.dcm"] and "ViewPosition" in bad["lateral.dcm"]
    assert "256" in bad["thumb.dcm"]
    members = table[[f"probability_{n}" for n in MEMBERS]].to_numpy()
    np.testing.assert_allclose(table["probability"], members @ np.array(WEIGHTS), rtol=1e-6)
    assert table["probability"].between(0, 1).all()
    assert (table["prediction"] == (table["probability"] >= 0.5)).all()
    assert (table["threshold"] == 0.5).all() and (table["patient_id"] == table.index).all()
    assert (table["tta"] == 2).all() and table["crop_reason"].astype(bool).all()
    # the RGBA copy holds the same picture as the PNG: same prediction
    assert table.loc["rgba", "probability"] == pytest.approx(table.loc["good.png",
                                                                       "probability"])
    written = read_predictions(tmp_path / "out")
    assert list(written.columns[:5]) == ["sample_id", "patient_id", "probability", "prediction",
                                         "threshold"]
    assert sorted(written["sample_id"]) == sorted(table.index)
    assert sorted(Path(p.file).name for p in read_problems(tmp_path / "out")) == sorted(bad)
    run = read_run(tmp_path / "out")
    assert (run["pipeline"], run["task"], run["members"], run["tta"]) == \
        ("cxr", "image_classification", list(MEMBERS), 2)
    assert run["checkpoint_hash"] and run["input"] == str(folder)


def test_tta_is_seeded(ensemble_dir, tmp_path):
    folder = _bad_folder(tmp_path)
    a = predict_cxr(ensemble_dir, folder / "good.png", tta=3, seed=1).table
    b = predict_cxr(ensemble_dir, folder / "good.png", tta=3, seed=1).table
    c = predict_cxr(ensemble_dir, folder / "good.png", tta=1).table
    assert a["probability"].iloc[0] == b["probability"].iloc[0]
    assert a["probability"].iloc[0] != c["probability"].iloc[0]


def test_mask_files_give_a_lung_crop(tmp_path):
    ens_dir = make_ensemble(tmp_path / "ens", lung=False)
    cohort = synth_cxr_cohort(tmp_path / "synth", n=4, size=SIDE, seed=4)
    table = predict_cxr(ens_dir, cohort, mask_source="files").table
    assert len(table) == 4 and table["cropped"].all() and (table["crop_reason"] == "ok").all()
    table = predict_cxr(ens_dir, cohort, mask_source="none").table
    assert not table["cropped"].any()


@pytest.mark.slow
def test_predict_uses_the_crop_source_the_ensemble_was_trained_with(tmp_path):
    cohort = synth_cxr_cohort(tmp_path / "synth", n=2, size=SIDE, seed=4)
    files = make_ensemble(tmp_path / "files", lung=True, crop_source="files")
    result = predict_cxr(files, cohort, tmp_path / "out")  # auto: mask files, not the U-Net
    assert result.table["cropped"].all() and (result.table["crop_reason"] == "ok").all()
    run = read_run(tmp_path / "out")
    assert (run["mask_source"], run["crop_source"]) == ("files", "files")
    unet = make_ensemble(tmp_path / "unet", lung=False, crop_source="unet")
    with pytest.raises(InputError, match="lung U-Net"):
        predict_cxr(unet, cohort)  # never a silent whole-image run
    fallback = predict_cxr(files, cohort, mask_source="none").table
    assert not fallback["cropped"].any() and (fallback["crop_reason"] == "no lung mask").all()


def test_gradcam_on_the_original_image(ensemble_dir, tmp_path):
    folder = _bad_folder(tmp_path)
    ens = load_cxr_ensemble(ensemble_dir)
    cam = cxr_gradcam(ens, folder / "good.png", tmp_path / "cam.png")
    assert cam.shape == (SIDE, SIDE) and cam.dtype == np.float32 and cam.min() >= 0
    assert read_image(tmp_path / "cam.png", rgb=True).shape == (SIDE, SIDE, 3)
    one = cxr_gradcam(ens, folder / "good.png", member="mobilenetv3_small-40-uncrop")
    assert one.shape == (SIDE, SIDE)


def test_channel_conversion():
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    assert to_batch(grey, 3).shape == (2, 3, 4, 4)
    rgb = np.stack([grey] * 3, axis=-1)
    torch.testing.assert_close(to_batch(rgb, 1)[:, 0], torch.from_numpy(grey).float())


@pytest.mark.slow
def test_real_images_go_through_predict(ensemble_dir, tmp_path):
    root = real_path("cxr-covid")
    result = predict_cxr(ensemble_dir, root, tmp_path / "real")
    n_images = sum(1 for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    assert len(result.table) == n_images and not result.problems
    assert result.table["probability"].between(0, 1).all()
    assert result.table["sample_id"].is_unique
    assert (result.table[["height", "width"]] > 200).all().all()


def test_dicom_acceptance_is_an_option(ensemble_dir, tmp_path):
    folder = _bad_folder(tmp_path)
    options = Options(extra={"modalities": ["DX", "CT"], "min_side": 64})
    predict(Path(ensemble_dir), folder, tmp_path / "out", options)
    ids = set(read_predictions(tmp_path / "out")["sample_id"])
    assert {"ct", "thumb", "mono1"} <= ids and "lateral" not in ids
    assert read_run(tmp_path / "out")["accept"]["min_side"] == 64
