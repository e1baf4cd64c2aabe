"""Tracing checks in measure.ef: coordinates inside the frame, frame numbers inside the video,
a minimum number of chords - absurd tracings become problem rows, never EF 100 / EDV 1e26."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.measure.ef import (
    MIN_CHORDS,
    check_tracing_frame,
    check_tracing_lines,
    ef_from_tracings,
    tracings_from_echonet_csv,
)
from conftest import real_path


def _cylinder(diameter: float, n: int = 6, scale: float = 1.0) -> np.ndarray:
    ys = 20.0 + (np.arange(n) + 0.5) / n * 60.0
    chords = np.stack([np.full(n, 50 - diameter / 2), ys, np.full(n, 50 + diameter / 2), ys], 1)
    return np.vstack([[50.0, 20.0, 50.0, 80.0], chords]) * scale


def _table(samples: dict[str, dict[int, np.ndarray]]) -> pd.DataFrame:
    return pd.DataFrame([{"sample_id": sid, "frame": frame, "X1": a, "Y1": b, "X2": c, "Y2": d}
                         for sid, frames in samples.items()
                         for frame, lines in frames.items() for a, b, c, d in lines])


def test_coordinates_of_1e9_are_a_problem_not_ef_100() -> None:
    table, problems = ef_from_tracings(_table({
        "good": {1: _cylinder(40), 9: _cylinder(24)},
        "huge": {1: _cylinder(40, scale=1e9), 9: _cylinder(24)}}))
    assert table["sample_id"].tolist() == ["good"]
    assert table["EF"].iloc[0] == pytest.approx(64.0)
    assert len(problems) == 1 and problems[0].file == "huge"
    assert problems[0].column == "frame 1 lines"
    assert problems[0].expected == "coordinates inside 0..4096 px"


def test_frame_size_and_frame_count_per_sample() -> None:
    samples = {"a": {1: _cylinder(40), 9: _cylinder(24)},
               "b": {1: _cylinder(40), 150: _cylinder(24)}}
    table, problems = ef_from_tracings(_table(samples), frame_size=(112, 112),
                                       n_frames={"a": 100, "b": 120})
    assert table["sample_id"].tolist() == ["a"]
    assert [(p.file, p.column, p.found) for p in problems] == [("b", "frame", "150")]
    _, problems = ef_from_tracings(_table(samples), frame_size={"a": (60, 60)})
    assert [(p.file, p.column) for p in problems] == [("a", "frame 1 lines")]
    assert problems[0].expected == "coordinates inside the 60x60 frame"


def test_minimum_chords() -> None:
    few = {"f": {1: _cylinder(40, n=2), 9: _cylinder(24, n=2)}}
    _, problems = ef_from_tracings(_table(few))
    assert problems[0].found == "2 chord(s)" and MIN_CHORDS == 3
    table, problems = ef_from_tracings(_table(few), min_chords=2)
    assert problems == [] and len(table) == 1


def test_check_helpers() -> None:
    assert check_tracing_lines(_cylinder(20), (112, 112)).shape == (7, 4)
    with pytest.raises(InputError, match="a zero-length axis"):
        check_tracing_lines(np.vstack([[5, 5, 5, 5], _cylinder(20)[1:]]))
    assert check_tracing_frame(3.0, 4) == 3
    for bad in (-1, 2.5, "x", float("nan"), 4):
        with pytest.raises(InputError):
            check_tracing_frame(bad, 4)


def test_real_tracings_pass_the_checks() -> None:
    df = pd.read_csv(real_path("echonet-mini", "VolumeTracings.csv"))
    files = pd.read_csv(real_path("echonet-mini", "FileList.csv"))
    n_frames = dict(zip(files["FileName"].str.removesuffix(".avi"),
                        files["NumberOfFrames"], strict=True))
    table, problems = ef_from_tracings(tracings_from_echonet_csv(df), frame_size=(112, 112),
                                       n_frames=n_frames)
    assert problems == [] and len(table) == df["FileName"].nunique()
