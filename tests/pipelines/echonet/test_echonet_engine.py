"""EchoNet predict on another execution engine (ONNX Runtime) equals eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.errors import InputError
from cinelab.infer.contract import read_predictions, read_run
from cinelab.infer.engines import TOLERANCE, export_checkpoint, sidecar_path
from cinelab.infer.ood import MahalanobisDetector, penultimate_features
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.io.video import write_video
from cinelab.models.registry import create_model
from cinelab.pipelines.echonet.predict import predict
from cinelab.train.checkpoint import (
    InputSpec,
    load_checkpoint,
    save_checkpoint,
    update_checkpoint_extra,
)
from cinelab.utils import read_json, write_json

SIZE, CLIP, PERIOD = 32, 8, 2
MEAN, STD = [30.0] * 3, [40.0] * 3
EF_COLUMNS = ["ef", "ef_all_clips", "ef_one_clip"]
MASK_AGREEMENT = 0.999  # pixels whose logit sits at the threshold may flip between engines

runner = CliRunner()


def _save(path: Path, name: str, kwargs: dict, spec: InputSpec) -> Path:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    return save_checkpoint(path, model, {"model": {"name": name, "kwargs": kwargs}}, spec)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a tiny EF model (ef/) and a tiny segmentation model (seg/)."""
    root = tmp_path_factory.mktemp("engine") / "run"
    _save(root / "ef" / "model.pt", "tiny_video", {"in_channels": 3, "channels": [4, 8]},
          InputSpec("video", SIZE, 3, CLIP, PERIOD, MEAN, STD, "EF"))
    _save(root / "seg" / "model.pt", "unet_small",
          {"in_channels": 3, "out_channels": 1, "channels": [4, 8, 16, 32]},
          InputSpec("segmentation", SIZE, 3, None, None, MEAN, STD))
    return root


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One noise video of 30 frames."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("videos") / "a.avi"
    write_video(path, rng.integers(0, 256, (30, 40, 48, 3), dtype=np.uint8), 30)
    return path


def _relative(found: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(found - reference).max()) / max(1.0, float(np.abs(reference).max()))


def _masks(out: Path) -> np.ndarray:
    with np.load(out / "masks" / "a.npz") as data:
        return data["mask"]


def test_onnx_predict_equals_eager(run_dir: Path, video: Path, tmp_path: Path) -> None:
    eager = predict(run_dir, video, tmp_path / "eager", batch_size=4)
    onnx = predict(run_dir, video, tmp_path / "onnx", batch_size=4, engine="onnx")
    a, b = (pd.read_csv(p / "predictions.csv") for p in (eager, onnx))
    assert np.isfinite(a[EF_COLUMNS].to_numpy()).all()
    assert _relative(b[EF_COLUMNS].to_numpy(), a[EF_COLUMNS].to_numpy()) <= TOLERANCE
    clips = [pd.read_csv(p / "clips.csv")["ef"].to_numpy() for p in (eager, onnx)]
    assert len(clips[0]) > 1 and _relative(clips[1], clips[0]) <= TOLERANCE
    assert (_masks(eager) == _masks(onnx)).mean() >= MASK_AGREEMENT
    record = read_run(onnx)["engine"]
    assert record["name"] == "onnx"
    assert record["ef"]["providers"] == record["seg"]["providers"] == ["CPUExecutionProvider"]
    assert read_run(eager)["engine"] == {"name": "eager"}


def test_engine_flag_on_the_command_line(run_dir: Path, video: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = runner.invoke(app, ["predict", str(run_dir), str(video), "--out", str(out),
                                 "--engine", "onnx", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert read_run(out)["engine"]["name"] == "onnx"
    result = runner.invoke(app, ["predict", str(run_dir), str(video), "--out",
                                 str(tmp_path / "bad"), "--option", "engine=tensorrt"])
    assert result.exit_code != 0 and "engine" in result.output
    result = runner.invoke(app, ["predict", str(run_dir), str(video), "--out",
                                 str(tmp_path / "trt"), "--engine", "tensorrt"])
    assert result.exit_code != 0 and "--engine" in result.output


def test_unknown_engine_is_refused(run_dir: Path, video: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="engine"):
        predict(run_dir, video, tmp_path, engine="tensorrt")


@pytest.fixture(scope="module")
def ood_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder with an OOD detector in the EF checkpoint, fitted on its penultimate
    features of noise clips; its threshold halfway between two of the video's scores."""
    root = tmp_path_factory.mktemp("ood") / "run"
    for part in ("ef", "seg"):
        (root / part).mkdir(parents=True)
        (root / part / "model.pt").write_bytes((run_dir / part / "model.pt").read_bytes())
    model = load_checkpoint(root / "ef" / "model.pt").model
    clips = torch.randn(12, 3, CLIP, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    detector = MahalanobisDetector.fit(penultimate_features(model, clips)[0])
    detector.threshold = 1.0
    update_checkpoint_extra(root / "ef" / "model.pt", UncertaintyState(ood=detector).to_extra())
    return root


def _ood(out: Path) -> pd.DataFrame:
    return read_predictions(out)[["sample_id", "ood_score", "ood_flag"]]


@pytest.mark.slow
def test_onnx_ood_score_equals_eager(ood_run: Path, video: Path, tmp_path: Path) -> None:
    eager = _ood(predict(ood_run, video, tmp_path / "eager", batch_size=4))
    onnx_dir = predict(ood_run, video, tmp_path / "onnx", batch_size=4, engine="onnx")
    onnx = _ood(onnx_dir)
    score = float(eager["ood_score"].iloc[0])
    assert np.isfinite(score) and abs(score - 1.0) > 1e-3  # not at the threshold
    assert _relative(onnx["ood_score"].to_numpy(), eager["ood_score"].to_numpy()) <= TOLERANCE
    assert onnx["ood_flag"].tolist() == eager["ood_flag"].tolist() == [score > 1.0]
    record = read_run(onnx_dir)["uncertainty"]
    assert record["ood"] == "mahalanobis" and "ood_unavailable" not in record


@pytest.mark.slow
def test_exported_file_beside_is_reused_and_old_ones_lose_ood(ood_run: Path, video: Path,
                                                              tmp_path: Path) -> None:
    ckpt = ood_run / "ef" / "model.pt"
    exported = export_checkpoint(ckpt, ckpt.with_suffix(".onnx"))
    try:
        out = predict(ood_run, video, tmp_path / "new", batch_size=4, engine="onnx")
        assert read_run(out)["engine"]["ef"]["file"] == str(exported)
        assert np.isfinite(_ood(out)["ood_score"]).all()
        export_checkpoint(ckpt, exported, features=None)  # as written before features
        side = read_json(sidecar_path(exported))
        write_json(sidecar_path(exported), {k: v for k, v in side.items()
                                            if k not in ("features", "output_names")})
        out = predict(ood_run, video, tmp_path / "old", batch_size=4, engine="onnx")
        assert read_run(out)["engine"]["ef"]["file"] == str(exported)
        assert "ood_score" not in read_predictions(out).columns
        record = read_run(out)["uncertainty"]
        assert record["ood"] is None and "export it again" in record["ood_unavailable"]
    finally:
        exported.unlink()
        sidecar_path(exported).unlink()
