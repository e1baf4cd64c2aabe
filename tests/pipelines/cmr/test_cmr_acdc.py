"""ACDC layouts: the NIfTI folders (synthetic) and the real HDF5 ED/ES samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cinelab.data.manifest import validate_manifest
from cinelab.errors import InputError
from cinelab.pipelines.cmr.acdc import (
    acdc_group,
    label_volume,
    load_acdc_h5,
    load_acdc_patient,
    read_acdc,
    read_acdc_h5,
    read_info_cfg,
)
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from conftest import real_path

FRAMES = 6
# LV-cavity voxel-count EF of the real samples (acdc-h5/manifest.txt) and the README ranges.
REAL_EF = {"patient001": 23.7, "patient007": 10.5, "patient022": 64.9, "patient033": 71.5,
           "patient045": 29.7, "patient052": 33.7, "patient065": 66.0, "patient080": 62.2,
           "patient085": 59.9, "patient093": 58.6}
README_EF = {"DCM": (10, 24), "HCM": (65, 72), "MINF": (30, 34), "NOR": (62, 66), "RV": (59, 60)}
README_ROUNDING = 1.5  # the README ranges are rounded (e.g. MINF 29.7 reads "30-34")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return synth_cmr_cohort(tmp_path_factory.mktemp("acdc"), n=4, seed=2, layout="acdc",
                            n_frames=FRAMES)


def test_read_acdc_manifest_and_volumes(cohort) -> None:
    manifest, problems = read_acdc(cohort.acdc_root)
    assert problems == [] and validate_manifest(manifest) == []
    assert len(manifest) == 8 and set(manifest["phase"]) == {"ED", "ES"}
    assert set(manifest["split"]) == {"train", "test"}
    truth = cohort.truth.set_index("acdc_id")
    for _, row in manifest.iterrows():
        t = truth.loc[row["patient_id"]]
        assert row["Group"] == t["group"] and row["NbFrame"] == FRAMES
        assert row["EDV"] == pytest.approx(t["EDV"], rel=0.03)  # masks x spacing = truth
        assert row["ESV"] == pytest.approx(t["ESV"], rel=0.03)
        assert row["EF"] == pytest.approx(t["EF"], abs=0.5)
        assert row["LVM"] == pytest.approx(t["LVM"], rel=0.03)
        frame = t["ed_frame"] + 1 if row["phase"] == "ED" else t["es_frame"] + 1
        assert row["frame"] == frame and row["sample_id"].endswith(f"_frame{frame:02d}")
        assert Path(row["mask_path"]).is_file() and Path(row["cine_path"]).is_file()


def test_load_acdc_patient(cohort) -> None:
    folder = next(cohort.acdc_root.glob("*/patient001"))
    data = load_acdc_patient(folder, cine=True)
    t = cohort.truth.set_index("acdc_id").loc["patient001"]
    shape = (t["slices"], t["rows"], t["cols"])
    assert data["ed_image"].shape == data["es_mask"].shape == shape
    assert data["ed_image"].dtype == np.float32 and data["ed_mask"].dtype == np.uint8
    assert data["cine"].shape == (FRAMES, *shape)
    assert data["spacing"] == pytest.approx((t["slice_spacing"], t["pixel_spacing"],
                                             t["pixel_spacing"]), rel=1e-5)
    assert label_volume(data["ed_mask"], data["spacing"], 3) == pytest.approx(t["EDV"], rel=1e-4)
    assert label_volume(data["ed_mask"], None, 3) == np.count_nonzero(data["ed_mask"] == 3)
    np.testing.assert_array_equal(data["cine"][t["ed_frame"]], data["ed_image"])
    assert data["info"]["Group"] == t["group"]


def test_missing_files_are_problems(cohort, tmp_path: Path) -> None:
    root = tmp_path / "training"
    shutil.copytree(cohort.acdc_root / "training", root)
    (root / "patient001" / "Info.cfg").unlink()
    ed = read_info_cfg(root / "patient002" / "Info.cfg")["ED"]
    (root / "patient002" / f"patient002_frame{ed:02d}_gt.nii.gz").unlink()
    manifest, problems = read_acdc(tmp_path)
    assert sorted(set(manifest["patient_id"])) == ["patient002", "patient003"]
    assert len(problems) == 2 and "Info.cfg" in problems[0].file
    ed_row = manifest[(manifest["patient_id"] == "patient002") & (manifest["phase"] == "ED")]
    assert ed_row["mask_path"].item() == "" and np.isnan(ed_row["EDV"].item())
    single, _ = read_acdc(root / "patient003")  # a patient folder itself
    assert len(single) == 2


def test_info_cfg_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "Info.cfg"
    cfg.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nWeight: 95.0\nNbFrame: 30\n")
    assert read_info_cfg(cfg) == {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0,
                                  "Weight": 95.0, "NbFrame": 30}
    cfg.write_text("ED: 1\nGroup: DCM\n")
    with pytest.raises(InputError, match="ES"):
        read_info_cfg(cfg)
    cfg.write_text("ED: one\nES: 2\n")
    with pytest.raises(InputError, match="a number"):
        read_info_cfg(cfg)
    cfg.write_text("ED 1\n")
    with pytest.raises(InputError, match="line 1"):
        read_info_cfg(cfg)


def test_acdc_group_by_number() -> None:
    assert [acdc_group(n) for n in (1, 20, 21, 45, 80, 100, 101)] == [
        "DCM", "DCM", "HCM", "MINF", "NOR", "RV", ""]


def test_real_h5_samples_load() -> None:
    root = real_path("acdc-h5", "data")
    manifest, problems = read_acdc_h5(root)
    assert problems == [] and validate_manifest(manifest) == []
    assert len(manifest) == 20 and manifest["patient_id"].nunique() == 10
    phases = manifest.groupby("patient_id")["phase"].apply(sorted)
    assert all(p == ["ED", "ES"] for p in phases)
    assert (manifest.groupby("Group")["patient_id"].nunique() == 2).all()
    image, label = load_acdc_h5(manifest["path"].iloc[0])
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape == (10, 256, 216)  # patient001: slices x H x W
    assert 0.0 <= image.min() < image.max() <= 1.0
    assert set(np.unique(label)) == {0, 1, 2, 3}


def test_real_h5_lv_voxel_ef_matches_the_groups() -> None:
    manifest, _ = read_acdc_h5(real_path("acdc-h5", "data"))
    lv = manifest.pivot_table(index=["patient_id", "Group"], columns="phase",
                              values="lv_voxels").reset_index()
    for _, row in lv.iterrows():
        ef = 100.0 * (row["ED"] - row["ES"]) / row["ED"]
        assert ef == pytest.approx(REAL_EF[row["patient_id"]], abs=0.1)
        lo, hi = README_EF[row["Group"]]
        assert lo - README_ROUNDING <= ef <= hi + README_ROUNDING, row["patient_id"]


def test_bad_h5_files(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "patient001_frame01.h5", "w") as f:
        f["image"] = np.zeros((2, 4, 4), np.float32)
    with h5py.File(tmp_path / "patient002_frame01.h5", "w") as f:
        f["image"] = np.zeros((2, 4, 4), np.float32)
        f["label"] = np.full((2, 4, 4), 7, np.uint8)
    with h5py.File(tmp_path / "patient003_frame02.h5", "w") as f:
        f["image"] = np.zeros((2, 4, 4), np.float32)
        f["label"] = np.zeros((2, 4, 4), np.uint8)
    (tmp_path / "other.h5").write_bytes(b"")
    (tmp_path / "patient004_frame01.h5").write_bytes(b"not hdf5")
    manifest, problems = read_acdc_h5(tmp_path)
    assert list(manifest["sample_id"]) == ["patient003_frame02"]
    assert manifest["phase"].item() == "ES" and manifest["Group"].item() == "DCM"
    errors = sorted(Path(p.file).name for p in problems)
    assert errors == ["other.h5", "patient001_frame01.h5", "patient002_frame01.h5",
                      "patient004_frame01.h5"]
    with pytest.raises(InputError, match="label"):
        load_acdc_h5(tmp_path / "patient001_frame01.h5")
