"""Method of discs, area-length, tracing masks and EF from tracings (synthetic + real EchoNet)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.measure.ef import (
    area_length_volume,
    disc_volume,
    ef_from_tracings,
    ef_from_volumes,
    tracing_mask,
    tracing_polygon,
    tracings_from_echonet_csv,
)
from conftest import real_path

REAL_EF_TOLERANCE = 1.5  # EF points, the bound for every real echonet-mini video
# plain cylinders reach 1.52 on 0X1012703CDC1436FE (39.49 vs 41.01); truncated cones stay < 1.2
DISC_EF_TOLERANCE = 1.55


def cylinder_lines(length: float, diameter: float, n_chords: int, x0: float = 10.0,
                   y0: float = 5.0) -> np.ndarray:
    """A vertical long axis and n equal horizontal chords: the tracing of a cylinder."""
    ys = y0 + (np.arange(n_chords) + 0.5) / n_chords * length
    chords = np.stack([np.full(n_chords, x0 - diameter / 2), ys,
                       np.full(n_chords, x0 + diameter / 2), ys], axis=1)
    return np.vstack([[x0, y0, x0, y0 + length], chords])


def tracing_rows(sample_id: str, frame: int, lines: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(lines, columns=["X1", "Y1", "X2", "Y2"])
    df.insert(0, "frame", frame)
    df.insert(0, "sample_id", sample_id)
    return df


@pytest.mark.parametrize("n_chords", [1, 7, 20])
def test_disc_volume_of_a_cylinder_for_any_chord_count(n_chords):
    lines = cylinder_lines(length=40.0, diameter=10.0, n_chords=n_chords)
    assert disc_volume(lines) == pytest.approx(math.pi / 4 * 10.0**2 * 40.0)


def test_disc_volume_single_line_names_the_field():
    with pytest.raises(InputError) as err:
        disc_volume(np.array([[0.0, 0.0, 0.0, 10.0]]))
    assert err.value.field == "lines"
    assert "1 line" in err.value.found


def test_disc_volume_rejects_wrong_shape_and_nan():
    with pytest.raises(InputError):
        disc_volume(np.zeros((3, 3)))
    bad = cylinder_lines(10.0, 4.0, 3)
    bad[1, 0] = np.nan
    with pytest.raises(InputError):
        disc_volume(bad)


def test_tracing_polygon_follows_echonet_order():
    lines = cylinder_lines(length=20.0, diameter=6.0, n_chords=4)
    ys, xs = tracing_polygon(lines)
    np.testing.assert_allclose(xs, [7, 7, 7, 7, 13, 13, 13, 13])
    np.testing.assert_allclose(ys, np.concatenate([lines[1:, 1], lines[1:, 1][::-1]]))


def test_tracing_mask_fills_the_polygon():
    lines = cylinder_lines(length=20.0, diameter=6.0, n_chords=4, x0=10.0, y0=5.0)
    mask = tracing_mask(lines, (32, 32))
    assert mask.dtype == bool and mask.shape == (32, 32)
    rows, cols = np.nonzero(mask)
    assert cols.min() == 7 and cols.max() <= 13
    assert rows.min() == 8 and rows.max() <= 23
    assert not mask[0].any()


def test_area_length_and_ef_formulas():
    assert area_length_volume(30.0, 10.0) == pytest.approx(8 * 900 / (3 * math.pi * 10))
    assert ef_from_volumes(100.0, 40.0) == pytest.approx(60.0)
    with pytest.raises(InputError):
        ef_from_volumes(0.0, 0.0)
    with pytest.raises(InputError):
        area_length_volume(10.0, 0.0)


def test_ef_from_tracings_orders_frames_by_volume_and_scales_to_ml():
    ed_lines = cylinder_lines(40.0, 20.0, 20)
    es_lines = cylinder_lines(30.0, 14.0, 12)
    df = pd.concat([tracing_rows("a", 30, es_lines), tracing_rows("a", 12, ed_lines)])
    table, problems = ef_from_tracings(df)
    assert problems == []
    row = table.iloc[0]
    assert (row.ed_frame, row.es_frame) == (12, 30)
    assert (row.n_lines_ed, row.n_lines_es) == (21, 13)
    edv, esv = math.pi / 4 * 400 * 40, math.pi / 4 * 196 * 30
    assert row.EDV == pytest.approx(edv) and row.ESV == pytest.approx(esv)
    assert row.EF == pytest.approx(100 * (edv - esv) / edv)
    assert 0 < row.EF_area_length < 100
    scaled, _ = ef_from_tracings(df, pixel_size_mm=2.0)
    assert scaled.EDV.iloc[0] == pytest.approx(edv * 8 / 1000)
    assert scaled.EF.iloc[0] == pytest.approx(row.EF)


def test_bad_samples_go_to_problems_and_the_rest_is_measured():
    good = pd.concat([tracing_rows("good", 1, cylinder_lines(40, 20, 20)),
                      tracing_rows("good", 9, cylinder_lines(35, 12, 20))])
    one_line = pd.concat([tracing_rows("one_line", 1, cylinder_lines(40, 20, 20)),
                          tracing_rows("one_line", 9, cylinder_lines(35, 12, 20)[:1])])
    three = pd.concat([tracing_rows("three", f, cylinder_lines(40, 20 - f, 20))
                       for f in (1, 2, 3)])
    table, problems = ef_from_tracings(pd.concat([good, one_line, three]))
    assert table.sample_id.tolist() == ["good"]
    by_file = {p.file: p for p in problems}
    assert set(by_file) == {"one_line", "three"}
    assert by_file["one_line"].column == "frame 9 lines"
    assert by_file["three"].column == "frame"


def test_ef_from_tracings_requires_columns():
    with pytest.raises(InputError) as err:
        ef_from_tracings(pd.DataFrame({"sample_id": ["a"], "X1": [0.0]}))
    assert err.value.field == "columns"


def test_tracings_from_echonet_csv_renames_and_strips_avi():
    df = pd.DataFrame({"FileName": ["A.avi", "B"], "X1": [1.0, 2.0], "Y1": [1.0, 2.0],
                       "X2": [3.0, 4.0], "Y2": [3.0, 4.0], "Frame": [5, 6]})
    out = tracings_from_echonet_csv(df)
    assert out.columns.tolist() == ["sample_id", "frame", "X1", "Y1", "X2", "Y2"]
    assert out.sample_id.tolist() == ["A", "B"]
    with pytest.raises(InputError):
        tracings_from_echonet_csv(df.drop(columns="Frame"))


def test_real_echonet_tracings_reproduce_filelist_ef():
    root = real_path("echonet-mini")
    tracings = tracings_from_echonet_csv(pd.read_csv(root / "VolumeTracings.csv"))
    table, problems = ef_from_tracings(tracings)
    filelist = pd.read_csv(root / "FileList.csv")
    merged = table.merge(filelist, left_on="sample_id", right_on="FileName",
                         suffixes=("", "_filelist"))
    assert problems == [] and len(merged) == 10
    assert (merged.EF - merged.EF_filelist).abs().max() < DISC_EF_TOLERANCE
    assert (merged.EF_frustum - merged.EF_filelist).abs().max() <= REAL_EF_TOLERANCE
    assert (merged.EF - merged.EF_filelist).abs().mean() < 0.8
    assert (merged.ed_frame != merged.es_frame).all() and (merged.EDV > merged.ESV).all()
