"""`cinelab synth rvf` and `cinelab rvf ...` end to end on a tiny cohort, and no planted PHI
in any file the pipeline writes (ingest, store, run, predictions, saliency, report)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.prep.flow import flow_files
from cinelab.utils import read_json

runner = CliRunner()
TINY = ["--set", "data.size=32", "--set", "data.frames=4", "--set", "data.period=2",
        "--set", "data.batch_size=4", "--set", "data.clips=2",
        "--set", "model.kwargs.backbone_kwargs={channels: [4, 8]}"]


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names]


def _hits(roots: list[Path], values: list[str]) -> list[tuple[str, str]]:
    """(file, value) for every value found in a file's bytes or its path under its root."""
    needles = [v.encode() for v in values if v]
    hits = []
    for root in roots:
        for path in _files(root):
            data = path.read_bytes() + str(path.relative_to(root)).encode()
            hits += [(str(path), n.decode()) for n in needles if n in data]
    return hits


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rvf_cli")
    raw, out = base / "raw", base / "out"
    _ok(["synth", "rvf", "--out", raw, "--n", "8", "--seed", "7", "--size", "48",
         "--frames", "10"])
    _ok(["rvf", "ingest", raw, "--classes", raw / "classes.csv", "--splits",
         raw / "splits.csv", "--out", out / "ingest"])
    _ok(["rvf", "prepare", out / "ingest", "--out", out / "store", "--size", "32",
         "--workers", "1"])
    _ok(["rvf", "train", "--data", out / "store", "--out", out / "run", "--max-epochs", "1",
         *TINY])
    _ok(["rvf", "predict", out / "run" / "model.pt", out / "store", "--out",
         out / "predictions", "--n-boot", "20"])
    _ok(["rvf", "saliency", out / "run" / "model.pt", out / "store", "--out",
         out / "saliency", "--predictions", out / "predictions", "--top", "2"])
    _ok(["rvf", "report", out / "predictions", "--saliency", out / "saliency", "--run",
         out / "run"])
    return {"raw": raw, "out": out}


def test_each_step_writes_its_outputs(pipeline: dict[str, Path]) -> None:
    out = pipeline["out"]
    manifest = pd.read_csv(out / "ingest" / "manifest.csv", dtype=str)
    assert len(manifest) >= 8 and (out / "ingest" / "problems.csv").exists()
    assert read_json(out / "store" / "store.json")["flow"]["samples"] == len(manifest)
    assert (out / "run" / "model.pt").exists()
    predictions = pd.read_csv(out / "predictions" / "predictions.csv", dtype=str)
    assert len(predictions) == len(manifest) and (predictions["n_clips"] == "2").all()
    assert len(pd.read_csv(out / "saliency" / "saliency.csv")) == 4
    html = (out / "predictions" / "report.html").read_text()
    assert "per patient" in html and "Guided backpropagation" in html
    assert "data:image/png;base64" in html


def test_flow_force_recomputes_and_plain_rerun_keeps(pipeline: dict[str, Path]) -> None:
    store = pipeline["out"] / "store"
    sid = pd.read_csv(store / "manifest.csv", dtype=str)["sample_id"].iloc[0]
    stamp = flow_files(store, sid)["flow"].stat().st_mtime_ns
    assert "computed 0" in _ok(["rvf", "flow", store, "--workers", "1"])
    assert flow_files(store, sid)["flow"].stat().st_mtime_ns == stamp
    text = _ok(["rvf", "flow", store, "--workers", "1", "--force"])
    assert "computed 0" not in text and flow_files(store, sid)["flow"].stat().st_mtime_ns > stamp


def test_no_planted_phi_in_any_output_file(pipeline: dict[str, Path]) -> None:
    planted = json.loads((pipeline["raw"] / "phi_planted.json").read_text())
    assert _hits([pipeline["raw"]], planted["values"])  # the raw data holds them
    outputs = [pipeline["out"] / name for name in
               ("ingest", "store", "run", "predictions", "saliency")]
    kinds = {p.suffix for root in outputs for p in _files(root)}
    assert {".csv", ".json", ".npy", ".dcm", ".pt", ".ckpt", ".png", ".avi", ".html"} <= kinds
    assert _hits(outputs, planted["values"]) == []
    assert _hits(outputs, planted["study_ids"]) == []


def test_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["rvf", "predict", str(tmp_path / "none.pt"), str(tmp_path),
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "error:" in result.output
