"""`cinelab cxr ...` (the pipeline's own command group, as the CLI registers it): predict,
evaluate, gradcam and report on a tiny ensemble against numbers computed here; (slow) the
chain with real training: stores, one member alone then the rest, `cxr run` resuming it."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from test_cxr_predict import MEMBERS, WEIGHTS, make_ensemble
from typer.testing import CliRunner

from cinelab.evaluate.metrics import roc_auc
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.pipelines.registry import get_pipeline
from cinelab.train.checkpoint import load_checkpoint

runner = CliRunner()
TWO = ("ensemble.members=[{model: resnet10t, size: 32, crop: crop}, "
       "{model: resnet10t, size: 32, crop: uncrop}]")
SETTINGS = ["--set", TWO, "--set", "data.batch_size=8"]


def _app() -> typer.Typer:
    main = typer.Typer()
    get_pipeline("cxr").commands({"main": main, "synth": typer.Typer(),
                                  "measure": typer.Typer(), "import": typer.Typer()})
    return main


APP = _app()


def _ok(args):
    result = runner.invoke(APP, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    # seed 1: both classes in the validation and test splits
    return synth_cxr_cohort(tmp_path_factory.mktemp("cxr") / "raw", n=40, size=64, seed=1)


def _test_labels(raw: Path) -> pd.Series:
    m = read_cxr_folders(raw).manifest
    return m[m["split"] == "test"].set_index("sample_id")["label"]


@pytest.mark.slow
def test_predict_evaluate_gradcam_report(raw, tmp_path):
    ens = make_ensemble(tmp_path / "ens")
    pred, ev = tmp_path / "pred", tmp_path / "eval"
    _ok(["cxr", "predict", ens, raw / "Test", "--out", pred, "--masks", "files"])
    table = pd.read_csv(pred / "predictions.csv", dtype={"sample_id": str})
    labels = _test_labels(raw)
    assert sorted(table["sample_id"]) == sorted(labels.index)
    members = table[[f"probability_{n}" for n in MEMBERS]].to_numpy()
    np.testing.assert_allclose(table["probability"], members @ np.array(WEIGHTS), rtol=1e-6)
    assert (table["crop_reason"] == "ok").all()  # mask files beside the images

    out = _ok(["cxr", "evaluate", pred, "--labels", raw / "Test", "--out", ev,
               "--n-boot", 50, "--threshold", 0.5]).output
    auc = roc_auc(labels.loc[table["sample_id"]].to_numpy(float), table["probability"])
    assert f"AUC {auc:.3f}" in out
    assert json.loads((ev / "metrics.json").read_text())["pipeline"] == "cxr"

    cams = tmp_path / "cams"
    _ok(["cxr", "gradcam", ens, raw / "Test", "--out", cams, "--limit", 2])
    first_two = sorted(p.stem for p in (raw / "Test").rglob("P*.png")
                       if p.parent.name != "masks")[:2]
    assert sorted(p.stem for p in cams.glob("*.png")) == first_two
    html = tmp_path / "report.html"
    _ok(["cxr", "report", ev, "--ensemble", ens, "--gradcam", cams, "--out", html])
    text = html.read_text()
    assert f"auc: {auc:.3f}" in text and text.count("data:image/png") >= 3  # ROC + 2 CAMs


def test_friendly_errors(tmp_path):
    result = runner.invoke(APP, ["cxr", "predict", str(tmp_path / "none"), str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "ensemble folder" in result.output
    result = runner.invoke(APP, ["cxr", "report", str(tmp_path), "--out",
                                 str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "metrics.json" in result.output


@pytest.mark.slow
def test_whole_chain_trains_once_and_resumes(raw, tmp_path):
    stores, ens = tmp_path / "stores", tmp_path / "ensemble"  # the layout of `cxr run`
    _ok(["cxr", "prepare", raw, "--out", stores, "--workers", 1, *SETTINGS])
    crops = pd.read_csv(stores / "crops.csv")
    assert len(crops) == 40 and crops["crop_applied"].all()  # a mask beside every image

    train = ["cxr", "train-ensemble", "cxr-ensemble-cpu", "--stores", stores, "--out", ens,
             "--max-epochs", 1, *SETTINGS]
    out = _ok([*train, "--member", "resnet10t-32-crop"]).output
    assert "not fitted yet" in out and not (ens / "ensemble.json").exists()
    model_pt = ens / "members" / "resnet10t-32-crop" / "model.pt"
    first = model_pt.read_bytes()
    out = _ok(train).output
    assert "trained 1, already finished 1" in out and model_pt.read_bytes() == first
    weights = json.loads((ens / "ensemble.json").read_text())
    assert sum(weights["weights"]) == pytest.approx(1.0) and weights["method"] == "bmc"
    # one crop source (the mask files), recorded in the stores, the member and the ensemble
    assert weights["details"]["crop_source"] == "files"
    assert load_checkpoint(model_pt).info["extra"]["crop_source"] == "files"

    # `cxr run` reuses the stores and the finished ensemble, then predicts val and test
    out = _ok(["cxr", "run", raw, "--out", tmp_path, "--tta", 2, "--max-epochs", 1,
               *SETTINGS]).output
    assert model_pt.read_bytes() == first and "test AUC" in out
    cal = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
    said = cal["note"] if not cal["calibrated"] else \
        f"calibrated on the {cal['split']} split: temperature {cal['temperature']:.3f}"
    assert " ".join(said.split()) in " ".join(out.split())  # one line, calibrated or why not
    run = json.loads((tmp_path / "predictions" / "run.json").read_text())
    assert (run["mask_source"], run["crop_source"]) == ("files", "files")
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["threshold_source"].startswith("Youden")
    test = pd.read_csv(tmp_path / "predictions" / "predictions.csv", dtype={"sample_id": str})
    top = test.sort_values("probability", ascending=False)["file"].head(6)
    assert sorted(p.stem for p in (tmp_path / "gradcam").glob("*.png")) == \
        sorted(Path(f).stem for f in top)


def test_prepare_maps_text_labels_from_the_command_line(raw, tmp_path):
    truth = pd.read_csv(raw / "labels.csv")
    meta = truth.assign(diagnosis=truth["label"].map({1: "COVID-19", 0: "No Finding"}))
    meta[["file", "diagnosis", "split"]].to_csv(tmp_path / "meta.csv", index=False)
    stores = tmp_path / "stores"
    base = ["cxr", "prepare", raw, "--labels", tmp_path / "meta.csv", "--out", stores,
            "--workers", 1, "--label-column", "diagnosis", *SETTINGS]
    result = runner.invoke(APP, [str(a) for a in base])
    assert result.exit_code == 2 and "no usable image" in result.output  # text, no mapping
    _ok([*base, "--positive", "COVID-19"])
    store = pd.read_csv(stores / "uncrop-32" / "manifest.csv")
    got = dict(zip(store["path"].map(lambda p: Path(p).name), store["label"], strict=True))
    assert got == dict(zip(truth["file"].map(lambda f: Path(f).name), truth["label"],
                           strict=True))
