"""`cinelab synth rvf` and `cinelab rvf ...` end to end on a tiny cohort (each step's output
checked against what the previous one wrote), and no planted PHI in any file the pipeline
writes (ingest, store, run, predictions, evaluation, saliency, report)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
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
         out / "predictions"])
    _ok(["rvf", "evaluate", out / "predictions", "--out", out / "evaluation", "--n-boot", "20"])
    _ok(["rvf", "saliency", out / "run" / "model.pt", out / "store", "--out",
         out / "saliency", "--predictions", out / "predictions", "--top", "2"])
    _ok(["rvf", "report", out / "evaluation", "--saliency", out / "saliency", "--run",
         out / "run"])
    return {"raw": raw, "out": out}


def _labelled_truth(raw: Path) -> pd.DataFrame:
    """truth.csv rows of the videos ingest keeps: a class, one class per patient."""
    truth = pd.read_csv(raw / "truth.csv", dtype=str)
    classes = pd.read_csv(raw / "classes.csv", dtype=str)
    conflicted = set(classes.loc[classes["id"].duplicated(keep=False), "id"])
    return truth[truth["study_id"].isin(set(classes["id"]) - conflicted)]


def _auc(labels: pd.Series, scores: pd.Series) -> float:
    """AUC as the share of (positive, negative) pairs ranked right (ties half)."""
    pos, neg = scores[labels == 1].to_numpy(), scores[labels == 0].to_numpy()
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@pytest.mark.slow
def test_each_step_builds_on_the_last(pipeline: dict[str, Path]) -> None:
    out = pipeline["out"]
    manifest = pd.read_csv(out / "ingest" / "manifest.csv", dtype={"sample_id": str})
    truth = _labelled_truth(pipeline["raw"])
    assert manifest["class"].value_counts().to_dict() == truth["class"].value_counts().to_dict()
    assert (manifest["label"] == (manifest["class"] == "RVF").astype(int)).all()
    assert read_json(out / "store" / "store.json")["flow"]["samples"] == len(manifest)
    predictions = pd.read_csv(out / "predictions" / "predictions.csv", dtype={"sample_id": str})
    clips = pd.read_csv(out / "predictions" / "clips.csv", dtype={"sample_id": str})
    means = clips.groupby("sample_id")["probability"].mean()
    np.testing.assert_allclose(predictions.set_index("sample_id")["probability"],
                               means[predictions["sample_id"]], rtol=1e-6)
    assert (clips.groupby("sample_id").size() == 2).all()  # TINY: data.clips=2
    labels = manifest.set_index("sample_id")["label"][predictions["sample_id"]]
    metrics = read_json(out / "evaluation" / "metrics.json")
    expected = _auc(labels.reset_index(drop=True), predictions["probability"])
    assert metrics["pipeline"] == "rvf" and metrics["auc"] == pytest.approx(expected)
    ranked = (predictions["probability"] - 0.5).abs().sort_values(ascending=False,
                                                                  kind="mergesort")
    saliency = pd.read_csv(out / "saliency" / "saliency.csv", dtype={"sample_id": str})
    assert saliency["sample_id"].drop_duplicates().tolist() == \
        predictions.loc[ranked.index[:2], "sample_id"].tolist()
    html = (out / "evaluation" / "report.html").read_text()
    assert f"{expected:.3f}" in html and "Guided backpropagation" in html
    assert html.count("data:image/png;base64") >= 1 + len(saliency)  # ROC + every strip


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
               ("ingest", "store", "run", "predictions", "evaluation", "saliency")]
    kinds = {p.suffix for root in outputs for p in _files(root)}
    assert {".csv", ".json", ".npy", ".dcm", ".pt", ".ckpt", ".png", ".avi", ".html"} <= kinds
    assert _hits(outputs, planted["values"]) == []
    assert _hits(outputs, planted["study_ids"]) == []


def test_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["rvf", "predict", str(tmp_path / "none.pt"), str(tmp_path),
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "error:" in result.output


@pytest.mark.slow
def test_generic_verbs_dispatch_to_rvf(pipeline: dict[str, Path], tmp_path: Path) -> None:
    """`cinelab predict/evaluate/report/explain` find the rvf pipeline from the checkpoint
    and the contract, and give what the `cinelab rvf` verbs gave."""
    out = pipeline["out"]
    _ok(["predict", out / "run" / "model.pt", out / "store", "--out", tmp_path / "p"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p" / "predictions.csv"),
                                  pd.read_csv(out / "predictions" / "predictions.csv"))
    _ok(["evaluate", tmp_path / "p", "--out", tmp_path / "e"])
    assert read_json(tmp_path / "e" / "metrics.json")["auc"] == \
        pytest.approx(read_json(out / "evaluation" / "metrics.json")["auc"])
    _ok(["report", tmp_path / "e"])
    assert "Streams" in (tmp_path / "e" / "report.html").read_text()
    _ok(["explain", out / "run", out / "store", "--out", tmp_path / "s", "--option", "top=1",
         "--option", f"predictions={tmp_path / 'p'}"])
    first = pd.read_csv(out / "saliency" / "saliency.csv", dtype={"sample_id": str})
    again = pd.read_csv(tmp_path / "s" / "saliency.csv", dtype={"sample_id": str})
    assert again["sample_id"].unique().tolist() == [first["sample_id"].iloc[0]]
