"""`cinelab cmr predict` ends like `cinelab predict` (issue 15 follow-up): given a cohort
with one unreadable file it writes the good rows and their volumes, lists the bad file in
problems.csv and exits 3; a clean cohort exits 0."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from test_cmr_hardening import _checkpoint, _patient
from typer.testing import CliRunner

from cinelab.cli import app

runner = CliRunner()


def test_cmr_predict_exits_3_when_a_file_was_skipped(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "model.pt")
    bad = tmp_path / "bad"
    _patient(bad, 1)
    broken = _patient(bad, 2) / "patient002_frame01.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    out = tmp_path / "p"
    result = runner.invoke(app, ["cmr", "predict", str(model), str(bad), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert "finished with 1 problem(s)" in " ".join(result.output.split())
    problems = pd.read_csv(out / "problems.csv", dtype=str)
    assert [Path(f).name for f in problems["file"]] == [broken.name]
    table = pd.read_csv(out / "predictions.csv", dtype={"sample_id": str})
    assert sorted(table["sample_id"]) == ["patient001_frame01", "patient001_frame02",
                                          "patient002_frame02"]
    volumes = pd.read_csv(out / "volumes.csv", dtype=str)
    assert "patient001" in set(volumes["patient_id"])  # measured after the skipped file
    clean = tmp_path / "clean"
    _patient(clean, 1)
    assert runner.invoke(app, ["cmr", "predict", str(model), str(clean), "--out",
                               str(tmp_path / "p0")]).exit_code == 0
