"""Kaggle DSB layout: every injected defect detected and resolved as logged, missing tags,
mixed sizes, volumes, NIfTI/TSV outputs (on synthetic DSB-like DICOM cohorts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cinelab.errors import InputError
from cinelab.io.dicom_series import MRImage, read_mr_image
from cinelab.io.nifti import read_volume
from cinelab.pipelines.cmr import dsb_clean as dc
from cinelab.pipelines.cmr.dsb import (
    USED_COLUMNS,
    USED_DICOMS_TSV,
    convert_dsb,
    find_dsb_patients,
    read_dsb_patient,
    read_dsb_volumes,
)
from cinelab.pipelines.cmr.dsb_clean import ConversionLog, SliceSeries
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.cmr.synth_writers import DEFECTS

FRAMES = 6
N = len(DEFECTS) + 1  # patient 1 clean, patients 2..7 one defect each


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return synth_cmr_cohort(tmp_path_factory.mktemp("dsb"), n=N, seed=1, layout="both",
                            n_frames=FRAMES)


@pytest.fixture(scope="module")
def converted(cohort, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("converted")
    return out, convert_dsb(cohort.dsb_root, out, metadata=True)


def _copy_patient(cohort, tmp_path: Path, pid: str = "1") -> Path:
    return Path(shutil.copytree(cohort.dsb_root / pid, tmp_path / pid))


def _edit(folder: Path, *keywords: str, sax: str | None = None) -> None:
    """Delete DICOM attributes from every image (of one sax folder, or of all)."""
    pattern = f"{sax}/*.dcm" if sax else "*/*.dcm"
    for path in (folder / "study").glob(pattern):
        ds = pydicom.dcmread(path)
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)


@pytest.mark.slow
def test_every_defect_detected_and_resolved(cohort, converted) -> None:
    _, result = converted
    log = result.log
    for _, defect in cohort.defects.iterrows():
        rows = log[(log["pid"] == defect["pid"]) | log["pid"].str.startswith(defect["pid"] + "_")]
        assert defect["expected_problem"] in set(rows["problem"]), defect["defect"]
    clean = set(log.loc[log["pid"] == "1", "problem"])
    assert clean == set()  # the defect-free patient needs no fix
    assert set(log["problem"]) <= {*cohort.defects["expected_problem"], dc.PROBLEM_LANDSCAPE}
    truth = cohort.truth.set_index("pid")
    manifest = result.manifest.set_index("sample_id")
    assert {"2_a", "2_b", "3_a", "3_b"} <= set(manifest.index)  # repeated measurements split
    assert manifest.loc["2_a", "patient_id"] == manifest.loc["2_b", "patient_id"] == "2"
    assert (manifest["frames"] == FRAMES).all()  # missing time point filled
    for sample, row in manifest.iterrows():
        pid = sample.split("_")[0]
        assert row["slices"] == truth.loc[pid, "slices"]  # the slice gap was filled
        assert (row["Y"], row["X"]) == (truth.loc[pid, "rows"], truth.loc[pid, "cols"])
        assert row["sliceSpacing"] == pytest.approx(truth.loc[pid, "slice_spacing"], abs=0.01)
        assert row["pixelSpacingX"] == pytest.approx(truth.loc[pid, "pixel_spacing"], rel=1e-4)


def test_cleaned_cines_match_the_phantom(cohort, converted) -> None:
    """Every slice (rotated, resized, repeated ones included) matches the same patient's
    ACDC cine, apart from the copies that fill a gap or a missing time point."""
    out, result = converted
    for sample, path in zip(result.manifest["sample_id"], result.manifest["path"], strict=True):
        pid = sample.split("_")[0]
        cine, spacing = read_volume(path)
        number = int(pid)
        ref, _ = read_volume(next(cohort.acdc_root.glob(
            f"*/patient{number:03d}/patient{number:03d}_4d.nii.gz")))
        cine = cine[:, ::-1]  # DSB slices ascend from apex, ACDC starts at the base
        assert cine.shape == ref.shape
        corr = [np.corrcoef(cine[:, k].ravel(), ref[:, k].ravel())[0, 1]
                for k in range(ref.shape[1])]
        copied = pid == "6"  # one slice is a copy of its neighbour
        assert sorted(corr)[1 if copied else 0] > 0.9, (sample, np.round(corr, 3))


def test_outputs_written(cohort, converted) -> None:
    out, result = converted
    log = pd.read_csv(out / "conversion_log.tsv", sep="\t", dtype=str).fillna("")
    assert list(log.columns) == list(dc.LOG_COLUMNS) and len(log) == len(result.log)
    dims = pd.read_csv(out / "patient_dimensions.tsv", sep="\t", dtype={"pid": str})
    assert list(dims.columns) == list(dc.DIMENSION_COLUMNS)
    assert sorted(dims["pid"]) == sorted(result.manifest["sample_id"])
    assert (dims["scaleFactor"] == 1.0).all()
    manifest = pd.read_csv(out / "manifest.csv", dtype={"sample_id": str, "patient_id": str})
    landscape = manifest.set_index("sample_id").loc["4"]  # every 4th patient is landscape
    cine, _ = read_volume(landscape["path"])
    rotated, _ = read_volume(landscape["rot90_path"])
    assert cine.shape[2] < cine.shape[3] and rotated.shape[2] > rotated.shape[3]
    np.testing.assert_array_equal(rotated, np.rot90(cine, k=-1, axes=(2, 3)))
    truth = cohort.truth.set_index("pid")
    row = manifest.set_index("sample_id").loc["1"]
    assert row["EDV"] == pytest.approx(truth.loc["1", "EDV"], abs=0.01)
    assert row["split"] == "train"
    meta = pd.read_csv(out / "dicom_metadata.csv", dtype={"pid": str}, low_memory=False)
    n_files = len(list(cohort.dsb_root.glob("*/study/*/*.dcm")))
    assert len(meta) == n_files and {"pid", "dir", "PixelSpacing", "TriggerTime"} <= set(meta)


def test_used_dicoms_log_names_the_file_of_every_frame_and_slice(cohort, converted) -> None:
    out, result = converted
    used = pd.read_csv(out / USED_DICOMS_TSV, sep="\t", dtype={"cine": str, "patient_id": str})
    assert list(used.columns) == list(USED_COLUMNS)
    for sample, path in zip(result.manifest["sample_id"], result.manifest["path"], strict=True):
        cine = read_volume(path)[0]
        rows = used[used["cine"] == sample]
        assert len(rows) == cine.shape[0] * cine.shape[1], sample
    clean = used[used["cine"] == "1"]
    files = {str(p) for p in (cohort.dsb_root / "1").glob("study/*/*.dcm")}
    assert set(clean["file"]) == files and clean["file"].is_unique  # each image used once
    cine = read_volume(result.manifest.set_index("sample_id").loc["1", "path"])[0]
    for _, row in clean.sample(5, random_state=0).iterrows():
        ds = pydicom.dcmread(row["file"])
        assert float(ds.TriggerTime) == pytest.approx(row["trigger_time_ms"])
        image = ds.pixel_array.astype(float)
        assert np.corrcoef(image.ravel(), cine[row["frame"], row["slice"]].ravel())[0, 1] \
            > 0.999


def test_volumes_from_train_and_solution(cohort) -> None:
    vols = read_dsb_volumes(cohort.dsb_root).set_index("Id")
    truth = cohort.truth.set_index("pid")
    assert sorted(vols.index) == sorted(truth.index)
    assert set(vols["split"]) == {"train", "test"}
    np.testing.assert_allclose(vols.loc[truth.index, "Diastole"], truth["EDV"], atol=0.01)
    np.testing.assert_allclose(vols.loc[truth.index, "Systole"], truth["ESV"], atol=0.01)
    assert read_dsb_volumes(cohort.dsb_root / "1").empty


def test_missing_pixel_spacing_skips_the_series(cohort, tmp_path: Path) -> None:
    folder = _copy_patient(cohort, tmp_path)
    reference = read_dsb_patient(cohort.dsb_root / "1")[0]
    _edit(folder, "PixelSpacing", sax="sax_8")
    log = ConversionLog()
    cine = read_dsb_patient(folder, log)[0]
    assert log.problems() == [dc.PROBLEM_NO_SPACING, dc.PROBLEM_SPACING_MISSING]
    assert "PixelSpacing" in log.rows[0]["extra_info"] and "sax_8" in log.rows[0]["image"]
    assert cine.array.shape == reference.array.shape  # the gap was filled by a neighbour
    _edit(folder, "PixelSpacing")
    with pytest.raises(InputError, match="PixelSpacing"):
        read_dsb_patient(folder)


def test_missing_slice_location_falls_back_to_position(cohort, tmp_path: Path) -> None:
    reference = read_dsb_patient(cohort.dsb_root / "1")[0]
    folder = _copy_patient(cohort, tmp_path)
    _edit(folder, "SliceLocation", sax="sax_6")  # some images: per-image fallback
    log = ConversionLog()
    cine = read_dsb_patient(folder, log)[0]
    assert log.problems() == [dc.PROBLEM_NO_LOCATION]
    np.testing.assert_array_equal(cine.array, reference.array)
    _edit(folder, "SliceLocation")  # all images: every location projected
    cine = read_dsb_patient(folder, log)[0]
    np.testing.assert_array_equal(cine.array, reference.array)
    np.testing.assert_allclose(cine.slice_locations, reference.slice_locations, atol=1e-3)


def test_missing_position_keeps_slice_location(cohort, tmp_path: Path) -> None:
    reference = read_dsb_patient(cohort.dsb_root / "1")[0]
    folder = _copy_patient(cohort, tmp_path)
    _edit(folder, "ImagePositionPatient")
    log = ConversionLog()
    cine = read_dsb_patient(folder, log)[0]
    assert log.problems() == [dc.PROBLEM_NO_POSITION]
    np.testing.assert_array_equal(cine.array, reference.array)
    assert np.allclose(cine.origin, 0.0) and not np.allclose(reference.origin, 0.0)
    _edit(folder, "SliceLocation", sax="sax_7")  # neither tag: these images are skipped
    log = ConversionLog()
    cine = read_dsb_patient(folder, log)[0]
    assert log.problems().count(dc.PROBLEM_NO_LOCATION) == FRAMES
    assert "ImagePositionPatient" in log.rows[1]["extra_info"]
    assert dc.PROBLEM_SPACING_MISSING in log.problems()
    assert cine.array.shape == reference.array.shape
    _edit(folder, "SliceLocation")
    with pytest.raises(InputError, match="SliceLocation"):
        read_dsb_patient(folder, ConversionLog())


def test_downscale_to_max_size_and_mixed_sizes(cohort) -> None:
    log = ConversionLog()
    cine = read_dsb_patient(cohort.dsb_root / "7", log, max_size=64)[0]  # different size
    truth = cohort.truth.set_index("pid").loc["7"]
    assert max(cine.array.shape[2:]) == 64
    assert cine.scale_factor == pytest.approx(64 / max(truth["rows"], truth["cols"]))
    assert cine.spacing[1] * cine.array.shape[2] == pytest.approx(
        truth["pixel_spacing"] * truth["rows"], rel=1e-6)  # same field of view
    assert log.problems() == [dc.PROBLEM_DOWNSCALE, dc.PROBLEM_SIZE]
    assert cine.dims_row()["scaleFactor"] == cine.scale_factor


def test_unreadable_file_is_logged_and_skipped(cohort, tmp_path: Path) -> None:
    folder = _copy_patient(cohort, tmp_path)
    (folder / "study" / "sax_5" / "IM-0005-0099.dcm").write_bytes(b"garbage")
    log = ConversionLog()
    cine = read_dsb_patient(folder / "study", log)[0]
    assert log.problems() == [dc.PROBLEM_UNREADABLE] and cine.array.shape[0] == FRAMES


def test_patient_without_images_is_skipped_by_convert(cohort, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(cohort.dsb_root / "1", root / "train" / "1")
    (root / "train" / "9" / "study" / "sax_1").mkdir(parents=True)
    result = convert_dsb(root, tmp_path / "out")
    assert list(result.manifest["sample_id"]) == ["1"]
    assert result.log["problem"].tolist() == [dc.PROBLEM_SKIPPED]
    assert len(result.problems) == 1 and "9" in result.problems[0].file
    assert [p.name for p in find_dsb_patients(root)] == ["1", "9"]


def test_solution_in_long_format(tmp_path: Path) -> None:
    (tmp_path / "solution.csv").write_text(
        "Id,Volume,Usage\n701_Diastole,175.3,Private\n701_Systole,67.5,Private\n")
    (tmp_path / "validate.csv").write_text("Id,Systole,Diastole\n501,104.3,212.5\n")
    vols = read_dsb_volumes(tmp_path).set_index("Id")
    assert vols.loc["701", "Diastole"] == 175.3 and vols.loc["701", "split"] == "test"
    assert vols.loc["501", "Systole"] == 104.3 and vols.loc["501", "split"] == "val"
    (tmp_path / "train.csv").write_text("Id,EF\n1,50\n")
    with pytest.raises(InputError, match="columns"):
        read_dsb_volumes(tmp_path)


# --- the cleaning steps on small in-memory stacks -----------------------------------------

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _image(loc: float, t: int, series: int, pixels: np.ndarray, orientation=IDENTITY,
           trigger: float | None = None, between: float | None = None) -> MRImage:
    return MRImage(path=Path(f"sax_{series}/IM-{series:04d}-{t + 1:04d}.dcm"),
                   pixels=pixels.astype(np.float32), pixel_spacing=(1.5, 1.5),
                   slice_location=loc, position=np.array([0.0, 0.0, loc]),
                   orientation=np.array(orientation), trigger_time=40.0 * t
                   if trigger is None else trigger, instance_number=t + 1,
                   series_number=series, cardiac_images=None, slice_thickness=8.0,
                   spacing_between_slices=between, patient_id="x")


def _slice(loc: float, series: int = 5, frames: int = 4, pixels: np.ndarray | None = None,
           **kw) -> SliceSeries:
    pixels = np.full((8, 6), loc) if pixels is None else pixels
    return SliceSeries(f"sax_{series}", series, loc,
                       [_image(loc, t, series, pixels + t, **kw) for t in range(frames)])


def test_slice_spacing_interspersed_outlier_and_gap() -> None:
    log = ConversionLog()
    slices = [_slice(loc, series=i) for i, loc in enumerate((0, 10, 14, 20, 40, 50, 90))]
    cine = dc.clean_stack("p", slices, log)
    assert log.problems() == [dc.PROBLEM_SPACING_INTERSPERSED, dc.PROBLEM_SPACING_OUTLIER,
                              dc.PROBLEM_SPACING_MISSING]
    assert list(cine.slice_locations) == [0, 10, 20, 30, 40, 50] and cine.spacing[0] == 10
    np.testing.assert_array_equal(cine.array[:, 3], cine.array[:, 2])  # copy of slice at 20
    assert "sax_3" in log.rows[2]["image"]


def test_collision_keeps_the_later_series_and_metadata_is_checked() -> None:
    log = ConversionLog()
    slices = [_slice(0.0, 5, between=8.0), _slice(10.0, 6, between=8.0),
              _slice(10.3, 9, between=8.0), _slice(20.0, 7, between=8.0)]
    cine = dc.clean_stack("p", slices, log)
    assert log.problems() == [dc.PROBLEM_COLLISION, dc.PROBLEM_SPACING_METADATA]
    assert "sax_6" in log.rows[0]["image"] and "sax_9" in log.rows[0]["extra_info"]
    assert cine.sources[0, 1].startswith("sax_9")


def test_extra_and_missing_time_points() -> None:
    log = ConversionLog()
    slices = [_slice(0.0, 5), _slice(10.0, 6, frames=5), _slice(20.0, 7), _slice(30.0, 8)]
    del slices[3].images[2]  # the frame at 80 ms
    cine = dc.clean_stack("p", slices, log)
    assert log.problems() == [dc.PROBLEM_EXTRA_TIME, dc.PROBLEM_MISSING_TIME]
    assert cine.array.shape[0] == 4 and list(cine.trigger_times) == [0, 40, 80, 120]
    assert list(cine.array[:, 3, 0, 0]) == [30, 31, 31, 33]  # index 2 copied from index 1
    assert "IM-0006-0005" in log.rows[0]["image"]


def test_rotation_by_any_angle_and_flipped_rows() -> None:
    ramp = np.tile(np.arange(8.0)[:, None], (1, 8)) * 10
    c30, s30 = np.cos(np.pi / 6), np.sin(np.pi / 6)
    slices = [_slice(0.0, 5, pixels=ramp), _slice(10.0, 6, pixels=ramp),
              _slice(20.0, 7, pixels=ramp[::-1], orientation=(1, 0, 0, 0, -1, 0)),
              _slice(30.0, 8, pixels=ramp, orientation=(c30, s30, 0, -s30, c30, 0))]
    log = ConversionLog()
    cine = dc.clean_stack("p", slices, log)
    assert log.problems() == [dc.PROBLEM_ROTATION, dc.PROBLEM_ROTATION]
    assert log.rows[0]["extra_info"] == "0.00 degrees after flipping rows"
    assert log.rows[1]["extra_info"] == "30.00 degrees"
    np.testing.assert_array_equal(cine.array[:, 2], cine.array[:, 0])  # flip undone


def test_oblique_slice_removed_and_repeats_split(cohort, tmp_path: Path) -> None:
    folder = _copy_patient(cohort, tmp_path)
    for path in (folder / "study" / "sax_6").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "1"]
        ds.save_as(path)
    log = ConversionLog()
    cines = read_dsb_patient(folder, log)
    assert log.problems()[0] == dc.PROBLEM_ORIENTATION
    assert len(cines) == 1
    shutil.copytree(folder / "study" / "sax_5", folder / "study" / "sax_50")
    for path in (folder / "study" / "sax_50").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = 50
        ds.save_as(path)
    log = ConversionLog()
    read_dsb_patient(folder, log)  # one location twice: a collision, not a repeated stack
    assert dc.PROBLEM_COLLISION in log.problems() and dc.PROBLEM_REPEAT not in log.problems()


def test_mr_image_reader_rejects_multiframe_and_headers(cohort, tmp_path: Path) -> None:
    source = cohort.dsb_root / "1" / "study" / "sax_5" / "IM-0005-0001.dcm"
    image = read_mr_image(source)
    assert image.pixels.dtype == np.float32 and image.series_number == 5
    assert image.cardiac_images == FRAMES and image.trigger_time == 0.0
    ds = pydicom.dcmread(source)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "multi.dcm")
    with pytest.raises(InputError, match="NumberOfFrames"):
        read_mr_image(tmp_path / "multi.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "header.dcm")
    with pytest.raises(InputError, match="PixelData"):
        read_mr_image(tmp_path / "header.dcm")
