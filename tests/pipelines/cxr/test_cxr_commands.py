"""`cinelab cxr ...` end to end on a tiny synthetic cohort: stores, ensemble (one member
alone, then the rest; the process pool is tested in tests/train), predict with TTA,
evaluate, Grad-CAM, report."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.pipelines.cxr.synth import synth_cxr_cohort

runner = CliRunner()
MEMBERS = ("ensemble.members=[{model: resnet10t, size: 32, crop: crop}, "
           "{model: resnet10t, size: 32, crop: uncrop}]")
SETTINGS = ["--set", MEMBERS, "--set", "data.batch_size=8"]


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    # seed 1: both classes in the validation split
    return synth_cxr_cohort(tmp_path_factory.mktemp("cxr") / "raw", n=40, size=64, seed=1)


def test_whole_chain(raw, tmp_path):
    stores, ens = tmp_path / "stores", tmp_path / "ensemble"  # the layout of `cxr run`
    _ok(["cxr", "prepare", raw, "--out", stores, "--workers", 1, *SETTINGS])
    assert sorted(p.name for p in stores.iterdir() if p.is_dir()) == ["crop-32", "uncrop-32"]

    train = ["cxr", "train-ensemble", "cxr-ensemble-cpu", "--stores", stores, "--out", ens,
             "--max-epochs", 1, *SETTINGS]
    out = _ok([*train, "--member", "resnet10t-32-crop"]).output
    assert "not fitted yet" in out and not (ens / "ensemble.json").exists()
    first = (ens / "members" / "resnet10t-32-crop" / "model.pt").stat().st_mtime_ns
    out = _ok(train).output
    assert "trained 1, already finished 1" in out
    assert (ens / "members" / "resnet10t-32-crop" / "model.pt").stat().st_mtime_ns == first
    weights = json.loads((ens / "ensemble.json").read_text())
    assert len(weights["weights"]) == 2 and weights["method"] == "bmc"
    assert weights["details"]["val_auc"] is not None

    pred = tmp_path / "pred"
    _ok(["cxr", "predict", ens, raw / "Test", "--out", pred, "--tta", 2])
    table = pd.read_csv(pred / "predictions.csv")
    n_test = len([p for p in (raw / "Test").rglob("*.png") if p.parent.name != "masks"])
    assert len(table) == n_test and table["probability"].between(0, 1).all()
    assert (table["crop_reason"] == "ok").all()  # mask files beside the images

    ev = tmp_path / "eval"
    out = _ok(["cxr", "evaluate", pred, "--labels", raw / "Test", "--out", ev,
               "--n-boot", 50]).output
    assert "AUC" in out and (ev / "roc.png").exists()
    members = pd.read_csv(ev / "members.csv")
    assert members["model"].tolist()[0] == "ensemble" and len(members) == 3

    cams = tmp_path / "cams"
    _ok(["cxr", "gradcam", ens, raw / "Test", "--out", cams, "--limit", 2])
    assert len(list(cams.glob("*.png"))) == 2
    html = tmp_path / "report.html"
    _ok(["cxr", "report", ev, "--ensemble", ens, "--gradcam", cams, "--out", html])
    text = html.read_text()
    assert "Ensemble weights" in text and "Grad-CAM" in text and "data:image/png" in text

    # `cxr run` reuses the stores and the finished ensemble, then predicts val and test
    out = _ok(["cxr", "run", raw, "--out", tmp_path, "--tta", 2, "--max-epochs", 1,
               *SETTINGS]).output
    assert "report" in out and (tmp_path / "report.html").is_file()
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["threshold_source"].startswith("Youden")
    assert len(list((tmp_path / "gradcam").glob("*.png"))) == 6


def test_friendly_errors(tmp_path):
    result = runner.invoke(app, ["cxr", "predict", str(tmp_path / "none"), str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "ensemble" in result.output
    result = runner.invoke(app, ["cxr", "report", str(tmp_path), "--out",
                                 str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "metrics.json" in result.output
