"""Property-based tests (hypothesis): the table reader, tracing validation and sample ids
never let anything but a typed InputError out, and what they accept is what was written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cinelab.errors import InputError
from cinelab.formats.folders import safe_id
from cinelab.io.table import read_table
from cinelab.measure.ef import (
    MAX_COORDINATE,
    check_tracing_frame,
    check_tracing_lines,
    ef_from_tracings,
)

manifest = pytest.importorskip("cinelab.data.manifest")
validate_sample_id = getattr(manifest, "validate_sample_id", None)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
CELL = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ_", min_size=1, max_size=8)


pytestmark = pytest.mark.filterwarnings("ignore::cinelab.io.table.TableWarning")


def _write(folder: Path, data: bytes) -> Path:
    path = folder / "t.csv"
    path.write_bytes(data)
    return path


@SETTINGS
@given(st.binary(max_size=600))
def test_read_table_on_any_bytes_reads_or_raises_input_error(tmp_path: Path, data: bytes
                                                             ) -> None:
    try:
        df = read_table(_write(tmp_path, data))
    except InputError as exc:
        assert exc.path is not None and exc.field and exc.expected and exc.found
        return
    assert isinstance(df, pd.DataFrame)
    assert df.attrs["encoding"] in ("utf-8", "utf-16", "latin-1")


@SETTINGS
@given(st.lists(NAME, min_size=1, max_size=5, unique=True).flatmap(
    lambda cols: st.tuples(st.just(cols), st.lists(st.lists(CELL, min_size=len(cols),
                                                            max_size=len(cols)),
                                                   max_size=8))),
       st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_read_table_round_trips_text_tables(tmp_path: Path, table: tuple, encoding: str
                                            ) -> None:
    columns, rows = table
    df = pd.DataFrame(rows, columns=columns, dtype=str)
    path = _write(tmp_path, df.to_csv(index=False).encode(encoding))
    back = read_table(path, required=columns, dtype=str, keep_default_na=False)
    assert list(back.columns) == columns
    pd.testing.assert_frame_equal(back.fillna(""), df.replace({None: ""}), check_dtype=False)


@SETTINGS
@given(st.lists(NAME, min_size=1, max_size=4, unique=True), st.integers(1, 6),
       st.integers(1, 3))
def test_read_table_names_the_first_ragged_line(tmp_path: Path, columns: list, good: int,
                                                extra: int) -> None:
    lines = [",".join(columns)] + [",".join(["1"] * len(columns))] * good
    lines.append(",".join(["2"] * (len(columns) + extra)))
    with pytest.raises(InputError) as err:
        read_table(_write(tmp_path, ("\n".join(lines) + "\n").encode()))
    assert err.value.field == f"line {good + 2}"
    assert err.value.found == f"{len(columns) + extra} fields"


COORD = st.floats(allow_nan=True, allow_infinity=True, width=64)


@SETTINGS
@given(st.lists(st.tuples(COORD, COORD, COORD, COORD), min_size=0, max_size=8),
       st.none() | st.tuples(st.integers(1, 512), st.integers(1, 512)))
def test_tracing_lines_are_inside_the_frame_or_refused(lines: list, size: tuple | None
                                                       ) -> None:
    arr = np.array(lines, dtype=float).reshape(-1, 4)
    try:
        out = check_tracing_lines(arr, size, min_chords=1)
    except InputError as exc:
        assert exc.field == "lines" and exc.expected and exc.found
        return
    hi_y, hi_x = size if size is not None else (MAX_COORDINATE, MAX_COORDINATE)
    assert np.isfinite(out).all()
    assert (out[:, [0, 2]] >= -1).all() and (out[:, [0, 2]] <= hi_x + 1).all()
    assert (out[:, [1, 3]] >= -1).all() and (out[:, [1, 3]] <= hi_y + 1).all()


@SETTINGS
@given(st.lists(st.floats(-1e12, 1e12), min_size=24, max_size=24), st.integers(0, 200),
       st.integers(0, 200))
def test_ef_is_a_percentage_or_the_sample_is_reported(values: list, f1: int, f2: int
                                                      ) -> None:
    coords = np.array(values).reshape(2, 3, 4)
    rows = [{"sample_id": "s", "frame": frame, "X1": a, "Y1": b, "X2": c, "Y2": d}
            for frame, lines in zip((f1, f2 + 201), coords, strict=True)
            for a, b, c, d in lines]
    table, problems = ef_from_tracings(pd.DataFrame(rows), frame_size=(112, 112),
                                       n_frames=300, min_chords=2)
    assert len(table) + len(problems) == 1
    if len(table):
        ef = float(table["EF"].iloc[0])
        assert 0.0 <= ef <= 100.0
        assert float(table["EDV"].iloc[0]) <= 112**3 * 4  # bounded by the frame
    else:
        assert problems[0].file == "s" and problems[0].column


@SETTINGS
@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=6)),
       st.none() | st.integers(1, 500))
def test_frame_numbers_are_whole_non_negative_and_inside_the_video(frame: object,
                                                                   n: int | None) -> None:
    try:
        value = check_tracing_frame(frame, n)
    except InputError as exc:
        assert exc.field == "frame"
        return
    assert value >= 0 and (n is None or value < n)


@pytest.mark.skipif(validate_sample_id is None, reason="validate_sample_id not written yet")
@SETTINGS
@given(st.text(max_size=40))
def test_sample_ids_never_leave_the_output_folder(text: str) -> None:
    out = Path("/tmp/out-root")
    try:
        sid = validate_sample_id(text)
    except InputError as exc:
        assert exc.field == "sample_id"
        return
    assert "/" not in sid and "\\" not in sid and ".." not in sid and sid not in (".", "")
    target = (out / "samples" / f"{sid}.npy").resolve()
    assert target.is_relative_to(out.resolve())


@pytest.mark.skipif(validate_sample_id is None, reason="validate_sample_id not written yet")
@SETTINGS
@given(st.text(max_size=40))
def test_folder_ids_made_safe_always_validate(text: str) -> None:
    assert validate_sample_id(safe_id(text)) == safe_id(text)
