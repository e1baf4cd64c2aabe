"""Age predict with ``--engine onnx``: the fold/view 3D CNNs on ONNX Runtime equal eager, and
with an OOD detector beside the model its features come from the engine's ``features``
output (no eager copy of the model runs) and give the eager scores and flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.store import PreparedStore
from cinelab.infer.contract import read_predictions, read_run
from cinelab.infer.engines import TOLERANCE
from cinelab.infer.ood import MahalanobisDetector
from cinelab.models import create_model
from cinelab.pipelines.age import ood
from cinelab.pipelines.age.ood import EAGER_FEATURES, ENGINE_FEATURES, write_unit_ood
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint
from cinelab.utils import file_hash

KWARGS = {"in_channels": 1, "num_outputs": 1, "channels": [4, 8]}


@pytest.mark.slow
def test_onnx_predict_equals_eager(tmp_path: Path) -> None:
    cohort = synth_cmr_lax_cohort(tmp_path / "cohort", n=4, seed=1, size=32).root
    torch.manual_seed(0)
    spec = InputSpec("cine_regression", 16, channels=1, frames=4, period=1, mean=[60.0],
                     std=[40.0], target="age")
    model = save_checkpoint(tmp_path / "model.pt", create_model("tiny_video", **KWARGS),
                            {"model": {"name": "tiny_video", "kwargs": KWARGS}}, spec)
    eager_dir = get_pipeline("age").predict(model, cohort, tmp_path / "eager", Options())
    result = CliRunner().invoke(app, ["predict", str(model), str(cohort), "--out",
                                      str(tmp_path / "onnx"), "--engine", "onnx"])
    assert result.exit_code == 0, result.output
    eager, onnx = read_predictions(eager_dir), read_predictions(tmp_path / "onnx")
    assert list(onnx.columns) == list(eager.columns) and len(eager) == 4
    ages = [c for c in eager.columns if c.startswith("age")]
    assert ages == ["age", "age_3ch", "age_4ch"]
    a, b = eager[ages].to_numpy(float), onnx[ages].to_numpy(float)
    assert np.isfinite(a[:, 0]).all() and (np.isnan(a) == np.isnan(b)).all()  # a view missing
    assert float(np.nanmax(np.abs(b - a))) / max(1.0, float(np.nanmax(np.abs(a)))) <= TOLERANCE
    pd.testing.assert_frame_equal(onnx.drop(columns=ages), eager.drop(columns=ages))
    engine = read_run(tmp_path / "onnx")["engine"]
    assert engine["name"] == "onnx"
    assert engine["models"][str(model.resolve())]["providers"] == ["CPUExecutionProvider"]
    assert read_run(eager_dir)["engine"] == {"name": "eager"}
    assert read_run(eager_dir)["ood"] is None  # no detector yet


@pytest.mark.slow
def test_onnx_ood_scores_come_from_the_engine_features(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = synth_cmr_lax_cohort(tmp_path / "cohort", n=6, seed=2, size=32).root
    torch.manual_seed(1)
    spec = InputSpec("cine_regression", 16, channels=1, frames=4, period=1, mean=[60.0],
                     std=[40.0], target="age")
    model = save_checkpoint(tmp_path / "m" / "model.pt", create_model("tiny_video", **KWARGS),
                            {"model": {"name": "tiny_video", "kwargs": KWARGS}}, spec)
    pipeline = get_pipeline("age")
    store = PreparedStore(pipeline.predict(model, cohort, tmp_path / "prep", Options())
                          / "store")
    feats = ood.cine_features(load_checkpoint(model), store, store.ids)
    detector = MahalanobisDetector.fit(feats)
    scores = np.sort(detector.score(feats))
    detector.threshold = float(scores[len(scores) // 2 - 1:len(scores) // 2 + 1].mean())
    detector.info.update(feature_layer="input of fc", model_hash=file_hash(model))
    write_unit_ood(model, detector)
    eager = read_predictions(pipeline.predict(model, store.root, tmp_path / "eager", Options()))

    def no_eager_copy(*_args: object, **_kw: object) -> None:
        raise AssertionError("the OOD features must come from the engine")

    monkeypatch.setattr(ood, "load_checkpoint", no_eager_copy)
    onnx_dir = pipeline.predict(model, store.root, tmp_path / "onnx",
                                Options(extra={"engine": "onnx"}))
    onnx = read_predictions(onnx_dir)
    a, b = eager["ood_score"].to_numpy(float), onnx["ood_score"].to_numpy(float)
    assert np.isfinite(a).all() and 0 < eager["ood_flag"].astype(bool).sum() < len(eager)
    assert float(np.abs(b - a).max()) / max(1.0, float(np.abs(a).max())) <= TOLERANCE
    assert onnx["ood_flag"].astype(bool).tolist() == eager["ood_flag"].astype(bool).tolist()
    ages = [c for c in eager.columns if c.startswith("age")]
    a, b = eager[ages].to_numpy(float), onnx[ages].to_numpy(float)
    assert float(np.nanmax(np.abs(b - a))) / max(1.0, float(np.nanmax(np.abs(a)))) <= TOLERANCE
    assert read_run(onnx_dir)["ood"]["features_from"] == ENGINE_FEATURES
    assert read_run(tmp_path / "eager")["ood"]["features_from"] == EAGER_FEATURES
    assert read_run(onnx_dir)["ood"]["feature_layer"] == "input of fc"
