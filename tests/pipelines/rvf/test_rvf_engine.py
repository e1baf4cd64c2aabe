"""RVF predict with ``--engine onnx``: the two-stream model (grey and flow streams) on ONNX
Runtime gives eager's probabilities, per-stream probabilities and OOD scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_rvf_uncertainty import _checkpoint
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.store import PreparedStore
from cinelab.infer.contract import read_predictions, read_run
from cinelab.infer.engines import TOLERANCE
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.pipelines.rvf.uncertainty import read_rvf_state

SIZE = 32
NUMBERS = ["probability", "probability_raw", "p_grey", "p_flow", "ood_score"]


def _relative(found: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(found - reference).max()) / max(1.0, float(np.abs(reference).max()))


@pytest.mark.slow
def test_onnx_predict_equals_eager(tmp_path: Path) -> None:
    raw = synth_rvf_cohort(tmp_path / "raw", n=8, seed=4, size=40, frames=10)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", tmp_path / "ingest")
    prepare_rvf(tmp_path / "ingest", tmp_path / "store", size=SIZE, workers=1)
    store = tmp_path / "store"
    model = _checkpoint(tmp_path / "run" / "model.pt", PreparedStore(store), 0)
    rvf = get_pipeline("rvf")
    rvf.calibrate(model, store, tmp_path / "cal",  # a temperature and an OOD detector
                  Options(split="train", extra={"fit_split": "train"}))
    threshold = read_rvf_state(model).ood.threshold
    eager_dir = rvf.predict(model.parent, store, tmp_path / "eager", Options())
    result = CliRunner().invoke(app, ["predict", str(model.parent), str(store), "--out",
                                      str(tmp_path / "onnx"), "--engine", "onnx"])
    assert result.exit_code == 0, result.output
    eager, onnx = read_predictions(eager_dir), read_predictions(tmp_path / "onnx")
    assert list(onnx.columns) == list(eager.columns) and len(eager) >= 8
    assert set(NUMBERS) <= set(eager.columns)
    a, b = eager[NUMBERS].to_numpy(float), onnx[NUMBERS].to_numpy(float)
    assert np.isfinite(a).all() and _relative(b, a) <= TOLERANCE
    away = (eager["ood_score"] - threshold).abs() > 1e-3  # no flag decided by rounding
    assert away.sum() >= len(eager) - 1
    flags = ["prediction", "ood_flag"]
    pd.testing.assert_frame_equal(onnx.loc[away, flags], eager.loc[away, flags])
    others = [c for c in eager.columns if c not in NUMBERS + flags]
    pd.testing.assert_frame_equal(onnx[others], eager[others])
    clips = [pd.read_csv(d / "clips.csv") for d in (eager_dir, tmp_path / "onnx")]
    assert _relative(clips[1]["probability"].to_numpy(), clips[0]["probability"].to_numpy()) \
        <= TOLERANCE
    engine = read_run(tmp_path / "onnx")["engine"]
    assert engine["name"] == "onnx" and engine["providers"] == ["CPUExecutionProvider"]
    assert read_run(eager_dir)["engine"] == {"name": "eager"}
