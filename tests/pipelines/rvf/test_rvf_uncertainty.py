"""RVF uncertainty (issue 15): a temperature fitted by `cinelab calibrate` lowers the ECE of
a deliberately over-confident two-stream model (its heads' logits scaled up), predict writes
the calibrated probability beside the raw one with the same decisions, OOD scores and flags,
an ensemble adds member disagreement, and evaluate / report show ECE before and after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cinelab.data.store import PreparedStore
from cinelab.data.streams import stream_normalisation
from cinelab.infer.contract import read_predictions
from cinelab.models import create_model
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.pipelines.rvf.ensemble import member_splits, member_store
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.pipelines.rvf.uncertainty import feature_modules, read_rvf_state
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from cinelab.utils import write_json

SIZE, CLIP, OVERCONFIDENCE = 32, 4, 40.0
KWARGS = {"backbone": "tiny_video", "backbone_kwargs": {"channels": [4, 8]},
          "fusion": "mean_prob"}


def _checkpoint(path: Path, store: PreparedStore, seed: int) -> Path:
    """An untrained two-stream model whose stream logits are scaled by OVERCONFIDENCE."""
    torch.manual_seed(seed)
    model = create_model("two_stream", **KWARGS)
    with torch.no_grad():
        for head in feature_modules(model):
            head.weight.mul_(OVERCONFIDENCE)
            head.bias.mul_(OVERCONFIDENCE)
    mean, std = stream_normalisation(store, store.ids, ("grey", "flow"), ("grey", "flow"))
    spec = InputSpec(task="video_classification", size=SIZE, channels=3, frames=CLIP,
                     period=2, mean=mean, std=std, target="label")
    return save_checkpoint(path, model, {"name": "rvf-test", "model": {
        "name": "two_stream", "kwargs": KWARGS}, "data": {"clips": 2}}, spec,
        {"threshold": 0.5, "threshold_source": "test"})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rvf_unc")
    raw = synth_rvf_cohort(base / "raw", n=12, seed=4, size=40, frames=10)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", base / "ingest")
    prepare_rvf(base / "ingest", base / "store", size=SIZE, workers=1)
    return base / "store"


@pytest.mark.slow
def test_calibrate_lowers_ece_and_predict_adds_the_columns(store: Path,
                                                           tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "run" / "model.pt", PreparedStore(store), 0)
    rvf = get_pipeline("rvf")
    assert rvf.calibrate is not None
    summary = rvf.calibrate(model, store, tmp_path / "cal",
                            Options(split="train", extra={"fit_split": "train"}))
    assert summary["temperature"] > 1.0  # over-confident: softened
    assert summary["ece_after"] < summary["ece_before"]
    state = read_rvf_state(model)
    assert state.calibrator is not None and state.ood is not None
    out = rvf.predict(model.parent, store, tmp_path / "pred", Options(split="train"))
    table = read_predictions(out)
    assert {"probability", "probability_raw", "ood_score", "ood_flag"} <= set(table.columns)
    assert (table["prediction"] == (table["probability_raw"] >= 0.5)).all()
    assert (table["prediction"] == (table["probability"] >= table["threshold"])).all()
    assert np.isfinite(table["ood_score"]).all()
    metrics = rvf.evaluate(out, tmp_path / "eval", Options(extra={"n_boot": 10}))
    assert metrics["ece"] < metrics["ece_raw"]
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 0
    page = rvf.report(tmp_path / "eval", None).read_text()
    assert "Calibration and uncertainty" in page


@pytest.mark.slow
def test_ensemble_calibration_disagreement_and_ood(store: Path, tmp_path: Path) -> None:
    ens = tmp_path / "ens"
    manifest = PreparedStore(store).manifest
    members = []
    for k, split in enumerate(member_splits(manifest, 2, seed=0, val_fraction=0.34)):
        view = member_store(store, split, ens / "members" / str(k) / "store")
        _checkpoint(ens / "members" / str(k) / "run" / "model.pt", PreparedStore(view), k)
        members.append(f"members/{k}/run/model.pt")
    write_json(ens / "ensemble.json", {"pipeline": "rvf", "members": members,
                                       "mode": "repeated", "threshold": 0.5,
                                       "threshold_source": "test", "store": str(store)})
    rvf = get_pipeline("rvf")
    summary = rvf.calibrate(ens, store, tmp_path / "cal", Options())
    assert summary["temperature"] > 1.0 and len(summary["ood_thresholds"]) == 2
    assert read_rvf_state(ens).calibrator is not None
    out = rvf.predict(ens, store, tmp_path / "pred", Options(split="test"))
    table = read_predictions(out)
    assert {"probability_raw", "disagreement", "ood_score", "ood_flag"} <= set(table.columns)
    assert (table["disagreement"] >= 0).all() and table["disagreement"].max() > 0
    assert (table["prediction"] == (table["probability_raw"] >= 0.5)).all()
