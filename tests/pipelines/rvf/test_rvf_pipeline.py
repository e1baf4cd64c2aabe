"""The rvf Pipeline through its registered entry points: layout detection and ingest, predict
writing the contract, evaluate against hand-computed metrics, explain ranked by the contract,
report, and (slow) the whole resumable chain learning the synthetic cohort (AUC >= 0.8)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.data.store import PreparedStore
from cinelab.data.streams import stream_normalisation
from cinelab.errors import InputError
from cinelab.formats.ingest import detect_layout, ingest
from cinelab.infer.contract import read_predictions, read_run
from cinelab.models import create_model
from cinelab.pipelines.registry import Options, get_pipeline, pipeline_for_model
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.pipelines.rvf.uncertainty import read_rvf_state
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint
from cinelab.utils import read_json, write_csv, write_json

SIZE, FRAMES, CLIP = 32, 12, 4
KWARGS = {"backbone": "tiny_video", "backbone_kwargs": {"channels": [4, 8]},
          "fusion": "mean_prob"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny cohort, its prepared store and an untrained two-stream checkpoint."""
    base = tmp_path_factory.mktemp("rvf_pipeline")
    raw = synth_rvf_cohort(base / "raw", n=8, seed=4, size=48, frames=FRAMES)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", base / "ingest")
    prepare_rvf(base / "ingest", base / "store", size=SIZE, workers=1)
    store = PreparedStore(base / "store")
    torch.manual_seed(0)
    model = create_model("two_stream", **KWARGS)
    mean, std = stream_normalisation(store, store.ids, ("grey", "flow"), ("grey", "flow"))
    spec = InputSpec(task="video_classification", size=SIZE, channels=3, frames=CLIP,
                     period=2, mean=mean, std=std, target="label")
    save_checkpoint(base / "run" / "model.pt", model,
                    {"name": "rvf-test", "model": {"name": "two_stream", "kwargs": KWARGS},
                     "data": {"clips": 3}}, spec)
    return {"raw": raw, "store": base / "store", "model": base / "run" / "model.pt",
            "base": base}


def test_layout_is_detected_only_with_its_class_csv(tiny: dict[str, Path],
                                                    tmp_path: Path) -> None:
    assert detect_layout(tiny["raw"]) == "rvf"
    plain = tmp_path / "plain"
    shutil.copytree(tiny["raw"], plain, ignore=shutil.ignore_patterns("*.csv", "*.json"))
    assert detect_layout(plain) == "dicom"  # a DICOM folder without the class CSV
    result = ingest(tiny["raw"], "rvf", options={"out": tmp_path / "ingest"})
    truth = pd.read_csv(tiny["raw"] / "truth.csv", dtype=str)
    classes = pd.read_csv(tiny["raw"] / "classes.csv", dtype=str)
    two = classes.loc[classes["id"].duplicated(keep=False), "id"]
    n_expected = int(truth["study_id"].isin(set(classes["id"]) - set(two)).sum())
    assert len(result.manifest) == n_expected
    assert set(result.manifest["label"]) == {0, 1}
    by_class = result.manifest.groupby("class")["label"].first().to_dict()
    assert by_class == {"noRVF": 0, "RVF": 1}
    assert all(Path(p).parent == tmp_path / "ingest" / "sources"
               for p in result.manifest["path"])  # de-identified copies, not raw files
    no_splits = tmp_path / "no_splits"
    shutil.copytree(tiny["raw"], no_splits, ignore=shutil.ignore_patterns("splits.csv"))
    assert detect_layout(no_splits) == "rvf"
    with pytest.raises(InputError, match="split CSV"):
        ingest(no_splits, "rvf", options={"out": tmp_path / "ingest2"})
    with pytest.raises(InputError, match="de-identified"):  # raw paths may name the patient
        ingest(tiny["raw"], "rvf")


