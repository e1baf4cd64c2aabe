"""The age Pipeline: its layout, run (ingest -> prepare -> cv -> ensemble -> out-of-fold
contract -> evaluate -> report), predict through the contract from a cv ensemble or a single
checkpoint on a store or a raw long-axis folder, and evaluate against hand-computed scores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.formats.ingest import LAYOUTS, detect_layout
from cinelab.infer.contract import read_predictions, read_run, write_contract
from cinelab.infer.engines import TOLERANCE
from cinelab.infer.video_regress import predict_store
from cinelab.pipelines.age.ood import ENGINE_FEATURES
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.pipelines.registry import Options, get_pipeline, pipeline_for_model

TINY = ["data.batch_size=4", "trainer.max_epochs=1",
        "model.kwargs={in_channels: 1, num_outputs: 1, channels: [4, 8]}"]
TINY_OPTIONS = Options(extra={"outer": 2, "inner": 2, "tta": 1, "size": 16, "n_boot": 20,
                              "method": "mean", "set": TINY})


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_cmr_lax_cohort(tmp_path_factory.mktemp("age_cohort"), n=8, seed=1,
                                size=32).root


@pytest.fixture(scope="module")
def ran(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("age_run")
    return out, get_pipeline("age").run(cohort, out, TINY_OPTIONS)


def test_layout_claims_a_lax_cohort_but_not_a_plain_dicom_folder(cohort: Path) -> None:
    layout = LAYOUTS.get("cmr_lax")
    assert layout.detect(cohort)
    assert not layout.detect(cohort / "dicom")  # no ages table: a plain DICOM folder
    assert detect_layout(cohort) == "cmr_lax"
    result = layout.read(cohort, {"labels": None})
    ages = pd.read_csv(cohort / "ages.csv", dtype={"subject": str}).set_index("subject")["age"]
    m = result.manifest
    assert set(m["view"]) == {"3ch", "4ch"}  # the extra 2ch series are left out
    assert np.allclose(m["age"].to_numpy(float), ages.reindex(m["patient_id"]).to_numpy())


@pytest.mark.slow
def test_run_writes_out_of_fold_contract_and_scores_it(cohort: Path,
                                                      ran: tuple[Path, dict]) -> None:
    out, metrics = ran
    preds = read_predictions(out / "predictions")
    ages = pd.read_csv(cohort / "ages.csv", dtype={"subject": str}).set_index("subject")["age"]
    assert sorted(preds["sample_id"]) == sorted(ages.index)
    assert (preds["sample_id"] == preds["patient_id"]).all()
    assert read_run(out / "predictions")["pipeline"] == "age"
    truth = ages.reindex(preds["patient_id"]).to_numpy()
    assert metrics["pipeline"] == "age"
    assert metrics["rmse"] == pytest.approx(_rmse(preds["age"], truth), rel=1e-6)
    assert metrics["rmse_baseline"] == pytest.approx(_rmse(preds["age_baseline"], truth),
                                                     rel=1e-6)
    assert metrics["rmse_ratio"] == pytest.approx(metrics["rmse"] / metrics["rmse_baseline"])
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(preds["age"] - truth)), rel=1e-6)
    # each subject's baseline is the mean age of the subjects outside its outer fold
    for _, fold in preds.groupby("outer"):
        others = ages.drop(fold["patient_id"])
        assert np.allclose(fold["age_baseline"], others.mean())
    assert metrics["rmse_3ch"] == pytest.approx(
        _rmse(preds["age_3ch"].dropna(), ages.reindex(preds.dropna(subset=["age_3ch"])
                                                      ["patient_id"])), rel=1e-6)
    page = (out / "evaluation" / "report.html").read_text()
    assert f"{metrics['rmse']:.2f}" in page and f"{metrics['rmse_baseline']:.2f}" in page
    # cross-conformal intervals: with 8 subjects too few residuals for 90 %: the whole range
    assert metrics["age_interval_n"] == 8 and metrics["age_coverage"] == 1.0
    assert (preds["age_lo"] <= preds["age"]).all() and (preds["age"] <= preds["age_hi"]).all()
    assert "Age intervals" in page
    # OOD: a detector beside each model that had >= 2 training cines; out of fold, each
    # subject scored by its outer fold's models only
    sidecars = sorted(out.glob("cv/*/outer_*/inner_*/run/ood.json"))
    assert sidecars and all((p.parents[1] / "ood_scores.csv").is_file() for p in sidecars)
    record = read_run(out / "predictions")["ood"]
    assert record["n_models"] == len(sidecars) and record["threshold_quantile"] == 0.95
    assert record["feature_layer"] == "input of fc"
    scores = pd.concat([pd.read_csv(p.parents[1] / "ood_scores.csv", dtype={"subject": str})
                        for p in sidecars])
    test = scores[scores["role"] == "test"].groupby("subject")["ratio"].mean()
    assert np.allclose(preds.set_index("patient_id")["ood_score"], test.reindex(
        preds["patient_id"]).to_numpy())
    assert (preds["ood_flag"].astype(bool) == (preds["ood_score"] > 1)).all()
    assert metrics["ood_flagged"] == pytest.approx(preds["ood_flag"].astype(bool).mean())
    assert metrics["ood_n"] == 8 and "Out-of-distribution flag" in page


def test_run_resumes_without_training(cohort: Path, ran: tuple[Path, dict]) -> None:
    out, metrics = ran
    models = sorted(out.glob("cv/*/outer_*/inner_*/run/model.pt"))
    stamps = [p.stat().st_mtime_ns for p in models]
    sidecars = sorted(out.glob("cv/*/outer_*/inner_*/run/ood.json"))
    fitted = [p.stat().st_mtime_ns for p in sidecars]
    again = get_pipeline("age").run(cohort, out, TINY_OPTIONS)
    assert [p.stat().st_mtime_ns for p in models] == stamps and len(models) == 8
    assert [p.stat().st_mtime_ns for p in sidecars] == fitted  # detectors not refitted
    assert again["rmse"] == pytest.approx(metrics["rmse"])


def test_predict_single_checkpoint_on_store_matches_its_unit(ran: tuple[Path, dict],
                                                             tmp_path: Path) -> None:
    out, _ = ran
    unit = out / "cv" / "4ch" / "outer_0" / "inner_0"
    model = unit / "run" / "model.pt"
    pipeline = pipeline_for_model(model)
    assert pipeline.name == "age"
    pipeline.predict(model, out / "store", tmp_path / "p", Options())
    preds = read_predictions(tmp_path / "p").set_index("sample_id")
    store_preds = predict_store(model, out / "store", tta=1)
    store_preds["subject"] = store_preds["sample_id"].str.rsplit("_", n=1).str[0]
    four = store_preds[store_preds["sample_id"].str.endswith("_4ch")].set_index("subject")
    assert np.allclose(preds.loc[four.index, "age_4ch"], four["pred"], atol=1e-5)
    expected = store_preds.groupby("subject")["pred"].mean()
    assert np.allclose(preds.loc[expected.index, "age"], expected, atol=1e-5)
    run = read_run(tmp_path / "p")
    assert run["pipeline"] == "age" and run["checkpoint_hash"]
    labels = pd.read_csv(run["labels"], dtype={"subject": str}).set_index("subject")["age"]
    metrics = pipeline.evaluate(tmp_path / "p", tmp_path / "e", Options(extra={"n_boot": 10}))
    assert metrics["rmse"] == pytest.approx(_rmse(preds["age"], labels.reindex(preds.index)))
    assert metrics["baseline_source"] == "mean of the evaluated ages"


@pytest.mark.slow
def test_predict_cv_ensemble_on_raw_folder_equals_store(cohort: Path, ran: tuple[Path, dict],
                                                        tmp_path: Path) -> None:
    out, _ = ran
    pipeline = pipeline_for_model(out / "cv")
    assert pipeline.name == "age" and pipeline_for_model(out / "cv" / "ensemble") is pipeline
    pipeline.predict(out / "cv", out / "store", tmp_path / "store", Options())
    pipeline.predict(out / "cv", cohort, tmp_path / "raw", Options())
    a = read_predictions(tmp_path / "store").set_index("sample_id")
    b = read_predictions(tmp_path / "raw").set_index("sample_id")
    assert list(a.columns) == list(b.columns) == ["patient_id", "age", "age_3ch", "age_4ch",
                                                  "age_lo", "age_hi", "ood_score", "ood_flag"]
    assert np.allclose(a["ood_score"], b.loc[a.index, "ood_score"], atol=1e-6)
    assert read_run(tmp_path / "raw")["ood"]["n_models"] == len(
        list(out.glob("cv/*/outer_*/inner_*/run/ood.json")))
    assert (a["age_lo"] <= a["age"]).all() and (a["age"] <= a["age_hi"]).all()
    assert np.allclose(a["age"], b.loc[a.index, "age"], atol=1e-4)
    # method "mean": the ensemble is the mean of the views a subject has
    views = a[["age_3ch", "age_4ch"]]
    assert np.allclose(a["age"], views.mean(axis=1), atol=1e-6)
    metrics = pipeline.evaluate(tmp_path / "raw", tmp_path / "e", Options(extra={"n_boot": 10}))
    assert metrics["n"] == 8


@pytest.mark.slow
def test_predict_cv_ensemble_with_onnx_takes_ood_features_from_the_engines(
        ran: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = ran
    pipeline = pipeline_for_model(out / "cv")
    eager = read_predictions(pipeline.predict(out / "cv", out / "store", tmp_path / "eager",
                                              Options())).set_index("sample_id")
    onnx_dir = pipeline.predict(out / "cv", out / "store", tmp_path / "onnx",
                                Options(extra={"engine": "onnx"}))
    onnx = read_predictions(onnx_dir).set_index("sample_id").loc[eager.index]
    a, b = eager["ood_score"].to_numpy(float), onnx["ood_score"].to_numpy(float)
    assert float(np.abs(b - a).max()) / max(1.0, float(np.abs(a).max())) <= TOLERANCE
    assert (onnx["ood_flag"].astype(bool) == eager["ood_flag"].astype(bool)).all()
    assert np.allclose(onnx["age"], eager["age"], atol=TOLERANCE * max(1.0, eager["age"].max()))
    record = read_run(onnx_dir)
    assert record["ood"]["features_from"] == ENGINE_FEATURES
    assert record["ood"]["n_models"] == len(list(out.glob("cv/*/outer_*/inner_*/run/ood.json")))
    # each model behind one engine (exported once), whether it has a detector or not
    assert len(record["engine"]["models"]) == len(list(out.glob("cv/*/outer_*/inner_*/run/"
                                                                 "model.pt")))


@pytest.mark.slow
def test_calibrate_refits_every_unit_detector_identically(ran: tuple[Path, dict],
                                                          tmp_path: Path) -> None:
    out, _ = ran
    sidecars = sorted(out.glob("cv/*/outer_*/inner_*/run/ood.json"))
    before = [p.read_text() for p in sidecars]
    summary = get_pipeline("age").calibrate(out / "cv" / "ensemble", out / "store", tmp_path,
                                            Options())
    assert summary["fitted"] == summary["n_models"] == len(sidecars)
    assert [p.read_text() for p in sidecars] == before  # same models, same data
    assert (tmp_path / "calibration.json").is_file()


def test_unusable_input_raises_typed_errors(ran: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = ran
    pipeline = get_pipeline("age")
    with pytest.raises(InputError, match="no such folder"):
        pipeline.predict(out / "cv", tmp_path / "nothing", tmp_path / "p", Options())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="ages CSV"):
        pipeline.run(tmp_path / "empty", tmp_path / "r", TINY_OPTIONS)
    write_contract(tmp_path / "p2", pd.DataFrame({"sample_id": ["X999"], "age": [50.0]}))
    with pytest.raises(InputError, match="labels"):  # none given, none in run.json
        pipeline.evaluate(tmp_path / "p2", tmp_path / "e", Options())
    with pytest.raises(InputError, match="no subject in common"):
        pipeline.evaluate(tmp_path / "p2", tmp_path / "e",
                          Options(labels=out / "ingest" / "manifest.csv"))


@pytest.mark.slow
def test_demo_learns_age(tmp_path: Path) -> None:
    """The demo cohort and options: the out-of-fold view ensemble beats predicting the
    training mean by the target margin (RMSE <= 0.7 x baseline)."""
    pipeline = get_pipeline("age")
    options = dataclasses.replace(pipeline.demo_options)
    root = pipeline.synth(tmp_path / "data", int(options.n), options.seed)
    metrics = pipeline.run(root, tmp_path, options)
    assert all(t.met(metrics) for t in pipeline.targets), metrics["rmse_ratio"]
    assert metrics["beats_baseline"]
