"""formats.folders / formats.dicoms: label CSVs read by io.table, ids made from file names
are always safe sample ids (no separators, no '..', unique)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.formats.dicoms import read_dicom_folder
from cinelab.formats.folders import read_video_folder, safe_id
from cinelab.io.table import TableWarning
from cinelab.io.video import write_video
from cinelab.synth.dicom import write_ultrasound_dicom

FRAMES = np.zeros((4, 16, 16, 3), np.uint8)


@pytest.mark.parametrize(("text", "expected"), [
    ("0X1A2B", "0X1A2B"), ("my video", "my_video"), ("..", "s_"), ("a..b", "a_b"),
    (".hidden", "s.hidden"), ("ü", "s_"), ("a/b\\c", "a_b_c"),
])
def test_safe_id(text: str, expected: str) -> None:
    assert safe_id(text) == expected


def test_long_ids_stay_unique() -> None:
    a, b = safe_id("x" * 200 + "1"), safe_id("x" * 200 + "2")
    assert len(a) == len(b) == 128 and a != b


def test_video_folder_ids_from_awkward_names(tmp_path: Path) -> None:
    root = tmp_path / "v"
    (root / "sub").mkdir(parents=True)
    for name in ("a b.avi", "a_b.avi", "sub/x y.avi", "sub/.hidden.avi"):
        write_video(root / name, FRAMES, 25.0)
    manifest, problems = read_video_folder(root)
    assert problems == []
    # 'a b' and 'a_b' collide once made safe: the flattened names collide too, then -2
    assert sorted(manifest["sample_id"]) == ["a_b.avi", "a_b.avi-2", "x_y"]


def test_label_csv_problems_are_input_errors(tmp_path: Path) -> None:
    root = tmp_path / "v"
    root.mkdir()
    write_video(root / "a.avi", FRAMES, 25.0)
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"FileName,EF\na.avi,50\na.avi,1,2\n")
    with pytest.raises(InputError) as err:
        read_video_folder(root, labels)
    assert (err.value.path, err.value.field) == (str(labels), "line 3")
    labels.write_bytes("FileName,EF,site\na.avi,50,Malmö\n".encode("latin-1"))
    with pytest.warns(TableWarning, match="read as Latin-1"):
        manifest, problems = read_video_folder(root, labels)
    assert manifest["site"].tolist() == ["Malmö"] and manifest["EF"].tolist() == [50]


def test_dicom_folder_ids_are_safe(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "p 1").mkdir(parents=True)
    write_ultrasound_dicom(root / "p 1" / "img 1.dcm", FRAMES[..., 0], 25.0, "P1")
    manifest, problems = read_dicom_folder(root)
    assert manifest["sample_id"].tolist() == ["p_1__img_1"]
