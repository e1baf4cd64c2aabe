"""Analytic phantom: ellipsoids of known volume voxelised on an ACDC-like grid, measured by
`measure_mask_set` from NIfTI files. The truth is 4/3 pi a b c (not the voxels themselves),
so the test states the discretisation error it accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cinelab.io.nifti import write_volume
from cinelab.pipelines.cmr.measure import measure_mask_set

SPACING = (5.0, 1.25, 1.25)  # slice, row, column mm (ACDC: 5-10 mm slices, 1.2-1.7 mm px)
SHAPE = (24, 96, 96)
CENTRE = np.array([60.0, 60.0, 60.0])  # mm: off the voxel centres on purpose
MAX_RELATIVE_ERROR = 0.01  # stated voxel error: 1 % of the analytic volume at this grid
MAX_EF_ERROR = 1.0  # EF points


def _inside(semi: tuple[float, float, float], shape=SHAPE, spacing=SPACING,
            shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxels whose centre lies in the ellipsoid with semi-axes (z, y, x) mm, centred at
    CENTRE + shift."""
    axes = [(np.arange(n) + 0.5) * s - c - d
            for n, s, c, d in zip(shape, spacing, CENTRE, shift, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return (z / semi[0]) ** 2 + (y / semi[1]) ** 2 + (x / semi[2]) ** 2 <= 1.0


def _volume_ml(semi) -> float:
    return 4.0 / 3.0 * np.pi * np.prod(semi) / 1000.0


def _phantom(lv: tuple[float, float, float], wall: float, shape=SHAPE,
             spacing=SPACING, rv: tuple[float, float, float] | None = None) -> np.ndarray:
    """LV cavity (3) inside a myocardial shell (2) `wall` mm thick; an RV ellipsoid (1)
    beside it (x: 4-28 mm at most, the shell starts at 30 mm)."""
    labels = np.zeros(shape, np.uint8)
    if rv is not None:
        labels[_inside(rv, shape, spacing, RV_SHIFT)] = 1
    labels[_inside(tuple(a + wall for a in lv), shape, spacing)] = 2
    labels[_inside(lv, shape, spacing)] = 3
    return labels


ED_LV, ES_LV, WALL = (35.0, 24.0, 22.0), (30.0, 15.0, 14.0), 8.0
ED_RV, ES_RV, RV_SHIFT = (30.0, 20.0, 12.0), (25.0, 15.0, 8.0), (0.0, 0.0, -44.0)


def test_phantom_volumes_ef_and_mass_match_the_analytic_values(tmp_path: Path) -> None:
    for phase, lv, rv in (("ED", ED_LV, ED_RV), ("ES", ES_LV, ES_RV)):
        write_volume(tmp_path / f"ph01_{phase}_gt.nii.gz", _phantom(lv, WALL, rv=rv), SPACING)
    table, per_frame, problems = measure_mask_set(tmp_path)
    assert not problems and len(table) == 1
    row = table.iloc[0]
    edv, esv = _volume_ml(ED_LV), _volume_ml(ES_LV)  # 77.4 and 26.4 mL
    assert abs(row["EDV"] - edv) / edv <= MAX_RELATIVE_ERROR
    assert abs(row["ESV"] - esv) / esv <= MAX_RELATIVE_ERROR
    assert abs(row["EF"] - 100 * (edv - esv) / edv) <= MAX_EF_ERROR
    myo = _volume_ml(tuple(a + WALL for a in ED_LV)) - edv
    assert abs(row["LVM"] - 1.05 * myo) / (1.05 * myo) <= MAX_RELATIVE_ERROR
    assert row["units"] == "mL" and row["flags"] == ""
    rv_edv, rv_esv = _volume_ml(ED_RV), _volume_ml(ES_RV)  # 30.2 and 12.6 mL
    assert abs(row["RV_EDV"] - rv_edv) / rv_edv <= MAX_RELATIVE_ERROR
    assert abs(row["RV_ESV"] - rv_esv) / rv_esv <= MAX_RELATIVE_ERROR
    assert abs(row["RV_EF"] - 100 * (rv_edv - rv_esv) / rv_edv) <= MAX_EF_ERROR


def test_phantom_error_shrinks_with_the_voxel_size() -> None:
    coarse = abs(_phantom(ED_LV, WALL).__eq__(3).sum() * np.prod(SPACING) / 1000
                 - _volume_ml(ED_LV))
    fine_spacing = tuple(s / 2 for s in SPACING)
    fine_shape = tuple(2 * n for n in SHAPE)
    fine = (_phantom(ED_LV, WALL, fine_shape, fine_spacing) == 3).sum() \
        * np.prod(fine_spacing) / 1000
    assert abs(fine - _volume_ml(ED_LV)) < coarse
    assert fine == pytest.approx(_volume_ml(ED_LV), rel=MAX_RELATIVE_ERROR / 2)
