"""The cine MRI commands end to end on tiny synthetic cohorts (typer CliRunner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.io.nifti import write_volume
from cinelab.measure.cmr import load_mask, mask_index

runner = CliRunner()


def _run(args: list[str], code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmr_cli") / "cohort"
    _run(["synth", "cmr", "--out", out, "--n", 3, "--seed", 1, "--layout", "both",
          "--no-defects", "--frames", 4, "--rows", 40, "--cols", 36])
    return out


def test_synth_and_convert(cohort: Path, tmp_path: Path) -> None:
    truth = pd.read_csv(cohort / "truth.csv")
    assert len(truth) == 3 and (cohort / "acdc").is_dir() and (cohort / "dsb").is_dir()
    _run(["cmr", "convert", cohort / "dsb", "--out", tmp_path / "conv", "--max-size", 64])
    manifest = pd.read_csv(tmp_path / "conv" / "manifest.csv")
    assert len(manifest) >= 3 and (tmp_path / "conv" / "conversion_log.tsv").is_file()
    assert (tmp_path / "conv" / "patient_dimensions.tsv").is_file()


def test_measure_against_truth(cohort: Path, tmp_path: Path) -> None:
    out = _run(["cmr", "measure", cohort / "acdc", "--out", tmp_path,
                "--truth", cohort / "truth.csv", "--truth-id", "acdc_id"])
    assert "3 patients measured" in out
    table = pd.read_csv(tmp_path / "volumes.csv")
    truth = pd.read_csv(cohort / "truth.csv")
    np.testing.assert_allclose(table["EDV"], truth["EDV"], rtol=0.03)
    np.testing.assert_allclose(table["LVM"], truth["LVM"], rtol=0.03)
    ef = pd.read_csv(tmp_path / "ef_differences.csv")
    assert ef["mean"].iloc[0] < 0.01
    assert (tmp_path / "frame_volumes.csv").is_file()


def test_pseudo_from_volumes(cohort: Path, tmp_path: Path) -> None:
    _run(["cmr", "measure", cohort / "acdc", "--out", tmp_path / "m"])
    out = _run(["cmr", "pseudo", tmp_path / "m" / "volumes.csv", "--reference",
                cohort / "truth.csv", "--reference-id", "acdc_id", "--out", tmp_path / "p",
                "--threshold", 5])
    assert "3 of 3 patients" in out
    ids = (tmp_path / "p" / "confident_5pct.txt").read_text().split()
    assert sorted(ids) == ["patient001", "patient002", "patient003"]


def test_evaluate_and_report(cohort: Path, tmp_path: Path) -> None:
    for _, row in mask_index(cohort / "acdc").iterrows():  # an observer with model classes
        labels, spacing = load_mask(row["mask_path"])
        model = np.array([0, 3, 2, 1], np.uint8)[labels]
        write_volume(tmp_path / "net" / f"{row['image_id']}.nii.gz", model, spacing)
    out = _run(["cmr", "evaluate", tmp_path / "net", cohort / "acdc", "--out", tmp_path / "ev",
                "--name", "net", "--pred-labels", "lv=1,myo=2,rv=3",
                "--also", f"self={cohort / 'acdc'}", "--also", f"twin={tmp_path / 'net'}",
                "--also-labels", "twin=lv=1,myo=2,rv=3"])
    assert "net LV: Dice 1.000" in out and "self MYO: Dice 1.000" in out
    assert (tmp_path / "ev" / "report.html").is_file()
    confusion = pd.read_csv(tmp_path / "ev" / "confusion.csv")
    assert set(confusion["model"]) == {"net", "self", "twin"}
    assert (confusion["FP"] == 0).all() and (confusion["FN"] == 0).all()
    _run(["cmr", "report", tmp_path / "ev", "--out", tmp_path / "r.html"])
    assert (tmp_path / "r.html").stat().st_size > 1000


def test_friendly_errors(tmp_path: Path) -> None:
    out = _run(["cmr", "measure", tmp_path, "--out", tmp_path / "m"], code=2)
    assert "error:" in out
    out = _run(["cmr", "measure", tmp_path, "--out", tmp_path / "m", "--spacing", "1,2"],
               code=2)
    assert "--spacing" in out
    assert "error:" in _run(["synth", "cmr", "--out", tmp_path / "s", "--layout", "x"], code=2)
    out = _run(["cmr", "evaluate", tmp_path, tmp_path, "--out", tmp_path / "e",
                "--also-labels", "nobody=acdc"], code=2)
    assert "--also-labels" in out


def test_synth_cmr_long_axis_views_for_age(tmp_path):
    """`cinelab synth cmr --views 3ch,4ch --target age` writes long-axis series + ages."""
    from typer.testing import CliRunner

    from cinelab.cli import app

    result = CliRunner().invoke(app, ["synth", "cmr", "--out", str(tmp_path / "lax"), "--n",
                                      "3", "--views", "3ch,4ch", "--target", "age",
                                      "--rows", "48"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lax" / "ages.csv").exists()
    assert any((tmp_path / "lax" / "dicom").rglob("*.dcm"))