def test_predict_writes_the_contract(tiny: dict[str, Path], tmp_path: Path) -> None:
    pipeline = pipeline_for_model(tiny["model"])
    assert pipeline.name == "rvf" and pipeline_for_model(tiny["model"].parent) is pipeline
    out = pipeline.predict(tiny["model"], tiny["store"], tmp_path / "pred",
                           Options(split="train", extra={"threshold": 0.45}))
    table = read_predictions(out)
    store = PreparedStore(tiny["store"])
    assert sorted(table["sample_id"]) == sorted(store.split_ids("train"))
    clips = pd.read_csv(out / "clips.csv", dtype={"sample_id": str})
    assert (clips.groupby("sample_id").size() == 3).all()  # the recipe's data.clips
    means = clips.groupby("sample_id")[["probability", "p_grey", "p_flow"]].mean()
    np.testing.assert_allclose(table.set_index("sample_id")[means.columns].loc[means.index],
                               means, rtol=1e-6)
    # mean_prob fusion: each clip's fused probability is the mean of its streams'
    np.testing.assert_allclose(clips["probability"], (clips["p_grey"] + clips["p_flow"]) / 2,
                               atol=1e-5)
    assert (table["threshold"] == 0.45).all()
    assert (table["prediction"] == (table["probability"] >= 0.45).astype(int)).all()
    run = read_run(out)
    assert run["pipeline"] == "rvf" and run["task"] == "video_classification"
    assert run["store"] == str(tiny["store"]) and run["clips"] == 3 and run["checkpoint_hash"]
    again = pipeline.predict(tiny["model"], tiny["store"], tmp_path / "again",
                             Options(split="train", extra={"threshold": 0.45}))
    pd.testing.assert_frame_equal(read_predictions(again), table)  # seeded clips
    with pytest.raises(InputError, match="threshold"):
        pipeline.predict(tiny["model"], tiny["store"], tmp_path / "bad",
                         Options(extra={"threshold": 1.5}))


def _contract(folder: Path, probs: list[float], labels: list[int],
              patients: list[str]) -> Path:
    ids = [f"{p}_{i}" for i, p in enumerate(patients)]
    write_csv(pd.DataFrame({"sample_id": ids, "patient_id": patients, "probability": probs,
                            "prediction": [int(p >= 0.5) for p in probs], "threshold": 0.5}),
              folder / "predictions.csv")
    write_csv(pd.DataFrame({"sample_id": ids, "label": labels}), folder / "labels.csv")
    write_json(folder / "run.json", {"pipeline": "rvf"})
    return folder


def test_evaluate_matches_hand_computed_metrics(tmp_path: Path) -> None:
    folder = _contract(tmp_path, [0.1, 0.4, 0.6, 0.35, 0.8, 0.9, 0.2, 0.7],
                       [0, 0, 0, 1, 1, 1, 0, 1], ["a", "b", "c", "d", "e", "f", "g", "h"])
    pipeline = get_pipeline("rvf")
    metrics = pipeline.evaluate(folder, tmp_path / "eval",
                                Options(labels=folder / "labels.csv", extra={"n_boot": 50}))
    # positives 0.35, 0.8, 0.9, 0.7 vs negatives 0.1, 0.4, 0.6, 0.2: 14 of 16 pairs won
    assert metrics["auc"] == pytest.approx(14 / 16)
    assert metrics["sensitivity"] == pytest.approx(3 / 4)  # 0.35 is missed at 0.5
    assert metrics["specificity"] == pytest.approx(3 / 4)  # 0.6 is a false positive
    assert metrics["auc_ci_low"] <= 14 / 16 <= metrics["auc_ci_high"]
    written = read_json(tmp_path / "eval" / "metrics.json")
    assert written["pipeline"] == "rvf" and written["auc"] == pytest.approx(14 / 16)
    assert pipeline.targets[0].met(written) is True
    html = pipeline.report(tmp_path / "eval", None).read_text()
    assert "0.875" in html  # the AUC as the report prints it
    with pytest.raises(InputError, match="labels"):
        pipeline.evaluate(folder, tmp_path / "none", Options())


