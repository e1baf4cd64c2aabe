"""Pseudo-label confidence (larger |% deviation| of EDV/ESV) and threshold filtering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.pipelines.cmr.pseudo import (
    SCORE_COLUMN,
    confidence_scores,
    confident_patients,
    filter_manifest,
    percent_deviation,
    pseudo_labels,
    reference_id,
    reference_volumes,
    threshold_summary,
    write_pseudo_labels,
)
from cinelab.pipelines.cmr.synth import synth_cmr_cohort


@pytest.fixture
def reference() -> pd.DataFrame:
    return pd.DataFrame({"Id": ["1", "2", "3", "4", "5"],
                         "Diastole": [100.0, 200.0, 150.0, 120.0, 80.0],
                         "Systole": [40.0, 100.0, 60.0, 50.0, 0.0]})


@pytest.fixture
def predicted() -> pd.DataFrame:
    # deviations (EDV, ESV) in %: 1: (4, 2.5) -> 4; 2: (1, 9) -> 9; 3_a: (10, 12) -> 12;
    # 3_b: (2, 3) -> 3; 4: (20, 0) -> 20; 6: no reference; 5: ESV reference 0 -> NaN
    return pd.DataFrame({"patient_id": ["1", "2", "3_a", "3_b", "4", "6", "5"],
                         "EDV": [104.0, 198.0, 165.0, 153.0, 96.0, 90.0, 80.0],
                         "ESV": [39.0, 109.0, 52.8, 61.8, 50.0, 30.0, 5.0]})


def test_confidence_is_the_larger_deviation(predicted, reference) -> None:
    scores = confidence_scores(predicted, reference_volumes(reference)).set_index("patient_id")
    expected = {"1": 4.0, "2": 9.0, "3_a": 12.0, "3_b": 3.0, "4": 20.0}
    for pid, value in expected.items():
        assert scores.loc[pid, SCORE_COLUMN] == pytest.approx(value), pid
    assert scores.loc["3_a", "reference_id"] == "3" and scores.loc["3_a", "EDV_ref"] == 150.0
    assert np.isnan(scores.loc["6", SCORE_COLUMN]) and np.isnan(scores.loc["5", SCORE_COLUMN])
    assert scores.loc["2", "ESV_dev_pct"] == pytest.approx(9.0)
    # sorted most confident first, unscored last
    ordered = confidence_scores(predicted, reference_volumes(reference))
    assert list(ordered["patient_id"][:5]) == ["3_b", "1", "2", "3_a", "4"]


def test_thresholds_keep_the_confident_patients(predicted, reference) -> None:
    scores = confidence_scores(predicted, reference_volumes(reference))
    assert confident_patients(scores, 5) == ["3_b", "1"]
    assert confident_patients(scores, 10) == ["3_b", "1", "2"]
    assert confident_patients(scores, 15) == ["3_b", "1", "2", "3_a"]
    assert confident_patients(scores, 12) == ["3_b", "1", "2", "3_a"]  # at the threshold: kept
    summary = threshold_summary(scores).set_index("threshold_pct")
    assert summary.loc[5.0, "patients"] == 2 and summary.loc[15.0, "scored"] == 5
    assert summary.loc[10.0, "kept_pct"] == pytest.approx(60.0)
    with pytest.raises(InputError, match="threshold"):
        confident_patients(scores, -1)


def test_filter_manifest_images(predicted, reference, tmp_path: Path) -> None:
    scores = confidence_scores(predicted, reference_volumes(reference))
    manifest = pd.DataFrame({
        "sample_id": [f"{p}-frame{f}-slice{s}" for p in ("1", "2", "3_a", "4")
                      for f in (1, 2) for s in (1, 2)],
        "patient_id": [p for p in ("1", "2", "3_a", "4") for _ in range(4)]})
    subset = filter_manifest(manifest, scores, 10)
    assert subset["patient_id"].unique().tolist() == ["1", "2"] and len(subset) == 8
    written = write_pseudo_labels(scores, tmp_path, (5, 10), manifest)
    assert (tmp_path / "confident_5pct.txt").read_text().split() == ["3_b", "1"]
    kept = pd.read_csv(written["confident_10pct_manifest"], dtype=str)
    assert kept["sample_id"].tolist() == subset["sample_id"].tolist()
    assert pd.read_csv(tmp_path / "confidence.csv").shape[0] == len(predicted)
    assert pd.read_csv(tmp_path / "thresholds.csv")["patients"].tolist() == [2, 3]


def test_reference_sources(tmp_path: Path) -> None:
    assert reference_id("12_b", {"12"}) == "12" and reference_id("12_rot90", {"1"}) == "12"
    assert reference_id("7_a", {"7_a"}) == "7_a"
    np.testing.assert_allclose(percent_deviation([110, 90, 5], [100, 100, 0]), [10, 10, np.nan])
    long = pd.DataFrame({"Id": ["8_Diastole", "8_Systole"], "Volume": [120.0, 48.0]})
    long.to_csv(tmp_path / "solution.csv", index=False)
    ref = reference_volumes(tmp_path)
    assert ref.iloc[0].tolist() == ["8", 120.0, 48.0]
    pd.DataFrame({"pid": ["8"], "EDV": [1.0], "ESV": [2.0]}).to_csv(tmp_path / "t.csv",
                                                                     index=False)
    assert reference_volumes(tmp_path / "t.csv")["reference_id"].tolist() == ["8"]
    with pytest.raises(InputError, match="columns"):
        reference_volumes(pd.DataFrame({"Id": ["1"], "x": [1]}))
    with pytest.raises(InputError, match="reference"):
        reference_volumes(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="volumes"):
        reference_volumes(tmp_path / "empty")


def test_pseudo_labels_from_masks_against_dsb_volumes(tmp_path: Path) -> None:
    cohort = synth_cmr_cohort(tmp_path / "c", n=3, seed=2, layout="both", defects=False,
                              n_frames=4, size=(40, 36))
    truth = cohort.truth.assign(patient_id=cohort.truth["acdc_id"])
    reference = pd.DataFrame({"patient_id": truth["acdc_id"], "EDV": truth["EDV"],
                              "ESV": truth["ESV"] * [1.0, 1.07, 1.2]})
    scores = pseudo_labels(cohort.acdc_root, reference, tmp_path / "out", (5, 10))
    assert scores["patient_id"].tolist() == ["patient001", "patient002", "patient003"]
    np.testing.assert_allclose(scores[SCORE_COLUMN], [0.0, 100 * 0.07 / 1.07,
                                                      100 * 0.2 / 1.2], atol=1e-4)
    assert (tmp_path / "out" / "confident_10pct.txt").read_text().split() == \
        ["patient001", "patient002"]
    pseudo = pd.read_csv(tmp_path / "out" / "confident_10pct_pseudo.csv", dtype=str)
    assert pseudo["patient_id"].tolist() == ["patient001"] * 2 + ["patient002"] * 2
    assert pseudo["mask_path"].str.endswith("_gt.nii.gz").all()
    assert pseudo["path"].str.endswith(".nii.gz").all() and set(pseudo["phase"]) == {"ED", "ES"}
    assert not (tmp_path / "out" / "confident_5pct_manifest.csv").exists()
    # DSB reference CSVs (train.csv wide + solution.csv long) keyed by pid
    pred = pd.DataFrame({"patient_id": truth["pid"], "EDV": truth["EDV"], "ESV": truth["ESV"]})
    dsb_scores = confidence_scores(pred, reference_volumes(cohort.dsb_root))
    assert dsb_scores[SCORE_COLUMN].max() < 0.1  # volumes rounded to 0.01 mL in the CSVs
