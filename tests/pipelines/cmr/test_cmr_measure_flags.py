"""RV phases from the RV's own volume curve; impossible volumes/EF flagged, not reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.io.nifti import write_volume
from cinelab.pipelines.cmr.measure import checked_measures, measure_mask_set, rv_phases

SPACING = (10.0, 1.0, 1.0)


def _frame(lv: int, rv: int) -> np.ndarray:
    """One slice 10 x 10: `lv` LV voxels (label 3) and `rv` RV voxels (label 1)."""
    labels = np.zeros((1, 10, 10), np.uint8)
    labels.reshape(-1)[:lv] = 3
    labels.reshape(-1)[50:50 + rv] = 1
    return labels


def test_rv_end_diastole_and_systole_come_from_the_rv_curve(tmp_path: Path) -> None:
    # LV: largest at frame 1, smallest at frame 3; RV: largest at frame 2, smallest at 4
    curve = {1: (40, 20), 2: (30, 30), 3: (10, 25), 4: (20, 5)}
    for frame, (lv, rv) in curve.items():
        write_volume(tmp_path / f"p1_frame{frame:02d}_gt.nii.gz", _frame(lv, rv), SPACING)
    table, _, problems = measure_mask_set(tmp_path)
    row = table.iloc[0]
    assert not problems and (row["ed_frame"], row["es_frame"]) == (1, 3)
    assert (row["rv_ed_frame"], row["rv_es_frame"]) == (2, 4)
    assert row["RV_EDV"] == pytest.approx(0.30) and row["RV_ESV"] == pytest.approx(0.05)
    assert row["RV_EF"] == pytest.approx(100 * 25 / 30)  # LV phases would give 100*(20-25)/20
    assert row["EF"] == pytest.approx(75.0) and row["flags"] == ""


def test_impossible_values_are_flagged_and_left_empty(tmp_path: Path) -> None:
    write_volume(tmp_path / "p2_ED_gt.nii.gz", _frame(30, 0), SPACING)
    write_volume(tmp_path / "p2_ES_gt.nii.gz", _frame(0, 0), SPACING)  # LV gone at ES
    table, _, problems = measure_mask_set(tmp_path)
    row = table.iloc[0]
    assert row["flags"] == "EF>=100;RV_EDV<=0"
    assert pd.isna(row["EF"]) and pd.isna(row["SV"]) and pd.isna(row["RV_EDV"])
    assert row["EDV"] == pytest.approx(0.3) and row["ESV"] == 0.0  # measured volumes stay
    assert len(problems) == 1 and problems[0].column == "flags"
    assert problems[0].found == "EF>=100;RV_EDV<=0" and "p2" in problems[0].error


def test_checked_measures_negative_values() -> None:
    out = checked_measures({"EDV": 50.0, "ESV": -5.0, "EF": 110.0, "SV": 55.0,
                            "RV_EDV": 40.0, "RV_ESV": 45.0, "RV_EF": -12.5,
                            "myo_ml": -1.0, "LVM": -1.05})
    assert out["flags"] == "ESV<0;EF>=100;RV_EF<0;myo_ml<0;LVM<0"
    assert all(np.isnan(out[k]) for k in ("ESV", "EF", "SV", "RV_EF", "myo_ml", "LVM"))
    assert out["EDV"] == 50.0 and out["RV_EDV"] == 40.0
    assert rv_phases(pd.DataFrame({"LV_ml": [1.0], "frame": [0]})) == {
        "rv_ed_frame": None, "rv_es_frame": None}
