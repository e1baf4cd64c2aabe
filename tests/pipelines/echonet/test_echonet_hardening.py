"""Issue 12 wired into the EchoNet entry points: `cinelab ingest`, `cinelab measure tracings`
and `evaluate --labels` on small cohorts holding one bad file (or row) beside good ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.errors import InputError
from cinelab.io.table import TableWarning
from cinelab.io.video import write_video
from cinelab.pipelines.echonet.api import truth_from
from cinelab.pipelines.echonet.layout import read_echonet

FRAMES, SIZE, FPS = 16, 32, 50
runner = CliRunner()


def _row(name: str, ef: float) -> dict:
    return {"FileName": name, "EF": ef, "ESV": 30.0, "EDV": 70.0, "FrameHeight": SIZE,
            "FrameWidth": SIZE, "FPS": FPS, "NumberOfFrames": FRAMES, "Split": "TRAIN"}


def _trace(name: str, frame: int, scale: float = 1.0, x0: float = 8.0) -> list[dict]:
    """A long axis plus four chords (a sensible tracing inside the 32x32 frame)."""
    axis = {"X1": 16.0, "Y1": 4.0, "X2": 16.0, "Y2": 4.0 + 20.0 * scale}
    chords = [{"X1": x0, "Y1": 8.0 + 4 * i, "X2": 32.0 - x0, "Y2": 8.0 + 4 * i}
              for i in range(4)]
    return [{"FileName": f"{name}.avi", **line, "Frame": frame} for line in [axis, *chords]]


def _cohort(root: Path, tracings: list[dict]) -> Path:
    (root / "Videos").mkdir(parents=True)
    for i, name in enumerate(("A", "B", "C")):
        frames = np.random.default_rng(i).integers(0, 255, (FRAMES, SIZE, SIZE, 3), np.uint8)
        write_video(root / "Videos" / f"{name}.avi", frames, FPS)
    pd.DataFrame([_row("A", 60.0), _row("B", 55.0), _row("C", 50.0)]).to_csv(
        root / "FileList.csv", index=False)
    pd.DataFrame(tracings).to_csv(root / "VolumeTracings.csv", index=False)
    return root


def _good_tracings(*names: str) -> list[dict]:
    return [line for n in names for line in _trace(n, 2) + _trace(n, 9, x0=11.0)]


def _ingest(root: Path, out: Path) -> tuple[int, str, pd.DataFrame | None]:
    result = runner.invoke(app, ["ingest", str(root), "--out", str(out)])
    problems = pd.read_csv(out / "problems.csv") if (out / "problems.csv").exists() else None
    return result.exit_code, result.output, problems


@pytest.mark.parametrize(("content", "found"), [
    (b"", "an empty file (0 bytes)"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "binary data (a PNG image)"),
    (b"FileName,EF,Split\nA,60,TRAIN\nB,55,TRAIN,extra,extra\n", "5 fields"),
])
def test_bad_filelist_is_one_line_error(tmp_path: Path, content: bytes, found: str) -> None:
    root = _cohort(tmp_path / "echo", _good_tracings("A"))
    (root / "FileList.csv").write_bytes(content)
    code, output, _ = _ingest(root, tmp_path / "out")
    assert code == 2 and "Traceback" not in output
    line = " ".join(output.split())  # rich may wrap; the message is one sentence
    assert line.startswith("error:") and "FileList.csv" in line and found in line
    if b"extra" in content:
        assert "line 3:" in line


def test_latin1_filelist_read_and_reported(tmp_path: Path) -> None:
    root = _cohort(tmp_path / "echo", _good_tracings("A"))
    table = pd.read_csv(root / "FileList.csv")
    table["Notes"] = ["Müller", "", ""]
    (root / "FileList.csv").write_bytes(table.to_csv(index=False).encode("latin-1"))
    with pytest.warns(TableWarning, match="read as Latin-1"):
        cohort = read_echonet(root)
    assert cohort.manifest["Notes"].iat[0] == "Müller"  # decoded right, not mojibake
    (note,) = [p for p in cohort.problems if p.column == "encoding"]
    assert note.file.endswith("FileList.csv") and note.found == "latin-1"
    assert "read as Latin-1" in note.error


def test_ragged_tracings_are_a_problem_videos_kept(tmp_path: Path) -> None:
    root = _cohort(tmp_path / "echo", _good_tracings("A", "B"))
    with open(root / "VolumeTracings.csv", "a") as f:
        f.write("C.avi,1,2,3,4,5,6,7\n")
    code, _, problems = _ingest(root, tmp_path / "out")
    assert code == 0
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype={"sample_id": str})
    assert manifest["sample_id"].tolist() == ["A", "B", "C"]
    assert not (tmp_path / "out" / "tracings.csv").exists() or \
        pd.read_csv(tmp_path / "out" / "tracings.csv").empty
    (row,) = problems.to_dict("records")
    assert row["column"] == "line 22" and row["found"] == "8 fields"
    assert row["file"].endswith("VolumeTracings.csv") and "tracings unusable" in row["error"]


def test_tracings_outside_the_video_are_problems_not_measured(tmp_path: Path) -> None:
    huge = _trace("B", 2)
    huge[1]["X2"] = 1e9  # the issue: EDV 1.6e26, EF 100
    late = _trace("C", 2) + _trace("C", 40, x0=11.0)  # frame 40 of a 16-frame video
    root = _cohort(tmp_path / "echo", _good_tracings("A") + huge + _trace("B", 9, x0=11.0)
                   + late)
    code, _, problems = _ingest(root, tmp_path / "out")
    assert code == 0
    rows = problems.set_index("column")
    assert rows.loc["frame 2 lines", "found"] == "line 1: [8.0, 8.0, 1000000000.0, 8.0]"
    assert rows.loc["frame 2 lines", "expected"] == "coordinates inside the 32x32 frame"
    assert "'B'" in rows.loc["frame 2 lines", "error"]
    assert (rows.loc["frame 40", "found"], rows.loc["frame 40", "expected"]) == \
        ("40", "a frame inside the video (0..15)")
    tracings = pd.read_csv(tmp_path / "out" / "tracings.csv", dtype={"sample_id": str})
    assert tracings["sample_id"].unique().tolist() == ["A"]

    result = runner.invoke(app, ["measure", "tracings", str(root), "--out",
                                 str(tmp_path / "ef.csv")])
    assert result.exit_code == 0, result.output
    measured = pd.read_csv(tmp_path / "ef.csv", dtype={"sample_id": str})
    assert measured["sample_id"].tolist() == ["A"]  # B and C never measured
    alone = runner.invoke(app, ["measure", "tracings", str(_cohort(
        tmp_path / "alone", _good_tracings("A"))), "--out", str(tmp_path / "alone.csv")])
    assert alone.exit_code == 0
    pd.testing.assert_frame_equal(measured, pd.read_csv(tmp_path / "alone.csv",
                                                        dtype={"sample_id": str}))


@pytest.mark.parametrize(("content", "field"), [
    (b"", "file"), (b"PK\x03\x04" + bytes(64), "file"),
    (b"FileName,EF\nA,60\nB,55,1,2\n", "line 3"),
])
def test_bad_label_table_for_evaluate(tmp_path: Path, content: bytes, field: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_bytes(content)
    with pytest.raises(InputError) as err:
        truth_from(labels)
    assert err.value.field == field and err.value.path == str(labels)
    assert "\n" not in str(err.value)
