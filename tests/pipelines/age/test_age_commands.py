"""`cinelab synth cmr-lax`, `age ingest`, `cv`, `age ensemble` (with each model's OOD
detector, as `cinelab run` fits them) and `age report` end to end on a tiny synthetic one-view
long-axis cohort; unusable input exits with a one-line error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.store import PreparedStore
from cinelab.pipelines.age.ood import SCORES_FILE, oof_ood_scores, read_unit_ood
from cinelab.pipelines.age.predict import cv_units
from cinelab.utils import read_json

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
         "--views", "4ch", "--target", "age"])
    _ok(["age", "ingest", str(root / "cohort" / "dicom"), "--ages",
         str(root / "cohort" / "ages.csv"), "--out", str(root / "ingest"), "--views", "4ch",
         "--store", str(root / "store"), "--size", "16", "--workers", "1"])
    return root


@pytest.mark.slow
def test_synth_and_ingest_make_a_store_with_the_cohort_ages(work: Path) -> None:
    ages = pd.read_csv(work / "cohort" / "ages.csv", dtype={"subject": str})
    store = PreparedStore(work / "store")
    m = store.manifest
    assert set(m["view"]) == {"4ch"}  # the extra 2ch series some subjects have are left out
    assert sorted(m["patient_id"]) == sorted(ages["subject"])  # every subject keeps its 4ch
    truth = ages.set_index("subject")["age"].reindex(m["patient_id"].astype(str))
    assert np.allclose(m["age"].astype(float), truth.to_numpy())
    assert store.frames(store.ids[0]).shape == (25, 16, 16, 1)  # one cycle, 25 frames


@pytest.mark.slow
def test_cv_ensemble_report(work: Path) -> None:
    out = work / "cv"
    args = ["cv", "cmr-age-cpu", "--data", str(work / "store"), "--out", str(out),
            "--outer", "2", "--inner", "2", "--tta", "1", "--by", "view", *TINY]
    assert "4 model(s) trained" in _ok(args)
    assert "0 model(s) trained, 4 finished before" in _ok(args)  # resumes: nothing to redo
    text = _ok(["age", "ensemble", str(out), "--n-boot", "20", "--method", "mean"])
    table = pd.read_csv(out / "ensemble" / "predictions.csv")
    shown = dict(re.findall(r"RMSE (\w+): ([\d.]+)", text))
    rmse = np.sqrt(np.mean((table["pred"] - table["age"]) ** 2))
    base = np.sqrt(np.mean((table["baseline"] - table["age"]) ** 2))
    assert float(shown["ensemble"]) == pytest.approx(rmse, abs=0.006)
    assert float(shown["baseline"]) == pytest.approx(base, abs=0.006)
    gap = pd.read_csv(out / "ensemble" / "age_gap.csv")
    assert np.allclose(gap["gap"], gap["pred"] - gap["age"])
    _ok(["age", "report", str(out)])
    page = (out / "ensemble" / "report.html").read_text()
    ratio = read_json(out / "ensemble" / "metrics.json")["headline"]["rmse_ratio_to_baseline"]
    assert f"ratio {ratio:.2f}" in page and f"{rmse:.2f}" in page
    # the detectors, fitted like the run's `ood_step`, and their out-of-fold flag rate
    models = [u[3] for u in cv_units(out)]
    assert len(models) == 4 and all(read_unit_ood(m) is not None for m in models)
    assert all((m.parent.parent / SCORES_FILE).is_file() for m in models)
    ratios = oof_ood_scores(out)[0]
    assert len(ratios) == 8  # every subject once, by its outer fold's models
    flagged = float((ratios > 1.0).mean())
    assert "OOD detectors: 4 fitted" in text and f"{flagged:.1%} of 8 subjects flagged" in text
    assert f"{flagged:.1%} of 8 subjects flagged" in page
    again = _ok(["age", "ensemble", str(out), "--n-boot", "20", "--method", "mean"])
    assert "OOD detectors: 0 fitted" in again  # resumes: every model has its detector


@pytest.mark.parametrize(("args", "message"), [
    (["synth", "cmr-lax", "--out", "unused", "--target", "EF"], "'age'"),
    (["age", "report", "no/such/folder"], "metrics.json"),
    (["cv", "cmr-age-cpu", "--data", "no/such/store", "--out", "unused"], "no/such/store"),
])
def test_unusable_input_exits_2(args: list[str], message: str, tmp_path: Path,
                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "error:" in result.output
    assert message in result.output.replace("\n", "")


def test_ingest_without_series_exits_2(work: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["age", "ingest", str(tmp_path / "empty"), "--ages",
                                 str(work / "cohort" / "ages.csv"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no series" in result.output
