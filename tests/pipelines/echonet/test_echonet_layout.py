"""EchoNet-Dynamic layout reader: every real-file quirk, a malformed-input corpus, real samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.data.manifest import REQUIRED, read_manifest, write_manifest
from cinelab.errors import InputError, Problem
from cinelab.io.video import probe_video, read_video, write_video
from cinelab.pipelines.echonet.layout import read_echonet, validate_echonet
from conftest import real_path

FRAMES, SIZE, FPS = 16, 32, 50
COLUMNS = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS",
           "NumberOfFrames", "Split"]


def _video(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    return write_video(path, frames, FPS)


def _row(name: str, ef: float, split: str, frames: int = FRAMES, **extra: object) -> dict:
    return {"FileName": name, "EF": ef, "ESV": 30.0, "EDV": 70.0, "FrameHeight": SIZE,
            "FrameWidth": SIZE, "FPS": FPS, "NumberOfFrames": frames, "Split": split, **extra}


def _lines(name: str, frame: int, n: int) -> list[dict]:
    return [{"FileName": name, "X1": 10.0 + i, "Y1": 5.0 + i, "X2": 20.0 + i, "Y2": 5.0 + i,
             "Frame": frame} for i in range(n)]


def _layout(root: Path, rows: list[dict], videos: list[str], tracings: list[dict] | None = None
            ) -> Path:
    (root / "Videos").mkdir(parents=True)
    for i, name in enumerate(videos):
        _video(root / "Videos" / f"{name}.avi", seed=i)
    pd.DataFrame(rows).to_csv(root / "FileList.csv", index=False)
    if tracings is not None:
        pd.DataFrame(tracings).to_csv(root / "VolumeTracings.csv", index=False)
    return root


@pytest.fixture
def quirky(tmp_path: Path) -> Path:
    """A tiny layout with every quirk of the real FileList/VolumeTracings files."""
    rows = [
        _row("V1.avi", 60.0, "TRAIN", Notes="a"),
        _row("V2", 55.0, "Val", frames=20),      # header says 16 frames: noted, kept
        _row("V3.avi", 45.0, "tEsT"),
        _row("V4", 50.0, "bogus"),               # unknown split -> '' + problem
        _row("V5.avi", np.nan, "TRAIN"),         # NaN EF -> dropped
        _row("V1", 61.0, "TEST"),                # duplicate of V1 -> first kept
        _row("V6", 52.0, "TRAIN"),               # video missing -> dropped
        _row("V7", 150.0, "TRAIN"),              # out of range -> kept + problem
    ]
    tracings = (_lines("V1.avi", 3, 4) + _lines("V1.avi", 9, 4)
                + _lines("V2.avi", 0, 4) + _lines("V2.avi", 8, 3)   # odd count: kept
                + _lines("V3.avi", 1, 4) + _lines("V3.avi", 5, 1)   # one line: dropped
                + _lines("V9.avi", 0, 4)                            # not listed: dropped
                + _lines("V6.avi", 0, 4))                           # video missing
    root = _layout(tmp_path / "echonet", rows, ["V1", "V2", "V3", "V4", "V5", "V7", "V8"],
                   tracings)
    (root / "Masks").mkdir()
    np.savez(root / "Masks" / "V1.npz", mask=np.zeros((FRAMES, SIZE, SIZE), np.uint8))
    (root / "Truth").mkdir()
    pd.DataFrame({"frame": range(FRAMES)}).to_csv(root / "Truth" / "V1.avi.csv", index=False)
    return root


def _about(problems: list[Problem], text: str) -> list[Problem]:
    return [p for p in problems if text in p.error or text in p.file]


def test_manifest_from_quirky_layout(quirky: Path) -> None:
    cohort = read_echonet(quirky)
    m = cohort.manifest
    assert tuple(m.columns[: len(REQUIRED)]) == REQUIRED
    assert m["sample_id"].tolist() == ["V1", "V2", "V3", "V4", "V7"]
    assert (m["patient_id"] == m["sample_id"]).all()
    assert m["split"].tolist() == ["train", "val", "test", "", "train"]
    assert set(m["modality"]) == {"echo"} and set(m["view"]) == {"A4C"}
    assert set(m["fold"]) == {-1}
    assert m["EF"].tolist() == [60.0, 55.0, 45.0, 50.0, 150.0]
    for col in ("ESV", "EDV", "FPS", "NumberOfFrames", "FrameHeight", "FrameWidth", "Notes"):
        assert col in m.columns
    assert "FileName" not in m.columns and "Split" not in m.columns
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m["path"])
    assert m["mask_path"].tolist() == [str(quirky.resolve() / "Masks" / "V1.npz"), "", "", "",
                                       ""]
    assert m["truth_path"].iat[0].endswith("Truth/V1.avi.csv")
    assert np.load(m["mask_path"].iat[0])["mask"].shape == (FRAMES, SIZE, SIZE)
    assert cohort.root == quirky.resolve()


def test_quirks_are_reported(quirky: Path) -> None:
    problems = read_echonet(quirky).problems
    assert all(p.stage == "echonet" for p in problems)
    (split,) = _about(problems, "unknown split")
    assert (split.row, split.column, split.found) == (3, "Split", "'bogus'")
    (nan,) = _about(problems, "EF is not a number")
    assert (nan.row, nan.column) == (4, "EF")
    (dup,) = _about(problems, "duplicate FileName")
    assert (dup.row, dup.found) == (5, "V1") and "kept row 0" in dup.error
    (missing,) = _about(problems, "listed but missing")
    assert missing.file.endswith("Videos/V6.avi") and missing.row == 6
    (ef,) = _about(problems, "EF out of range")
    assert (ef.row, ef.found) == (7, "150")
    (unlisted,) = _about(problems, "not in FileList.csv: not added")
    assert unlisted.file.endswith("V8.avi")
    (frames,) = _about(problems, "frame count differs")
    assert (frames.row, frames.expected, frames.found) == (1, "20", "16")
    # V5 (NaN EF) is on disk but listed: not reported as an unlisted video
    assert not _about(problems, "'V5' is not in")


def test_tracings_quirks(quirky: Path) -> None:
    cohort = read_echonet(quirky)
    t = cohort.tracings
    assert list(t.columns) == ["sample_id", "frame", "X1", "Y1", "X2", "Y2"]
    assert t["sample_id"].tolist() == ["V1"] * 8 + ["V2"] * 7      # file order, V3 dropped
    assert t["frame"].tolist() == [3] * 4 + [9] * 4 + [0] * 4 + [8] * 3
    assert t["X1"].tolist()[:4] == [10.0, 11.0, 12.0, 13.0]
    (single,) = _about(cohort.problems, "single traced line")
    assert "'V3' frame 5" in single.error and single.file.endswith("VolumeTracings.csv")
    (odd,) = _about(cohort.problems, "3 lines where most frames have 4")
    assert "'V2' frame 8" in odd.error
    (unlisted,) = _about(cohort.problems, "tracings for 'V9'")
    assert unlisted.found == "'V9'"
    assert not _about(cohort.problems, "tracings for 'V6'")  # already reported as missing


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_round_trip(quirky: Path, tmp_path: Path, suffix: str) -> None:
    m = read_echonet(quirky).manifest
    back = read_manifest(write_manifest(m, tmp_path / f"m{suffix}"))
    pd.testing.assert_frame_equal(back, m, check_dtype=False)
    assert back["mask_path"].tolist()[1:] == ["", "", "", ""]


def test_validate_echonet_appends_manifest_checks(quirky: Path) -> None:
    cohort = read_echonet(quirky)
    problems = validate_echonet(cohort)
    assert problems[: len(cohort.problems)] == cohort.problems
    extra = problems[len(cohort.problems):]
    assert [(p.stage, p.row, p.column, p.found) for p in extra] == [("manifest", 4, "EF", "150")]


def test_no_tracings_file_and_no_checks(tmp_path: Path) -> None:
    root = _layout(tmp_path, [_row("A", 50.0, "train")], ["A"])
    cohort = read_echonet(root, check_videos=False)
    assert cohort.problems == []
    assert len(cohort.manifest) == 1 and cohort.tracings.empty
    assert list(cohort.tracings.columns) == ["sample_id", "frame", "X1", "Y1", "X2", "Y2"]


# ---- malformed input corpus: each a clear error or problem, the rest processed ------------

def test_malformed_videos_reported_rest_processed(tmp_path: Path) -> None:
    rows = [_row(n, 50.0, "train") for n in ("good", "head", "half", "empty")]
    root = _layout(tmp_path, rows, ["good"])
    data = (root / "Videos" / "good.avi").read_bytes()
    (root / "Videos" / "head.avi").write_bytes(data[:1000])
    (root / "Videos" / "half.avi").write_bytes(data[: len(data) // 2])
    (root / "Videos" / "empty.avi").write_bytes(b"")
    cohort = read_echonet(root)
    assert cohort.manifest["sample_id"].tolist() == ["good"]
    by_file = {Path(p.file).stem: p for p in cohort.problems}
    assert set(by_file) == {"head", "half", "empty"}
    assert by_file["empty"].found == "0 bytes"
    assert by_file["head"].column == "container"
    assert by_file["half"].column == "frames" and by_file["half"].found == "0 frames"


@pytest.mark.parametrize("column", ["FileName", "EF", "Split"])
def test_filelist_missing_column_is_input_error(tmp_path: Path, column: str) -> None:
    root = _layout(tmp_path, [_row("A", 50.0, "train")], ["A"])
    df = pd.read_csv(root / "FileList.csv").drop(columns=column)
    df.to_csv(root / "FileList.csv", index=False)
    with pytest.raises(InputError) as err:
        read_echonet(root)
    assert err.value.field == column
    assert err.value.path.endswith("FileList.csv")
    assert "found columns" in str(err.value)


def test_unusable_layouts(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="FileList.csv"):
        read_echonet(tmp_path)
    pd.DataFrame([_row("A", 50.0, "train")]).to_csv(tmp_path / "FileList.csv", index=False)
    with pytest.raises(InputError, match="Videos"):
        read_echonet(tmp_path)


def test_tracings_missing_column_is_problem(tmp_path: Path) -> None:
    lines = pd.DataFrame(_lines("A", 0, 3)).drop(columns="Y2").to_dict("records")
    root = _layout(tmp_path, [_row("A", 50.0, "train")], ["A"], lines)
    cohort = read_echonet(root)
    assert len(cohort.manifest) == 1 and cohort.tracings.empty
    (problem,) = cohort.problems
    assert problem.column == "Y2" and "tracings unusable" in problem.error


def test_every_row_dropped_gives_empty_manifest(tmp_path: Path) -> None:
    root = _layout(tmp_path, [_row("A", np.nan, "train"), _row("B", "n/a", "val")], ["A"])
    cohort = read_echonet(root)
    assert cohort.manifest.empty
    assert tuple(cohort.manifest.columns[: len(REQUIRED)]) == REQUIRED
    assert [p.row for p in _about(cohort.problems, "EF is not a number")] == [0, 1]


# ---- real public samples -------------------------------------------------------------------

def test_real_echonet_mini() -> None:
    root = real_path("echonet-mini")
    cohort = read_echonet(root)
    m = cohort.manifest
    assert cohort.problems == []
    assert validate_echonet(cohort) == []
    assert len(m) == 10 and set(m["split"]) == {"test"}
    for _, row in m.iterrows():
        info = probe_video(row["path"])
        assert info.frames == row["NumberOfFrames"]
        assert info.fps == pytest.approx(row["FPS"])
        assert (info.height, info.width) == (row["FrameHeight"], row["FrameWidth"])
    for _, row in m.iloc[[2, 7]].iterrows():  # both at 54 fps
        video = read_video(row["path"])
        assert video.frames.shape == (row["NumberOfFrames"], 112, 112, 3)
    t = cohort.tracings
    assert len(t) == 420
    assert set(t["sample_id"]) == set(m["sample_id"])
    assert (t.groupby(["sample_id", "frame"]).size() == 21).all()


def test_real_echonet_extra() -> None:
    root = real_path("echonet-extra")
    cohort = read_echonet(root)
    m = cohort.manifest
    listed = pd.read_csv(root / "FileList.csv")
    assert len(listed) < 100  # FileList.csv, never FileList_full.csv
    missing = _about(cohort.problems, "listed but missing")
    assert len(m) + len(missing) == len(listed)
    assert len(m) == len(list((root / "Videos").glob("*.avi")))
    assert all(Path(p).is_file() for p in m["path"])
    assert not m["sample_id"].str.endswith(".avi").any()
    assert set(m["split"]) == {"train"}
    assert cohort.tracings.empty
    assert [p for p in cohort.problems if p not in missing] == []
