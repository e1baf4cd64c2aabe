"""The command line: each command end to end on a tiny synthetic cohort and the real samples."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.store import PreparedStore
from conftest import real_path

runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "cohort"
    _ok(["synth", "echo", "--out", str(out), "--n", "6", "--seed", "3", "--size", "64"])
    return out


@pytest.mark.slow
def test_synth_ingest_prepare_measure(cohort: Path, tmp_path: Path) -> None:
    _ok(["ingest", str(cohort), "--out", str(tmp_path / "ingest")])
    manifest = pd.read_csv(tmp_path / "ingest" / "manifest.csv")
    assert len(manifest) == 6 and (tmp_path / "ingest" / "tracings.csv").exists()
    _ok(["prepare", str(tmp_path / "ingest"), "--out", str(tmp_path / "store"),
         "--size", "64", "--workers", "1"])
    store = PreparedStore(tmp_path / "store")
    assert len(store.ids) == 6 and store.frames(store.ids[0]).shape[1:] == (64, 64, 3)
    assert store.mask(store.ids[0]) is not None and store.tracings is not None
    _ok(["measure", "tracings", str(tmp_path / "store"), "--out", str(tmp_path / "ef.csv")])
    table = pd.read_csv(tmp_path / "ef.csv")
    assert len(table) == 6
    assert (table["EF"] - table["label_EF"]).abs().max() <= 0.5


def test_measure_straight_from_the_layout(cohort: Path, tmp_path: Path) -> None:
    _ok(["measure", "tracings", str(cohort), "--out", str(tmp_path / "ef.csv")])
    table = pd.read_csv(tmp_path / "ef.csv")
    assert {"EDV", "ESV", "EF", "label_EF", "label_EDV", "label_ESV"} <= set(table.columns)


def test_unusable_input_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "no such folder" in result.output
    (tmp_path / "FileList.csv").write_text("FileName,EF\nabc,50\n")
    (tmp_path / "Videos").mkdir()
    result = runner.invoke(app, ["ingest", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Split" in result.output
    result = runner.invoke(app, ["prepare", str(tmp_path / "nothing.csv"), "--out",
                                 str(tmp_path / "s")])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.slow
def test_real_echonet_mini(tmp_path: Path) -> None:
    root = real_path("echonet-mini")
    _ok(["ingest", str(root), "--out", str(tmp_path / "ingest")])
    _ok(["prepare", str(tmp_path / "ingest"), "--out", str(tmp_path / "store"),
         "--workers", "2"])
    store = PreparedStore(tmp_path / "store")
    files = pd.read_csv(root / "FileList.csv")
    assert len(store.ids) == 10
    for row in files.itertuples():
        assert store.frames(row.FileName).shape[0] == row.NumberOfFrames
        assert store.meta(row.FileName)["fps"] == pytest.approx(row.FPS)
    _ok(["measure", "tracings", str(tmp_path / "store"), "--out", str(tmp_path / "ef.csv")])
    table = pd.read_csv(tmp_path / "ef.csv")
    assert len(table) == 10 and (table["EF_frustum"] - table["label_EF"]).abs().max() <= 1.5


@pytest.mark.slow
def test_real_echo_dicom_folder(tmp_path: Path) -> None:
    root = real_path("echo-dicom")
    _ok(["ingest", str(root), "--out", str(tmp_path / "ingest")])
    _ok(["prepare", str(tmp_path / "ingest"), "--out", str(tmp_path / "store")])
    store = PreparedStore(tmp_path / "store")
    assert store.frames(store.ids[0]).shape == (30, 112, 112, 3)
