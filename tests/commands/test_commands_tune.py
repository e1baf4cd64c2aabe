"""`cinelab tune-overrides`: a best_params.yaml as --set lines; clear error when missing."""

from __future__ import annotations

from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.train.tune import write_best_params

runner = CliRunner()


def test_tune_overrides_prints_set_lines(tmp_path):
    path = write_best_params(tmp_path / "best_params.yaml", {"optim.lr": 0.003,
                                                            "model.kwargs.drop_rate": 0.25})
    result = runner.invoke(app, ["tune-overrides", str(path)])
    assert result.exit_code == 0
    assert result.output.split() == ["optim.lr=0.003", "model.kwargs.drop_rate=0.25"]
    missing = runner.invoke(app, ["tune-overrides", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "best_params" in missing.output
    assert runner.invoke(app, ["tune", "--help"]).exit_code == 0
