"""`cinelab demo`: synthesise, run the chain, print the metrics against the targets."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.commands.run import DEMO_SUMMARY
from cinelab.pipelines.registry import get_pipeline
from cinelab.utils import read_json


@pytest.mark.slow
def test_demo_command_runs_a_pipeline_and_prints_its_targets(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "rvf", "--out", str(tmp_path), "--n", "40",
                                      "--max-epochs", "1"])
    assert result.exit_code == 0, result.output
    summary = read_json(tmp_path / DEMO_SUMMARY)
    assert list(summary) == ["rvf"] and summary["rvf"]["seconds"] > 0
    metrics = summary["rvf"]["metrics"]
    for target in get_pipeline("rvf").targets:
        assert target.metric in result.output and f"{metrics[target.metric]:.3f}" in result.output
        assert ("met" if target.met(metrics) else "MISSED") in result.output
    assert (tmp_path / "rvf" / "data").is_dir()  # the synthetic cohort, kept for reruns


def test_demo_refuses_an_unknown_pipeline(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "nopipe", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "nopipe" in result.output
    assert "Traceback" not in result.output
