"""Manifest schema: build, CSV/Parquet round trip, validation reporting every problem at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.data.manifest import (
    REQUIRED,
    ManifestError,
    check_manifest,
    new_manifest,
    normalise_split,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from cinelab.errors import InputError


def _touch(folder: Path, name: str) -> str:
    path = folder / name
    path.write_bytes(b"x")
    return str(path)


def _good(tmp_path: Path) -> pd.DataFrame:
    rows = [
        {"sample_id": "001", "patient_id": "p1", "path": _touch(tmp_path, "a.avi"),
         "modality": "echo", "view": "A4C", "split": "train", "EF": 55.5},
        {"sample_id": "002", "patient_id": "p1", "path": _touch(tmp_path, "b.avi"),
         "modality": "echo", "view": "A4C", "split": "train", "EF": 60.0},
        {"sample_id": "003", "path": _touch(tmp_path, "c.avi"), "modality": "echo",
         "view": "", "split": "test", "EF": 35.0, "fold": 2},
    ]
    return new_manifest(rows)


def test_new_manifest_fills_defaults_and_orders_columns(tmp_path: Path) -> None:
    df = _good(tmp_path)
    assert tuple(df.columns[: len(REQUIRED)]) == REQUIRED
    assert list(df.columns[len(REQUIRED):]) == ["EF"]
    assert df["patient_id"].tolist() == ["p1", "p1", "003"]  # defaults to sample_id
    assert df["fold"].tolist() == [-1, -1, 2]
    assert df["fold"].dtype.kind == "i"


def test_new_manifest_without_rows_is_empty_with_schema() -> None:
    df = new_manifest([])
    assert len(df) == 0
    assert tuple(df.columns) == REQUIRED


def test_new_manifest_needs_sample_id_and_path() -> None:
    with pytest.raises(InputError, match="path"):
        new_manifest([{"sample_id": "a"}])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    df = _good(tmp_path)
    path = write_manifest(df, tmp_path / "out" / f"manifest{suffix}")
    assert path.exists()
    assert not list(path.parent.glob(".*"))  # no temporary file left behind
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["sample_id"].tolist() == ["001", "002", "003"]  # leading zeros kept
    assert back["view"].tolist() == ["A4C", "A4C", ""]
    assert validate_manifest(back) == []


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing at that path"):
        read_manifest(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"sample_id": ["a"], "path": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(InputError) as err:
        read_manifest(bad)
    assert "patient_id" in err.value.field and "split" in err.value.field


@pytest.mark.parametrize(("raw", "split"), [
    ("TRAIN", "train"), ("Val", "val"), (" validation ", "val"), ("TEST", "test"),
    ("holdout", "test"), ("bogus", None), (None, None), (np.nan, None),
])
def test_normalise_split(raw: object, split: str | None) -> None:
    assert normalise_split(raw) == split


def _broken(tmp_path: Path) -> pd.DataFrame:
    df = _good(tmp_path)
    extra = new_manifest([
        {"sample_id": "002", "patient_id": "p9", "path": str(tmp_path / "gone.avi"),
         "split": "val", "EF": np.nan},
        {"sample_id": "005", "patient_id": "p1", "path": _touch(tmp_path, "e.avi"),
         "split": "TRAINING-SET", "EF": 120.0},
        {"sample_id": "006", "patient_id": "p3", "path": _touch(tmp_path, "f.avi"),
         "split": "test", "EF": 40.0},
        {"sample_id": "007", "patient_id": "p3", "path": _touch(tmp_path, "g.avi"),
         "split": "val", "EF": -5.0},
    ])
    return pd.concat([df, extra], ignore_index=True)


def test_validation_reports_every_problem(tmp_path: Path) -> None:
    problems = validate_manifest(_broken(tmp_path), label_ranges={"EF": (0, 100)})
    found = {(p.row, p.column) for p in problems}
    assert found == {
        (3, "sample_id"),   # duplicate of row 1
        (3, "path"),        # missing file
        (3, "EF"),          # NaN
        (4, "split"),       # unknown split
        (4, "EF"),          # 120 > 100
        (6, "EF"),          # -5 < 0
        (5, "patient_id"),  # p3 in test and val: leakage
    }
    by_key = {(p.row, p.column): p for p in problems}
    assert "already in row 1" in by_key[(3, "sample_id")].found
    assert by_key[(3, "path")].file.endswith("gone.avi")
    assert by_key[(3, "EF")].found == "nan"
    assert by_key[(4, "EF")].found == "120"
    assert by_key[(4, "EF")].expected == "a number in [0, 100]"
    assert "TRAINING-SET" in by_key[(4, "split")].found
    assert "p3" in by_key[(5, "patient_id")].found
    assert all(p.stage == "manifest" and p.expected and p.found for p in problems)


def test_validation_leakage_with_unlabelled_rows_and_custom_index(tmp_path: Path) -> None:
    df = _good(tmp_path)
    df.loc[2, "patient_id"] = "p1"
    df.index = [10, 20, 30]
    problems = validate_manifest(df)
    assert [(p.row, p.column) for p in problems] == [(0, "patient_id")]
    assert "['test', 'train']" in problems[0].found


def test_validation_optional_parts(tmp_path: Path) -> None:
    df = _good(tmp_path)
    df["path"] = [Path(p).name for p in df["path"]]
    assert validate_manifest(df, root=tmp_path) == []
    assert validate_manifest(df, check_files=False) == []
    assert len(validate_manifest(df, root=tmp_path / "elsewhere")) == 3
    missing = validate_manifest(df, label_ranges={"LVEDV": (0, 500)}, root=tmp_path)
    assert [(p.row, p.column, p.found) for p in missing] == [(-1, "LVEDV", "no such column")]


def test_validation_missing_required_column_stops_early(tmp_path: Path) -> None:
    df = _good(tmp_path).drop(columns=["split", "fold"])
    problems = validate_manifest(df)
    assert sorted(p.column for p in problems) == ["fold", "split"]


def test_check_manifest_raises_listing_everything(tmp_path: Path) -> None:
    check_manifest(_good(tmp_path))  # a clean manifest passes
    with pytest.raises(ManifestError) as err:
        check_manifest(_broken(tmp_path), source="cohort.csv", label_ranges={"EF": (0, 100)})
    assert len(err.value.problems) == 7
    text = str(err.value)
    assert text.startswith("cohort.csv: 7 problem(s)")
    assert "row 4, column split" in text and "row 5, column patient_id" in text


@pytest.mark.parametrize(("content", "field"), [
    (b"", "file"), (b"\x00\x01\x02\xff" * 50, "file"),
    (b"sample_id,path,split\nA,a.avi,train,extra\n", "line 2")])
def test_a_broken_manifest_is_one_clear_error(tmp_path: Path, content: bytes,
                                              field: str) -> None:
    path = tmp_path / "manifest.csv"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_manifest(path)
    assert err.value.field == field and "\n" not in str(err.value)
