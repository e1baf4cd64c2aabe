"""`cinelab rvf predict` ends like `cinelab predict` (issue 15 follow-up): on a store whose
preparation skipped one unreadable video it writes the good videos' rows, lists the bad one
in problems.csv and exits 3 (the same problems as the generic verb)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.manifest import read_manifest
from cinelab.models import create_model
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.train.checkpoint import InputSpec, save_checkpoint

runner = CliRunner()
KWARGS = {"backbone": "tiny_video", "backbone_kwargs": {"channels": [4, 8]},
          "fusion": "mean_prob"}


def _model(path: Path) -> Path:
    torch.manual_seed(0)
    spec = InputSpec(task="video_classification", size=32, channels=3, frames=4, period=2,
                     mean=[100.0, 0.0, 0.0], std=[50.0, 1.0, 1.0], target="label")
    return save_checkpoint(path, create_model("two_stream", **KWARGS), {
        "name": "rvf-test", "model": {"name": "two_stream", "kwargs": KWARGS},
        "data": {"clips": 2}}, spec)


@pytest.mark.slow
def test_rvf_predict_exits_3_when_a_video_was_skipped(tmp_path: Path) -> None:
    raw = synth_rvf_cohort(tmp_path / "raw", n=8, seed=4, size=48, frames=12)
    manifest, _ = ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", tmp_path / "ingest")
    bad = Path(str(manifest["path"].iloc[0]))
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"not a DICOM dataset" * 8)  # unreadable copy
    prepare_rvf(tmp_path / "ingest", tmp_path / "store", size=32, workers=1)
    kept = read_manifest(tmp_path / "store" / "manifest.csv")
    assert str(manifest["sample_id"].iloc[0]) not in set(kept["sample_id"].astype(str))
    model, out = _model(tmp_path / "run" / "model.pt"), tmp_path / "pred"
    result = runner.invoke(app, ["rvf", "predict", str(model), str(tmp_path / "store"),
                                 "--out", str(out)])
    assert result.exit_code == 3, result.output + repr(result.exception)
    assert "finished with 1 problem(s)" in " ".join(result.output.split())
    problems = pd.read_csv(out / "problems.csv", dtype=str)
    assert len(problems) == 1 and bad.name in problems["file"].iloc[0]
    table = pd.read_csv(out / "predictions.csv", dtype={"sample_id": str})
    assert sorted(table["sample_id"]) == sorted(kept["sample_id"].astype(str))
    generic = runner.invoke(app, ["predict", str(model), str(tmp_path / "store"), "--out",
                                  str(tmp_path / "generic")])
    assert generic.exit_code == 3, generic.output
    assert (tmp_path / "generic" / "problems.csv").read_text() == \
        (out / "problems.csv").read_text()
