"""Mask set comparison: exact confusion counts, Dice per class, pairing, summary, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.io.nifti import write_volume
from cinelab.measure.volumes import LabelMap
from cinelab.pipelines.cmr.evaluate import (
    CONFUSION_CSV,
    DICE_CSV,
    EF_TABLE_CSV,
    METRICS_JSON,
    PAIRS_CSV,
    REGIONS_CSV,
    SUMMARY_CSV,
    class_pair_counts,
    compare_mask_sets,
    confusion_counts,
    dice_summary,
    evaluate_cmr,
    pair_images,
    slice_regions,
)
from cinelab.pipelines.cmr.mask_sets import mask_index

SPACING = (10.0, 1.5, 1.5)
MODEL_LABELS = LabelMap(lv=1, myo=2, rv=3)
TO_MODEL = np.array([0, 3, 2, 1], np.uint8)  # ACDC value -> model class


def _observers() -> tuple[np.ndarray, np.ndarray]:
    """Two 2-slice 4x4 masks (ACDC labels): slice 0 differs, slice 1 agrees on one LV pixel."""
    a = np.zeros((2, 4, 4), np.uint8)
    b = np.zeros_like(a)
    a[0] = [[0, 0, 0, 0], [0, 3, 3, 0], [0, 2, 2, 0], [1, 1, 0, 0]]
    b[0] = [[0, 0, 0, 0], [0, 3, 0, 0], [0, 2, 2, 2], [1, 0, 0, 0]]
    a[1, 0, 0] = b[1, 0, 0] = 3
    return a, b


def test_confusion_counts_exact_on_hand_made_masks() -> None:
    truth, other = _observers()
    table = confusion_counts(other, truth).set_index(["slice", "class"])
    expected = {(0, "LV"): (1, 0, 1, 14), (0, "MYO"): (2, 1, 0, 13), (0, "RV"): (1, 0, 1, 14),
                (1, "LV"): (1, 0, 0, 15), (1, "MYO"): (0, 0, 0, 16), (1, "RV"): (0, 0, 0, 16)}
    for key, counts in expected.items():
        assert tuple(table.loc[key, ["TP", "FP", "FN", "TN"]]) == counts, key
    assert table.loc[(0, "LV"), "dice"] == pytest.approx(2 / 3)
    assert table.loc[(0, "MYO"), "dice"] == pytest.approx(4 / 5)
    assert table.loc[(1, "LV"), "dice"] == 1.0
    assert np.isnan(table.loc[(1, "MYO"), "dice"])  # absent from both: not scored
    # the same comparison with the observer in model classes (LV 1, myo 2, RV 3)
    remapped = confusion_counts(TO_MODEL[other], truth, MODEL_LABELS).set_index(
        ["slice", "class"])
    pd.testing.assert_frame_equal(remapped, table)
    # swapping the observers swaps FP and FN
    swapped = confusion_counts(truth, other).set_index(["slice", "class"])
    assert (swapped["FP"] == table["FN"]).all() and (swapped["FN"] == table["FP"]).all()
    # a 2D mask is one slice; no RV class in one map -> no RV row
    flat = confusion_counts(other[0], truth[0], LabelMap(3, 2, None))
    assert flat["class"].tolist() == ["LV", "MYO"]
    with pytest.raises(InputError, match="shape"):
        confusion_counts(other[:1], truth)


def _write_set(root: Path, masks: dict[str, np.ndarray], suffix: str = "") -> Path:
    for name, mask in masks.items():
        write_volume(root / f"{name}{suffix}.nii.gz", mask, SPACING)
    return root


def test_compare_mask_sets_from_files(tmp_path: Path) -> None:
    truth, other = _observers()
    ed_truth = truth.copy()
    ed_truth[1, 1:3, 1:3] = 3  # a larger ED cavity
    a = _write_set(tmp_path / "a", {"p1_frame01": ed_truth, "p1_frame05": truth}, "_gt")
    b = _write_set(tmp_path / "b", {"p1_frame01": ed_truth, "p1_frame05": other})
    per_image, per_volume, problems = compare_mask_sets(b, a, model="observer2")
    assert not problems and len(per_image) == 2 * 2 * 3
    vol = per_volume.set_index(["frame", "class"])
    assert tuple(vol.loc[(5, "LV"), ["TP", "FP", "FN", "TN"]]) == (2, 0, 1, 29)
    assert vol.loc[(5, "LV"), "dice"] == pytest.approx(4 / 5)
    assert (vol.loc[1, "dice"] == 1.0).all()
    assert set(per_volume["model"]) == {"observer2"}
    summary = dice_summary(per_volume).set_index(["class", "phase"])
    assert summary.loc[("LV", "all"), "n"] == 2
    assert summary.loc[("LV", "all"), "mean"] == pytest.approx((1 + 0.8) / 2)


def test_pairing_keys(tmp_path: Path) -> None:
    by_phase = pd.DataFrame({"image_id": ["x", "y"], "patient_id": ["p", "p"],
                             "phase": ["ED", "ES"], "frame": [1, 9], "mask_path": ["1", "2"],
                             "image_path": ["", ""]})
    by_frame = by_phase.assign(phase="", image_id=["u", "v"], mask_path=["3", "4"])
    pairs = pair_images(by_frame, by_phase)
    assert pairs[["mask_path_pred", "mask_path_truth"]].values.tolist() == [["3", "1"],
                                                                             ["4", "2"]]
    both = pair_images(by_phase.assign(frame=[2, 3]), by_phase)  # frames differ, phases agree
    assert len(both) == 2
    with pytest.raises(InputError, match="pairs"):
        compare_mask_sets(by_frame.assign(patient_id="q", image_id=["a", "b"]), by_phase)


@pytest.mark.slow
def test_evaluate_cmr_outputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth, other, model = {}, {}, {}
    for p in range(3):
        ed = np.zeros((3, 12, 12), np.uint8)
        ed[:, 2:10, 2:10] = 2
        ed[:, 4:8, 4:8] = 3
        ed[:, 0:2, 2:10] = 1
        es = ed.copy()
        es[:, 4:8, 4:8] = 2
        es[:, 5:7, 5:7 + p % 2] = 3
        truth[f"p{p}_ED"], truth[f"p{p}_ES"] = ed, es
        noisy = es.copy()
        noisy[rng.integers(0, 3), 6, 6 + p % 2] = 2  # one LV pixel missed at ES
        other[f"p{p}_ED"], other[f"p{p}_ES"] = ed, noisy
        model[f"p{p}_ED"], model[f"p{p}_ES"] = TO_MODEL[ed], TO_MODEL[es]
    t = _write_set(tmp_path / "truth", truth, "_gt")
    result = evaluate_cmr({"obs": _write_set(tmp_path / "obs", other),
                           "net": _write_set(tmp_path / "net", model, "_pred")}, t,
                          tmp_path / "out", {"net": MODEL_LABELS})
    assert not result.problems
    for name in (CONFUSION_CSV, DICE_CSV, SUMMARY_CSV, EF_TABLE_CSV, METRICS_JSON):
        assert (tmp_path / "out" / name).is_file(), name
    assert {p.name for p in (tmp_path / "out" / "plots").glob("*.png")} == {
        "dice_box.png", "ef_scatter_obs.png", "ef_bland_altman_obs.png", "ef_scatter_net.png",
        "ef_bland_altman_net.png"}
    summary = result.summary.set_index(["model", "class", "phase"])
    assert summary.loc[("net", "LV", "all"), "mean"] == 1.0
    assert summary.loc[("obs", "LV", "ED"), "mean"] == 1.0
    assert summary.loc[("obs", "LV", "ES"), "mean"] < 1.0
    ef = result.ef_table.set_index("model")
    assert ef.loc["net", "mean"] == 0.0 and ef.loc["obs", "mean"] > 0.0
    assert result.volumes["EDV_true"].iloc[0] == pytest.approx(48 * 2.25e-2)
    metrics = json.loads((tmp_path / "out" / METRICS_JSON).read_text())
    assert metrics["net"]["dice"]["MYO"]["all"] == 1.0 and metrics["obs"]["n_images"] == 6
    assert len(mask_index(tmp_path / "obs")) == 6
    pairs = pd.read_csv(tmp_path / "out" / PAIRS_CSV)
    assert len(pairs) == 12 and (pairs.loc[pairs["model"] == "net", "lv_my"] == 0).all()
    assert metrics["obs"]["class_pairs"]["lv_my"] == 3  # one missed LV pixel per patient
    assert metrics["net"]["class_pairs"]["my_my"] == 3 * 3 * 48 + 3 * (60 + 58 + 60)  # ED + ES


def test_mismatched_sizes_are_problems_or_resized(tmp_path: Path) -> None:
    truth, _ = _observers()
    big = np.repeat(np.repeat(truth, 2, axis=1), 2, axis=2)
    t = _write_set(tmp_path / "t", {"p_ED": truth})
    b = _write_set(tmp_path / "b", {"p_ED": big, "q_ED": truth})
    with pytest.raises(InputError, match="pairs"):
        compare_mask_sets(b, t)
    _, per_volume, problems = compare_mask_sets(b, t, resize=True)
    assert not problems and (per_volume["dice"].dropna() == 1.0).all()


def test_class_pair_table_k_by_k_on_hand_made_masks() -> None:
    truth, other = _observers()
    pairs = class_pair_counts(other, truth)  # rows: truth, columns: other
    # slice 0: truth LV (1,1),(1,2): other LV, bg; MYO (2,1),(2,2): both MYO;
    # RV (3,0),(3,1): other RV, bg; bg (2,3) -> other MYO; slice 1 LV pixel agrees
    assert pairs == {"bg_bg": 2 * 16 - 7 - 1, "bg_lv": 0, "bg_my": 1, "bg_rv": 0,
                     "lv_bg": 1, "lv_lv": 2, "lv_my": 0, "lv_rv": 0,
                     "my_bg": 0, "my_lv": 0, "my_my": 2, "my_rv": 0,
                     "rv_bg": 1, "rv_lv": 0, "rv_my": 0, "rv_rv": 1}
    assert sum(pairs.values()) == truth.size
    no_rv = class_pair_counts(TO_MODEL[other], truth, MODEL_LABELS, LabelMap(3, 2, None))
    assert set(no_rv) == {f"{a}_{b}" for a in ("bg", "lv", "my") for b in ("bg", "lv", "my")}
    assert no_rv["bg_bg"] == pairs["bg_bg"] + pairs["rv_rv"] + pairs["rv_bg"]


def test_surface_distances_and_base_mid_apex(tmp_path: Path) -> None:
    from cinelab.evaluate.metrics import surface_distances

    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    shifted = np.roll(square, 2, axis=0)  # 2 rows down
    found = surface_distances(shifted, square, (1.5, 1.5))
    assert found["hd"] == pytest.approx(3.0)  # 2 px x 1.5 mm
    assert np.isnan(surface_distances(square, np.zeros_like(square))["hd"])
    truth = np.zeros((8, 12, 12), np.uint8)
    truth[1:7, 3:9, 3:9] = 3  # the heart on slices 1-6
    assert slice_regions(truth).tolist() == ["", "base", "base", "mid", "mid", "apex",
                                             "apex", ""]
    pred = truth.copy()
    pred[5:7] = 0  # apex missed
    write_volume(tmp_path / "t" / "p1_ED_gt.nii.gz", truth, SPACING)
    write_volume(tmp_path / "p" / "p1_ED_pred.nii.gz", pred, SPACING)
    result = evaluate_cmr({"net": tmp_path / "p"}, tmp_path / "t", tmp_path / "out")
    regions = pd.read_csv(tmp_path / "out" / REGIONS_CSV).set_index(["class", "region"])
    assert regions.loc[("LV", "base"), "dice"] == 1.0 and regions.loc[("LV", "apex"),
                                                                      "dice"] == 0.0
    lv = result.dice.set_index("class").loc["LV"]
    assert lv["hd95"] == pytest.approx(2 * SPACING[0]) and lv["distance_unit"] == "mm"
    metrics = json.loads((tmp_path / "out" / METRICS_JSON).read_text())["net"]
    assert metrics["dice_regions"]["LV_mid"] == 1.0
    assert metrics["distances"]["LV"]["hd95"] == pytest.approx(20.0)
