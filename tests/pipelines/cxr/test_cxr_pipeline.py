"""The cxr pipeline through the registry: layouts that `cinelab ingest` detects, predict into
the prediction contract, evaluate from the contract against independently computed numbers,
explain and report; and (slow) the whole chain learning the synthetic cohort."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cxr_predict import MEMBERS, _checkpoint, make_ensemble
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.errors import InputError
from cinelab.evaluate.metrics import roc_auc
from cinelab.formats.ingest import detect_layout, ingest
from cinelab.infer.contract import read_predictions, read_run, write_contract
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.pipelines.registry import Options, get_pipeline, pipeline_for_model
from cinelab.utils import is_done, read_json

CXR = get_pipeline("cxr")
TRUTH = [1, 1, 1, 0, 0, 0, 1, 0]
PROB = [0.9, 0.8, 0.4, 0.3, 0.6, 0.1, 0.7, 0.2]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    # seed 5: both classes in the test split (2 + 2)
    return synth_cxr_cohort(tmp_path_factory.mktemp("cxr") / "raw", n=20, size=64, seed=5)


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    return make_ensemble(tmp_path_factory.mktemp("ens"))


def test_layouts_are_detected_and_ingested(raw, tmp_path):
    assert detect_layout(raw) == "cxr-folders"
    assert detect_layout(raw / "Test") == "cxr-folders"  # Positive/Negative at the top
    nih = synth_cxr_cohort(tmp_path / "nih", n=6, size=32, seed=2, layout="nih")
    assert detect_layout(nih) == "nih"
    got = ingest(raw).manifest.set_index("sample_id")
    truth = pd.read_csv(raw / "labels.csv")
    names = truth["file"].map(lambda f: Path(f).stem)
    assert dict(zip(names, truth["label"], strict=True)) == got["label"].to_dict()
    assert dict(zip(names, truth["split"], strict=True)) == got["split"].to_dict()
    assert not ingest(raw).problems
    assert len(ingest(nih).manifest) == 6 and "Effusion" in ingest(nih).manifest.columns


def test_pipeline_claims_ensembles_and_member_checkpoints(ensemble_dir):
    # the folder is claimed by cxr alone (rvf's ensembles are named in their ensemble.json)
    assert CXR.claims(ensemble_dir) and CXR.claims(ensemble_dir / "ensemble.json")
    assert pipeline_for_model(ensemble_dir) is CXR
    member = ensemble_dir / "members" / next(iter(MEMBERS)) / "model.pt"
    assert pipeline_for_model(member) is CXR  # task image_classification
    assert not CXR.claims(ensemble_dir / "members")
    assert [str(t) for t in CXR.targets] == ["auc >= 0.85"]


def test_predict_a_split_then_evaluate_from_the_contract(raw, ensemble_dir, tmp_path):
    pred = CXR.predict(ensemble_dir, raw, tmp_path / "pred",
                       Options(split="test", extra={"tta": 1, "masks": "files"}))
    table = read_predictions(pred)
    manifest = read_cxr_folders(raw).manifest
    test = manifest[manifest["split"] == "test"].set_index("sample_id")
    assert sorted(table["sample_id"]) == sorted(test.index)
    run = read_run(pred)
    assert (run["pipeline"], run["input"], run["split"]) == ("cxr", str(raw), "test")
    members = [f"probability_{n}" for n in MEMBERS]
    assert set(members) <= set(table.columns)
    assert (table["prediction"] == (table["probability"] >= table["threshold"])).all()

    metrics = CXR.evaluate(pred, tmp_path / "eval", Options(extra={"n_boot": 50}))
    y = test.loc[table["sample_id"], "label"].to_numpy(float)
    p = table["probability"].to_numpy(float)
    assert metrics["auc"] == pytest.approx(roc_auc(y, p))
    called = p >= 0.5
    assert metrics["sensitivity"] == pytest.approx(called[y == 1].mean())
    assert metrics["specificity"] == pytest.approx((~called[y == 0]).mean())
    assert metrics["accuracy"] == pytest.approx((called == (y == 1)).mean())
    written = read_json(tmp_path / "eval" / "metrics.json")
    assert written["pipeline"] == "cxr" and written["model"] == str(ensemble_dir)
    assert written["auc"]["value"] == pytest.approx(metrics["auc"])
    assert written["crop_fallback_rate"] == pytest.approx(0.0)  # mask files beside each image
    by_member = pd.read_csv(tmp_path / "eval" / "members.csv").set_index("model")
    name = next(iter(MEMBERS))
    assert by_member.loc[name, "auc"] == pytest.approx(roc_auc(y, table[f"probability_{name}"]))

    html = CXR.report(tmp_path / "eval", None)
    assert html == tmp_path / "eval" / "report.html"
    assert f"auc: {metrics['auc']:.3f}" in html.read_text()
    assert "lung crop fell back to the whole image for 0 image(s) (0.0 %)" in html.read_text()


@pytest.mark.slow
def test_the_generic_verbs_dispatch_to_cxr(raw, ensemble_dir, tmp_path):
    pred, cams = tmp_path / "pred", tmp_path / "cams"
    run = CliRunner().invoke(app, ["predict", str(ensemble_dir), str(raw), "--out", str(pred),
                                   "--split", "test", "--option", "masks=files"])
    assert run.exit_code == 0, run.output
    table = read_predictions(pred)
    run = CliRunner().invoke(app, ["evaluate", str(pred), "--option", "n_boot=20"])
    assert run.exit_code == 0, run.output
    metrics = read_json(pred / "evaluation" / "metrics.json")
    labels = read_cxr_folders(raw).manifest.set_index("sample_id")["label"]
    auc = roc_auc(labels.loc[table["sample_id"]].to_numpy(float), table["probability"])
    assert metrics["pipeline"] == "cxr" and metrics["auc"]["value"] == pytest.approx(auc)
    run = CliRunner().invoke(app, ["report", str(pred)])
    assert run.exit_code == 0 and (pred / "evaluation" / "report.html").is_file(), run.output
    run = CliRunner().invoke(app, ["explain", str(ensemble_dir), str(raw), "--out", str(cams),
                                   "--split", "test", "--option", "limit=1",
                                   "--pipeline", "cxr"])
    assert run.exit_code == 0, run.output
    top = Path(table["file"].iloc[0]).stem  # the first test row of the manifest
    assert [p.stem for p in cams.glob("*.png")] == [top]


def test_evaluate_hand_built_contract_with_a_label_csv(tmp_path):
    ids = [f"s{i}" for i in range(8)]
    preds = pd.DataFrame({"sample_id": ids, "probability": PROB,
                          "prediction": [int(v >= 0.5) for v in PROB], "threshold": 0.5,
                          "probability_good": PROB,
                          "probability_flipped": [1 - v for v in PROB]})
    write_contract(tmp_path / "pred", preds, run={"pipeline": "cxr", "input": None,
                                                 "members": ["good", "flipped"]})
    with pytest.raises(InputError, match="labels"):
        CXR.evaluate(tmp_path / "pred", tmp_path / "eval", Options())
    pd.DataFrame({"sample_id": ids, "label": TRUTH}).to_csv(tmp_path / "y.csv", index=False)
    m = CXR.evaluate(tmp_path / "pred", tmp_path / "eval",
                     Options(labels=tmp_path / "y.csv", extra={"n_boot": 50}))
    assert m["auc"] == pytest.approx(15 / 16) and m["threshold"] == 0.5
    assert (m["sensitivity"], m["specificity"], m["accuracy"]) == pytest.approx((0.75,) * 3)
    assert m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]
    members = pd.read_csv(tmp_path / "eval" / "members.csv").set_index("model")
    assert members.loc["flipped", "auc"] == pytest.approx(1 / 16)


@pytest.mark.slow
def test_a_member_checkpoint_predicts_like_its_ensemble_column(raw, ensemble_dir, tmp_path):
    name = "mobilenetv3_small-40-uncrop"  # its recipe names no crop: uncrop, like its member
    whole = CXR.predict(ensemble_dir, raw / "Test", tmp_path / "ens", Options())
    single = CXR.predict(ensemble_dir / "members" / name / "model.pt", raw / "Test",
                         tmp_path / "one", Options())
    a = read_predictions(whole).set_index("sample_id")
    b = read_predictions(single).set_index("sample_id").loc[a.index]
    np.testing.assert_allclose(b["probability"], a[f"probability_{name}"], rtol=1e-5)


def test_a_multi_label_member_is_refused(raw, tmp_path):
    nih = tmp_path / "m" / "nih" / "model.pt"
    _checkpoint(nih, "resnet10t", 32, 1, "image_classification", num_outputs=14)
    with pytest.raises(InputError, match="binary member"):
        CXR.predict(nih, raw / "Test", tmp_path / "out", Options())


@pytest.mark.slow
def test_explain_writes_overlays_and_reports_bad_files(ensemble_dir, raw, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"")
    first = sorted((raw / "Test").rglob("P*.png"))[0]
    (folder / "good.png").write_bytes(first.read_bytes())
    out = CXR.explain(ensemble_dir, folder, tmp_path / "cams", Options(extra={"limit": 2}))
    assert sorted(p.name for p in out.glob("*.png")) == ["good.png"]
    problems = pd.read_csv(out / "problems.csv")
    assert problems["file"].map(lambda f: Path(f).name).tolist() == ["broken.png"]
    assert is_done(out)


@pytest.mark.slow
def test_the_demo_chain_learns_the_synthetic_cohort(tmp_path):
    options = CXR.demo_options
    root = CXR.synth(tmp_path / "data", options.n, options.seed)
    metrics = CXR.run(root, tmp_path / "out", options)
    assert all(t.met(metrics) for t in CXR.targets), metrics  # test AUC >= 0.85
    assert metrics["n"] == 30 and (tmp_path / "out" / "report.html").is_file()  # test split
    models = sorted((tmp_path / "out" / "ensemble" / "members").glob("*/model.pt"))
    before = [p.read_bytes() for p in models]
    again = CXR.run(root, tmp_path / "out", options)  # resumes: nothing retrained
    assert again["auc"] == pytest.approx(metrics["auc"])
    assert [p.read_bytes() for p in models] == before and len(models) == 2
