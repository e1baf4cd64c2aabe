"""CXR predict with ``--engine onnx``: every ensemble member on ONNX Runtime equals eager,
its OOD scores included (from the engines' features output)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cxr_ood import MEMBERS, _ood_folder
from test_cxr_ood import _ensemble as small_ensemble
from test_cxr_predict import make_ensemble
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.infer.contract import read_predictions, read_run
from cinelab.infer.engine_outputs import Engine
from cinelab.infer.engines import TOLERANCE
from cinelab.pipelines.cxr import ood as ood_module
from cinelab.pipelines.cxr.ood import feature_specs, read_member_ood, score_files
from cinelab.pipelines.cxr.predict import load_cxr_model
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.pipelines.registry import Options, get_pipeline


def _relative(found: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(found - reference).max()) / max(1.0, float(np.abs(reference).max()))


@pytest.mark.slow
def test_onnx_members_equal_eager(tmp_path: Path) -> None:
    raw = synth_cxr_cohort(tmp_path / "raw", n=8, size=64, seed=1)
    ens = make_ensemble(tmp_path / "ens", lung=False)
    eager_dir = get_pipeline("cxr").predict(ens, raw / "Test", tmp_path / "eager",
                                            Options(extra={"masks": "files"}))
    result = CliRunner().invoke(app, ["predict", str(ens), str(raw / "Test"), "--out",
                                      str(tmp_path / "onnx"), "--engine", "onnx",
                                      "--option", "masks=files"])
    assert result.exit_code == 0, result.output
    eager, onnx = read_predictions(eager_dir), read_predictions(tmp_path / "onnx")
    assert list(onnx.columns) == list(eager.columns) and len(eager) >= 2
    scores = [c for c in eager.columns if c.startswith("probability")]
    assert len(scores) == 3  # the ensemble's and each member's
    assert _relative(onnx[scores].to_numpy(float), eager[scores].to_numpy(float)) <= TOLERANCE
    pd.testing.assert_frame_equal(onnx.drop(columns=scores), eager.drop(columns=scores))
    engine = read_run(tmp_path / "onnx")["engine"]
    assert engine["name"] == "onnx" and len(engine) == 3  # name + two members
    assert all(v["providers"] == ["CPUExecutionProvider"] for k, v in engine.items()
               if k != "name")
    assert read_run(eager_dir)["engine"] == {"name": "eager"}


@pytest.mark.slow
def test_onnx_ood_comes_from_the_engine_features(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibrated ensemble (temperature + per-member detectors): ``--engine onnx`` exports
    each member with its detector's layer as a second output, so the OOD scores equal the
    eager ones with the same flags, and run.json says where they came from."""
    cohort = synth_cxr_cohort(tmp_path / "cohort", n=80, size=48, seed=0)
    ens = small_ensemble(tmp_path / "ens")
    cxr, masks = get_pipeline("cxr"), {"masks": "none"}
    cxr.calibrate(ens, cohort, tmp_path / "cal", Options(extra=masks))
    ood = read_member_ood(ens)
    assert ood is not None and set(ood.detectors) == set(MEMBERS)
    images = _ood_folder(tmp_path / "mixed")  # echo frames and noise: many flagged
    for radiograph in sorted((cohort / "Test").rglob("*.png"))[:6]:
        if radiograph.parent.name != "masks":
            shutil.copy(radiograph, images / radiograph.name)
    eager_dir = cxr.predict(ens, images, tmp_path / "eager", Options(extra=masks))
    rows: list[int] = []  # images through every engine call: each member sees each once
    run_engine = Engine.outputs
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "outputs", lambda self, x: rows.append(len(x)) or
                      run_engine(self, x))
        patch.setattr(ood_module, "member_features", None)  # no second, eager pass
        result = CliRunner().invoke(app, ["predict", str(ens), str(images), "--out",
                                          str(tmp_path / "onnx"), "--engine", "onnx",
                                          "--option", "masks=none"])
    assert result.exit_code == 0, result.output
    eager, onnx = read_predictions(eager_dir), read_predictions(tmp_path / "onnx")
    assert sum(rows) == len(MEMBERS) * len(eager)
    assert list(onnx.columns) == list(eager.columns)
    assert {"ood_score", "ood_flag", "probability_raw"} <= set(eager.columns)
    scores = eager["ood_score"].to_numpy(float)
    assert np.isfinite(scores).all() and len(scores) >= 40
    assert _relative(onnx["ood_score"].to_numpy(float), scores) <= TOLERANCE
    flags = eager["ood_flag"].astype(str).str.lower().eq("true")
    assert flags.tolist() == onnx["ood_flag"].astype(str).str.lower().eq("true").tolist()
    assert 0 < flags.sum() < len(flags)  # the comparison covers both outcomes
    # the one-pass eager scores equal the detectors applied on their own (`score_files`)
    _, alone = score_files(load_cxr_model(ens), ood, [Path(f) for f in eager["file"]], "none")
    assert np.allclose(alone, scores, rtol=1e-5, atol=1e-6)
    # with TTA the features are those of the un-augmented view
    tta = read_predictions(cxr.predict(ens, images, tmp_path / "tta",
                                       Options(extra={**masks, "tta": 3})))
    assert np.allclose(tta["ood_score"].to_numpy(float), scores, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta["probability"], eager["probability"], rtol=0, atol=1e-7)
    run = read_run(tmp_path / "onnx")
    assert run["engine"]["name"] == "onnx"
    for name, spec in feature_specs(ood).items():
        assert run["engine"][name]["features"]["modules"] == list(spec.modules)
    assert run["ood"]["features"] == "engine" and run["ood"]["engine"] == "onnx"
    assert read_run(eager_dir)["ood"]["features"] == "eager"