def test_patient_level_averages_videos(tmp_path: Path) -> None:
    folder = _contract(tmp_path, [0.2, 0.6, 0.1, 0.3, 0.9, 0.8],
                       [0, 0, 0, 0, 1, 1], ["a", "a", "b", "c", "d", "e"])
    metrics = get_pipeline("rvf").evaluate(folder, tmp_path / "eval", Options(
        labels=folder / "labels.csv", extra={"n_boot": 20}))
    patients = pd.read_csv(tmp_path / "eval" / "patients.csv", dtype={"patient_id": str})
    assert patients.set_index("patient_id").loc["a", "probability"] == pytest.approx(0.4)
    assert metrics["patient"]["specificity"]["value"] == pytest.approx(1.0)  # a: 0.4 < 0.5
    assert metrics["specificity"] == pytest.approx(3 / 4)  # per video, a_1 (0.6) is wrong


def test_explain_ranks_by_the_contract(tiny: dict[str, Path], tmp_path: Path) -> None:
    pipeline = get_pipeline("rvf")
    pred = pipeline.predict(tiny["model"], tiny["store"], tmp_path / "pred", Options())
    table = read_predictions(pred)
    expected = table.loc[(table["probability"] - 0.5).abs().sort_values(
        ascending=False, kind="mergesort").index[:2], "sample_id"].tolist()
    out = pipeline.explain(tiny["model"], tiny["store"], tmp_path / "sal",
                           Options(extra={"top": 2, "predictions": pred}))
    index = pd.read_csv(out / "saliency.csv", dtype={"sample_id": str})
    assert index["sample_id"].drop_duplicates().tolist() == expected
    assert set(index["stream"]) == {"grey", "flow"}
    assert all((out / name).stat().st_size > 0 for name in index["strip"])


@pytest.mark.slow
def test_run_learns_the_synthetic_cohort_and_resumes(tmp_path: Path) -> None:
    """The demo's chain on its synthetic cohort (about 2 minutes on 2 cores)."""
    pipeline = get_pipeline("rvf")
    root = pipeline.synth(tmp_path / "data", pipeline.demo_options.n, 0)
    options = pipeline.demo_options
    metrics = pipeline.run(root, tmp_path / "out", options)
    assert metrics["pipeline"] == "rvf" and metrics["n"] >= 12
    assert metrics["auc"] >= 0.8 and all(t.met(metrics) for t in pipeline.targets)
    assert metrics["specificity"] >= 0.6 and metrics["sensitivity"] >= 0.6
    model = tmp_path / "out" / "run" / "model.pt"
    recorded = load_checkpoint(model).info["extra"]  # threshold chosen on validation
    calibrator = read_rvf_state(model).calibrator  # the run calibrates on validation too
    assert calibrator is not None and metrics["calibrated"] is True
    assert calibrator.apply([recorded["threshold"]])[0] == pytest.approx(metrics["threshold"])
    assert metrics["threshold_source"] == recorded["threshold_source"] == \
        "Youden's J on the validation videos"
    stamp = model.stat().st_mtime_ns
    started = time.time()
    again = pipeline.run(root, tmp_path / "out", options)
    assert model.stat().st_mtime_ns == stamp and time.time() - started < 30
    assert again["auc"] == metrics["auc"]
    html = Path(metrics["report"]).read_text()
    assert "Guided backpropagation" in html and "Streams" in html


def test_predict_a_plain_dicom_folder_pseudonymised(tiny: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """New patients to score: DICOMs only, no CSVs; ids and outputs carry no PHI."""
    plain = tmp_path / "plain"
    shutil.copytree(tiny["raw"], plain, ignore=shutil.ignore_patterns("*.csv", "*.json"))
    out = get_pipeline("rvf").predict(tiny["model"], plain, tmp_path / "pred",
                                      Options(extra={"workers": 1}))
    table = read_predictions(out)
    truth = pd.read_csv(tiny["raw"] / "truth.csv", dtype=str, keep_default_na=False)
    assert len(table) == int((truth["study_id"] != "").sum())  # all but the no-PatientID one
    planted = read_json(tiny["raw"] / "phi_planted.json")
    needles = [v.encode() for v in planted["values"] + planted["study_ids"] if v]
    for path in (p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes() + str(path.relative_to(out)).encode()
        assert not [n for n in needles if n in data], path
    assert table["probability"].between(0, 1).all() and table["split"].isna().all()
