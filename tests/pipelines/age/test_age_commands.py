"""`cinelab synth cmr-lax`, `age ingest`, `cv`, `age ensemble` and `age report` end to end on
a tiny synthetic long-axis cohort; unusable input exits with a one-line error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.store import PreparedStore

runner = CliRunner()
TINY = ["--set", "data.size=16", "--set", "trainer.max_epochs=1", "--set", "data.batch_size=4",
        "--set", "model.kwargs={in_channels: 1, num_outputs: 1, channels: [4, 8]}"]


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("age")
    _ok(["synth", "cmr-lax", "--out", str(root / "cohort"), "--n", "8", "--size", "32",
         "--views", "3ch,4ch", "--target", "age"])
    _ok(["age", "ingest", str(root / "cohort" / "dicom"), "--ages",
         str(root / "cohort" / "ages.csv"), "--out", str(root / "ingest"), "--store",
         str(root / "store"), "--size", "16", "--workers", "1"])
    return root


def test_synth_and_ingest_make_a_two_view_store(work: Path) -> None:
    ages = pd.read_csv(work / "cohort" / "ages.csv")
    assert len(ages) == 8
    store = PreparedStore(work / "store")
    assert set(store.manifest["view"]) <= {"3ch", "4ch"}
    assert store.frames(store.ids[0]).shape == (25, 16, 16, 1)
    assert set(store.manifest["patient_id"]) == set(ages["subject"])


def test_cv_ensemble_report(work: Path) -> None:
    out = work / "cv"
    args = ["cv", "cmr-age-cpu", "--data", str(work / "store"), "--out", str(out),
            "--outer", "2", "--inner", "2", "--tta", "2", *TINY]
    assert "4 model(s) trained" in _ok(args)
    assert "0 model(s) trained, 4 finished before" in _ok(args)  # resumes: nothing to redo
    text = _ok(["age", "ensemble", str(out), "--n-boot", "20", "--method", "mean"])
    assert "RMSE ensemble" in text and "RMSE baseline" in text
    assert (out / "ensemble" / "age_gap.csv").exists()
    _ok(["age", "report", str(out)])
    assert (out / "ensemble" / "report.html").stat().st_size > 10_000


@pytest.mark.parametrize("args", [
    ["synth", "cmr-lax", "--out", "unused", "--target", "EF"],
    ["age", "report", "no/such/folder"],
    ["cv", "cmr-age-cpu", "--data", "no/such/store", "--out", "unused"],
])
def test_unusable_input_exits_2(args: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "error:" in result.output


def test_ingest_without_series_exits_2(work: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["age", "ingest", str(tmp_path / "empty"), "--ages",
                                 str(work / "cohort" / "ages.csv"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no series" in result.output
