"""Any nested folder of videos + an optional label CSV -> manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.data.manifest import REQUIRED, validate_manifest
from cinelab.errors import InputError
from cinelab.formats.folders import read_video_folder
from cinelab.io.video import write_video

FRAMES, SIZE, FPS = 4, 16, 25


def _video(path: Path) -> None:
    write_video(path, np.zeros((FRAMES, SIZE, SIZE, 3), np.uint8), FPS)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """site_a/p1/x.avi, site_a/p2/y.avi, site_b/x.mp4 (stem clash), z.avi, a hidden file."""
    root = tmp_path / "videos"
    for rel in ("site_a/p1/x.avi", "site_a/p2/y.avi", "site_b/x.mp4", "z.AVI"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _video(root / rel)
    (root / "notes.txt").write_text("not a video")
    (root / ".cache").mkdir()
    _video(root / ".cache" / "tmp.avi")
    return root


def _labels(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_without_labels(folder: Path) -> None:
    df, problems = read_video_folder(folder, modality="echo", view="A4C")
    assert problems == []
    assert tuple(df.columns) == REQUIRED
    assert df["sample_id"].tolist() == ["site_a__p1__x", "y", "site_b__x", "z"]
    assert (df["patient_id"] == df["sample_id"]).all()
    assert set(df["split"]) == {""} and set(df["fold"]) == {-1}
    assert set(df["view"]) == {"A4C"}
    assert df["path"].iat[2] == str(folder.resolve() / "site_b" / "x.mp4")
    assert validate_manifest(df) == []


def test_labels_by_name_stem_and_relative_path(folder: Path, tmp_path: Path) -> None:
    csv = _labels(tmp_path / "labels.csv", [
        {"FileName": "site_a/p1/x.avi", "EF": 60.0, "PatientID": "007", "Split": "TRAIN",
         "age": 71},
        {"FileName": "y", "EF": 40.0, "PatientID": "007", "Split": "Train", "age": 65},
        {"FileName": "site_b\\x.mp4", "EF": 55.0, "PatientID": "008", "Split": "VALIDATION",
         "age": 50},
        {"FileName": "ghost.avi", "EF": 50.0, "PatientID": "009", "Split": "test", "age": 1},
        {"FileName": "x", "EF": 50.0, "PatientID": "010", "Split": "test", "age": 2},
    ])
    df, problems = read_video_folder(folder, csv)
    assert list(df.columns) == [*REQUIRED, "EF", "age"]
    assert df["EF"].tolist()[:3] == [60.0, 40.0, 55.0]
    assert np.isnan(df["EF"].iat[3])                     # z has no label row: kept
    assert df["patient_id"].tolist() == ["007", "007", "008", "z"]
    assert df["split"].tolist() == ["train", "train", "val", ""]
    rows = {p.row: p for p in problems if p.row is not None}
    assert set(rows) == {3, 4}
    assert rows[3].found == "no video" and rows[3].column == "FileName"
    assert rows[4].found.startswith("2 videos")          # stem x: site_a/p1/x.avi and site_b/x.mp4
    (unlabelled,) = [p for p in problems if p.row is None]
    assert unlabelled.file.endswith("z.AVI") and unlabelled.found == "no row"


def test_patient_column_any_case_and_repeated_rows(folder: Path, tmp_path: Path) -> None:
    csv = _labels(tmp_path / "l.csv", [
        {"video": "z", "patient_id": "p1", "label": "a"},
        {"video": "Z.avi", "patient_id": "p2", "label": "b"},   # same video again
        {"video": "y.avi", "patient_id": None, "label": "c"},
        {"video": "site_a/p1/x", "patient_id": "p3", "label": "d"},
        {"video": "site_b/x", "patient_id": "p4", "label": "e"},
    ])
    df, problems = read_video_folder(folder, csv, split_column=None)
    assert df.set_index("sample_id")["label"].to_dict() == {
        "site_a__p1__x": "d", "y": "c", "site_b__x": "e", "z": "a"}
    assert df.set_index("sample_id")["patient_id"].to_dict() == {
        "site_a__p1__x": "p3", "y": "y", "site_b__x": "p4", "z": "p1"}
    (again,) = problems
    assert again.row == 1 and "kept row 0" in again.error


def test_bad_split_and_overrides(folder: Path, tmp_path: Path) -> None:
    csv = _labels(tmp_path / "l.csv", [
        {"name": rel, "split": split, "view": "PLAX", "path": "elsewhere", "EF": 50}
        for rel, split in [("site_a/p1/x.avi", "hold"), ("y.avi", ""), ("site_b/x.mp4", "val"),
                           ("z.avi", "TEST")]
    ])
    df, problems = read_video_folder(folder, csv, id_column="name", view="A4C")
    assert df["split"].tolist() == ["", "", "val", "test"]
    assert set(df["view"]) == {"PLAX"}
    assert df["csv_path"].tolist() == ["elsewhere"] * 4
    assert Path(df["path"].iat[0]).is_file()
    (bad,) = problems
    assert (bad.row, bad.column, bad.found) == (0, "split", "'hold'")


def test_id_column_errors(folder: Path, tmp_path: Path) -> None:
    csv = _labels(tmp_path / "l.csv", [{"movie": "z.avi", "EF": 50}])
    with pytest.raises(InputError) as err:
        read_video_folder(folder, csv)
    assert err.value.field == "id_column"
    assert "FileName" in err.value.expected and "movie" in err.value.found
    with pytest.raises(InputError, match="'clip'"):
        read_video_folder(folder, csv, id_column="clip")
    with pytest.raises(InputError, match="split_column"):
        read_video_folder(folder, csv, id_column="movie", split_column="fold_name")


def test_missing_inputs(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(InputError, match="nothing at that path"):
        read_video_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video files"):
        read_video_folder(tmp_path / "empty")
    with pytest.raises(InputError, match="labels_csv"):
        read_video_folder(folder, tmp_path / "absent.csv")


def test_absolute_and_dotted_ids_keep_leading_zeros(tmp_path: Path) -> None:
    root = tmp_path / "v"
    root.mkdir()
    _video(root / "001.avi")
    _video(root / "002.avi")
    csv = _labels(tmp_path / "l.csv", [
        {"sample_id": "001", "PatientID": "0042", "EF": 1.5},
        {"sample_id": str(root / "002.avi"), "PatientID": "0043", "EF": 2.5},
    ])
    df, problems = read_video_folder(root, csv)
    assert problems == []
    assert df["sample_id"].tolist() == ["001", "002"]
    assert df["patient_id"].tolist() == ["0042", "0043"]
    assert df["EF"].tolist() == [1.5, 2.5]
