"""LV volumes, EF and mass from label stacks: synthetic truth, ED/ES by volume, mask sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.io.nifti import write_volume
from cinelab.measure.volumes import (
    ACDC_LABELS,
    LabelMap,
    cine_measures,
    ed_es_frames,
    frame_volumes,
    parse_label_map,
    pixel_counts,
    voxel_ml,
)
from cinelab.pipelines.cmr.acdc import find_acdc_patients, load_acdc_patient
from cinelab.pipelines.cmr.mask_sets import mask_index
from cinelab.pipelines.cmr.measure import ef_difference_table, measure_mask_set, paired_measures
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.synth.cmr_phantom import Grid, random_heart, render_stack, voxel_volumes_ml
from conftest import real_path

TOLERANCE = 0.03  # the "within 3 %"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return synth_cmr_cohort(tmp_path_factory.mktemp("cmr"), n=3, seed=5, layout="acdc",
                            defects=False, n_frames=8, size=(64, 56))


@pytest.fixture(scope="module")
def stack():
    heart = random_heart(np.random.default_rng(11), "NOR")
    return render_stack(heart, Grid(48, 40, (2.5, 2.5)), 8, 10.0, 10, 1000.0, -4.0)


def test_acdc_masks_match_truth_within_3_percent(cohort) -> None:
    truth = cohort.truth.set_index("acdc_id")
    table, per_frame, problems = measure_mask_set(cohort.acdc_root)
    assert not problems and len(table) == 3 and set(table["units"]) == {"mL"}
    for _, row in table.iterrows():
        t = truth.loc[row["patient_id"]]
        for col in ("EDV", "ESV", "LVM", "RV_EDV", "RV_ESV"):
            assert row[col] == pytest.approx(t[col], rel=TOLERANCE), col
        assert row["EF"] == pytest.approx(t["EF"], rel=TOLERANCE)
        assert row["ed_frame"] == t["ed_frame"] + 1 and row["es_frame"] == t["es_frame"] + 1
    assert len(per_frame) == 6 and {"LV_px", "LV_ml", "MYO_ml", "RV_ml"} <= set(per_frame)


def test_ed_es_stacks_read_with_formats_acdc(cohort) -> None:
    truth = cohort.truth.set_index("acdc_id")
    for folder in find_acdc_patients(cohort.acdc_root):
        p = load_acdc_patient(folder)
        # ES first: ED and ES are found by volume, not by position
        m = cine_measures([p["es_mask"], p["ed_mask"]], p["spacing"], frame_ids=["es", "ed"])
        assert (m["ed_frame"], m["es_frame"]) == ("ed", "es")
        assert m["EDV"] == pytest.approx(truth.loc[folder.name, "EDV"], rel=TOLERANCE)
        assert m["EF"] == pytest.approx(truth.loc[folder.name, "EF"], rel=TOLERANCE)
        assert m["LVM"] == pytest.approx(1.05 * m["myo_ml"])


@pytest.mark.parametrize("shift", [0, 3, 7])
def test_ed_es_found_by_volume_in_a_rolled_cine(stack, shift: int) -> None:
    labels = np.roll(stack.labels, shift, axis=0)
    spacing = (stack.slice_spacing, *stack.grid.spacing)
    truth = voxel_volumes_ml(labels, stack.voxel_mm3)
    m = cine_measures(labels, spacing)
    assert m["ed_frame"] == int(np.argmax(truth["LV"]))
    assert m["es_frame"] == int(np.argmin(truth["LV"]))
    base = cine_measures(stack.labels, spacing)
    assert m["ed_frame"] == (base["ed_frame"] + shift) % len(labels)
    for key in ("EDV", "ESV", "EF", "LVM", "RV_EDV"):
        assert m[key] == pytest.approx(base[key])
    assert m["EDV"] == pytest.approx(truth["LV"].max()) and m["SV"] == m["EDV"] - m["ESV"]
    vols = frame_volumes(labels, spacing)
    np.testing.assert_allclose(vols["MYO_ml"], truth["MYO"])


def test_4d_nifti_mask_and_voxel_units(stack, tmp_path: Path) -> None:
    labels = np.roll(stack.labels, 4, axis=0)
    write_volume(tmp_path / "p1" / "p1_cine_gt.nii.gz", labels.astype(np.uint8),
                 (0.05, stack.slice_spacing, *stack.grid.spacing))
    np.save(tmp_path / "p1" / "p2_seg.npy", labels)
    table, per_frame, problems = measure_mask_set(tmp_path)
    assert not problems and list(table["patient_id"]) == ["p1_cine", "p2"]
    ml, voxels = table.iloc[0], table.iloc[1]
    assert ml["units"] == "mL" and voxels["units"] == "voxels" and np.isnan(voxels["LVM"])
    assert ml["n_frames"] == 10 and ml["ed_image"].endswith(f"_t{ml['ed_frame']:02d}")
    assert voxels["EDV"] * voxel_ml((stack.slice_spacing, *stack.grid.spacing)) == \
        pytest.approx(ml["EDV"])
    assert voxels["EF"] == pytest.approx(ml["EF"])


def test_model_label_map(cohort) -> None:
    folder = find_acdc_patients(cohort.acdc_root)[0]
    p = load_acdc_patient(folder)
    remap = np.array([0, 3, 2, 1], np.uint8)  # ACDC -> model classes LV 1, myo 2, RV 3
    model = LabelMap(lv=1, myo=2, rv=3)
    assert parse_label_map("lv=1,myo=2,rv=3") == model
    assert parse_label_map(model.to_text()) == model
    assert parse_label_map("acdc") == ACDC_LABELS and parse_label_map(None) == ACDC_LABELS
    assert parse_label_map("lv=1,myo=2").rv is None
    a = cine_measures([p["ed_mask"], p["es_mask"]], p["spacing"])
    b = cine_measures([remap[p["ed_mask"]], remap[p["es_mask"]]], p["spacing"], model)
    assert a == b
    no_rv = cine_measures([p["ed_mask"], p["es_mask"]], p["spacing"], LabelMap(3, 2, None))
    assert np.isnan(no_rv["RV_EDV"]) and no_rv["EF"] == a["EF"]
    counts = pixel_counts(p["ed_mask"])
    assert list(counts.columns) == ["frame", "slice", "LV_px", "MYO_px", "RV_px"]
    assert counts["LV_px"].sum() == int((p["ed_mask"] == 3).sum())


def test_index_csv_with_relative_paths_and_spacing(cohort, tmp_path: Path) -> None:
    folder = find_acdc_patients(cohort.acdc_root)[0]
    p = load_acdc_patient(folder)
    np.save(tmp_path / "a.npy", p["ed_mask"])
    np.save(tmp_path / "b.npy", p["es_mask"])
    z, y, x = p["spacing"]
    pd.DataFrame({"patient_id": ["P", "P"], "phase": ["ES", "ED"], "mask_path": ["b.npy", "a.npy"],
                  "spacing_z": [z, z], "spacing_y": [y, y], "spacing_x": [x, x]}
                 ).to_csv(tmp_path / "index.csv", index=False)
    index = mask_index(tmp_path)
    assert list(index["image_id"]) == ["P_ES", "P_ED"]
    table, _, _ = measure_mask_set(tmp_path)
    truth = cohort.truth.set_index("acdc_id").loc[folder.name]
    assert table["units"].iloc[0] == "mL"
    assert table["EDV"].iloc[0] == pytest.approx(truth["EDV"], rel=TOLERANCE)
    assert table["ed_image"].iloc[0] == "P_ED"


@pytest.mark.slow
def test_real_acdc_h5_voxel_ef() -> None:
    root = real_path("acdc-h5", "data")
    table, _, problems = measure_mask_set(root)
    assert not problems and len(table) == 10 and set(table["units"]) == {"voxels"}
    assert (table["ed_image"].str.endswith("frame01")).all()  # ED = frame01 in every sample
    assert table["EF"].between(5, 85).all()
    with_spacing, _, _ = measure_mask_set(root, spacing=(10.0, 1.5, 1.5))
    np.testing.assert_allclose(with_spacing["EF"], table["EF"])
    np.testing.assert_allclose(with_spacing["EDV"], table["EDV"] * 22.5e-3)


def test_ef_difference_table() -> None:
    truth = pd.DataFrame({"pid": ["1", "2", "3", "4"], "EF": [50.0, 60.0, 40.0, 30.0]})
    pred = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 3,
                         "patient_id": ["1", "2", "3", "4", "1", "2", "9"],
                         "EF": [51.0, 58.0, 43.0, 26.0, 50.0, 61.0, 10.0]})
    table = ef_difference_table(pred, truth, truth_on="pid").set_index("model")
    a, b = table.loc["a"], table.loc["b"]
    assert a["n"] == 4 and a["mean"] == pytest.approx(2.5)
    assert a["sd"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert a["median"] == pytest.approx(2.5) and a["iqr"] == pytest.approx(1.5)
    assert b["n"] == 2 and b["mean"] == pytest.approx(0.5)  # patient 9 has no truth
    single = ef_difference_table(pred[pred["model"] == "a"].drop(columns="model"), truth,
                                 truth_on="pid")
    assert single["model"].tolist() == ["all"] and single["mean"].iloc[0] == 2.5
    paired = paired_measures(pred, truth, truth_on="pid", values=("EF",))
    assert {"EF_pred", "EF_true", "EF_diff", "EF_absdiff", "model"} <= set(paired.columns)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="spacing"):
        voxel_ml((1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="labels"):
        parse_label_map("lv=one")
    with pytest.raises(InputError, match="lv_volumes"):
        ed_es_frames([])
    with pytest.raises(InputError, match="masks"):
        measure_mask_set(tmp_path)
    with pytest.raises(InputError, match="columns"):
        pd.DataFrame({"x": [1]}).to_csv(tmp_path / "index.csv", index=False)
        mask_index(tmp_path)
    with pytest.raises(InputError, match="EF"):
        ef_difference_table(pd.DataFrame({"patient_id": ["1"]}),
                            pd.DataFrame({"patient_id": ["1"], "EF": [1.0]}))


def test_prediction_index_npz_spacing_and_cine_units(stack, tmp_path: Path) -> None:
    """predict_cmr-like predictions.csv: npz and NIfTI labels, empty spacing = voxels,
    two 4D cines of one DSB patient (<pid>_a, <pid>_b) measured separately."""
    spacing = (stack.slice_spacing, *stack.grid.spacing)
    masks = tmp_path / "masks"
    masks.mkdir()
    np.savez_compressed(masks / "3_a.npz", labels=stack.labels, spacing=(0.05, *spacing))
    write_volume(masks / "3_b.nii.gz", np.roll(stack.labels, 2, axis=0), (1.0,) * 4)
    pd.DataFrame({"sample_id": ["3_a", "3_b"], "patient_id": ["3", "3"], "phase": ["", ""],
                  "mask_path": ["masks/3_a.npz", "masks/3_b.nii.gz"],
                  "slice_spacing": [spacing[0], ""], "pixel_spacing_y": [spacing[1], ""],
                  "pixel_spacing_x": [spacing[2], ""], "source": ["", ""]}
                 ).to_csv(tmp_path / "predictions.csv", index=False)
    table, _, problems = measure_mask_set(tmp_path)
    assert not problems
    a, b = table.set_index("patient_id").loc["3_a"], table.set_index("patient_id").loc["3_b"]
    assert a["patient"] == b["patient"] == "3"
    assert a["units"] == "mL" and b["units"] == "voxels"  # unit NIfTI spacing is not trusted
    assert a["EDV"] == pytest.approx(voxel_volumes_ml(stack.labels, stack.voxel_mm3)["LV"].max())
    assert b["EF"] == pytest.approx(a["EF"]) and b["ed_frame"] == (a["ed_frame"] + 2) % 10
