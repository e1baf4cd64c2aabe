"""Synthetic CMR cohorts: known volumes, real DICOM tags, ACDC files, defects, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cinelab.errors import InputError
from cinelab.io.nifti import read_volume
from cinelab.pipelines.cmr.acdc import read_info_cfg
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.cmr.synth_writers import DEFECT_PROBLEMS, DEFECTS
from cinelab.synth.cmr_phantom import (
    GROUP_RANGES,
    Grid,
    analytic_lv_ml,
    contraction,
    labels_at,
    random_heart,
)

N = 3
FRAMES = 8


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return synth_cmr_cohort(tmp_path_factory.mktemp("cmr"), n=N, seed=3, layout="both",
                            defects=False, n_frames=FRAMES)


def test_truth_table(cohort) -> None:
    truth = pd.read_csv(cohort.root / "truth.csv", dtype={"pid": str})
    assert list(truth["pid"]) == ["1", "2", "3"]
    assert list(truth["group"]) == ["NOR", "DCM", "HCM"]
    for _, row in truth.iterrows():
        assert row["EDV"] > row["ESV"] > 0
        assert row["EF"] == pytest.approx(100 * (row["EDV"] - row["ESV"]) / row["EDV"])
        # voxel truth close to the analytic half ellipsoid
        assert row["EDV"] == pytest.approx(row["analytic_EDV"], rel=0.08)
        assert row["EF"] == pytest.approx(row["analytic_EF"], abs=4.0)
        lo, hi = GROUP_RANGES[row["group"]][1]
        assert lo - 4 <= row["EF"] <= hi + 4
        assert row["LVM"] == pytest.approx(1.05 * row["myo_ml"])


def test_acdc_masks_times_spacing_match_truth(cohort) -> None:
    truth = cohort.truth.set_index("acdc_id")
    for folder in sorted(cohort.acdc_root.glob("*/patient*")):
        info = read_info_cfg(folder / "Info.cfg")
        row = truth.loc[folder.name]
        assert info["Group"] == row["group"] and info["NbFrame"] == FRAMES
        assert info["ED"] == row["ed_frame"] + 1 and info["ES"] == row["es_frame"] + 1
        volumes = {}
        for phase in ("ED", "ES"):
            mask, spacing = read_volume(folder / f"{folder.name}_frame{info[phase]:02d}_gt.nii.gz")
            assert set(np.unique(mask)) == {0, 1, 2, 3}
            assert spacing == pytest.approx((row["slice_spacing"], row["pixel_spacing"],
                                             row["pixel_spacing"]), rel=1e-5)
            volumes[phase] = np.count_nonzero(mask == 3) * np.prod(spacing) / 1000
        assert volumes["ED"] == pytest.approx(row["EDV"], rel=0.03)
        assert volumes["ES"] == pytest.approx(row["ESV"], rel=0.03)
        cine, cine_spacing = read_volume(folder / f"{folder.name}_4d.nii.gz")
        assert cine.shape == (FRAMES, row["slices"], row["rows"], row["cols"])
        assert cine.dtype == np.uint16 and len(cine_spacing) == 4


def test_dsb_dicom_tags(cohort) -> None:
    truth = cohort.truth.set_index("pid")
    folders = sorted((cohort.dsb_root / "1" / "study").iterdir())
    assert len(folders) == truth.loc["1", "slices"]
    files = sorted(folders[0].glob("*.dcm"))
    assert len(files) == FRAMES
    datasets = [pydicom.dcmread(f) for f in files]
    ds = datasets[0]
    assert ds.Modality == "MR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert (ds.Rows, ds.Columns) == (truth.loc["1", "rows"], truth.loc["1", "cols"])
    assert float(ds.PixelSpacing[0]) == pytest.approx(truth.loc["1", "pixel_spacing"], rel=1e-5)
    assert int(ds.CardiacNumberOfImages) == FRAMES and ds.pixel_array.dtype == np.uint16
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    assert float(ds.SliceLocation) == pytest.approx(
        float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal)), abs=1e-4)
    times = [float(d.TriggerTime) for d in datasets]
    assert times == sorted(times) and times[0] == 0.0
    assert [int(d.InstanceNumber) for d in datasets] == list(range(1, FRAMES + 1))
    assert len({d.SOPInstanceUID for d in datasets}) == FRAMES
    locations = [float(pydicom.dcmread(next(f.glob("*.dcm"))).SliceLocation) for f in folders]
    assert np.allclose(np.abs(np.diff(sorted(locations))), truth.loc["1", "slice_spacing"],
                       atol=1e-3)
    ids = pd.read_csv(cohort.dsb_root / "train.csv", dtype={"Id": str})["Id"].tolist()
    solution = pd.read_csv(cohort.dsb_root / "solution.csv")
    assert ids == ["1", "2"] and list(solution["Id"]) == ["3_Diastole", "3_Systole"]


def test_deterministic_by_seed(tmp_path: Path) -> None:
    runs = [synth_cmr_cohort(tmp_path / name, n=1, seed=seed, layout="both", n_frames=4)
            for name, seed in (("a", 5), ("b", 5), ("c", 6))]
    pd.testing.assert_frame_equal(runs[0].truth, runs[1].truth)
    assert not runs[0].truth["EDV"].equals(runs[2].truth["EDV"])
    rel = Path("1/study/sax_5/IM-0005-0002.dcm")
    a, b = (pydicom.dcmread(r.dsb_root / rel) for r in runs[:2])
    np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    assert a.SOPInstanceUID == b.SOPInstanceUID
    cine = Path("training/patient001/patient001_4d.nii.gz")
    np.testing.assert_array_equal(read_volume(runs[0].acdc_root / cine)[0],
                                  read_volume(runs[1].acdc_root / cine)[0])


def test_defects_recorded(tmp_path: Path) -> None:
    cohort = synth_cmr_cohort(tmp_path, n=len(DEFECTS) + 1, seed=0, n_frames=4,
                              size=(48, 40))
    defects = pd.read_csv(tmp_path / "defects.csv", dtype={"pid": str})
    assert list(defects["defect"]) == list(DEFECTS)
    assert list(defects["pid"]) == [str(i + 2) for i in range(len(DEFECTS))]
    assert list(defects["expected_problem"]) == [DEFECT_PROBLEMS[d] for d in DEFECTS]
    assert cohort.acdc_root is None and not (tmp_path / "acdc").exists()
    study = tmp_path / "dsb"
    n_slices = dict(zip(cohort.truth["pid"], cohort.truth["slices"], strict=True))
    assert len(list((study / "2/study").iterdir())) == 2 * n_slices["2"]  # repeated series
    assert all(len(list(d.iterdir())) == 8 for d in (study / "3/study").iterdir())  # 2 x 4
    counts = sorted(len(list(d.iterdir())) for d in (study / "4/study").iterdir())
    assert counts[0] == 3 and counts[1:] == [4] * (n_slices["4"] - 1)  # missing time point
    shapes = {pydicom.dcmread(next(d.iterdir())).pixel_array.shape
              for d in (study / "5/study").iterdir()}
    assert shapes == {(48, 40), (40, 48)}  # one rotated series
    assert len(list((study / "6/study").iterdir())) == n_slices["6"] - 1  # slice gap
    sizes = {pydicom.dcmread(next(d.iterdir())).Rows for d in (study / "7/study").iterdir()}
    assert sizes == {48, 60}  # one finer, larger series


def test_phantom_myocardium_constant_and_any_grid() -> None:
    heart = random_heart(np.random.default_rng(1), "NOR")
    states = contraction(heart, 20)
    assert states.min() == 0.0 and states.max() == pytest.approx(1.0, abs=0.02)
    assert analytic_lv_ml(heart, 0.0) == pytest.approx(heart.edv_ml)
    assert analytic_lv_ml(heart, 1.0) == pytest.approx(heart.edv_ml * (1 - heart.ef / 100))
    coarse, fine = Grid(60, 50, (2.4, 2.4)), Grid(120, 100, (1.2, 1.2))
    a, b = labels_at(heart, coarse, -20.0, 0.0), labels_at(heart, fine, -20.0, 0.0)
    area = [np.count_nonzero(m == 3) * g.spacing[0] ** 2 for m, g in ((a, coarse), (b, fine))]
    assert area[0] == pytest.approx(area[1], rel=0.05)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="layout"):
        synth_cmr_cohort(tmp_path, layout="nifti")
    with pytest.raises(InputError, match="n_frames"):
        synth_cmr_cohort(tmp_path, n_frames=2)
