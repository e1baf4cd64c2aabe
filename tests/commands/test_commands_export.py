"""`cinelab export`: the features output is chosen (auto / none / a module) and recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.infer.engines import TOLERANCE, load_engine, output_difference, read_sidecar
from cinelab.infer.ood import penultimate_features
from cinelab.models import create_model
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image classifier (resnet10t, 32 px)."""
    torch.manual_seed(0)
    kwargs = {"num_outputs": 2}
    return save_checkpoint(tmp_path_factory.mktemp("export") / "model.pt",
                           create_model("resnet10t", **kwargs),
                           {"model": {"name": "resnet10t", "kwargs": kwargs}},
                           InputSpec("image_classification", 32))


def _export(checkpoint: Path, out: Path, *options: str) -> str:
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_default_is_the_penultimate_features(checkpoint: Path, tmp_path: Path) -> None:
    output = _export(checkpoint, tmp_path / "m.onnx")
    side = read_sidecar(tmp_path / "m.onnx")
    assert side["output_names"] == ["output", "features"]
    assert side["features"]["modules"] == [""] and side["features"]["dim"] == 512
    assert "outputs output, features" in output and "<penultimate> (input)" in output
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    reference = penultimate_features(load_checkpoint(checkpoint).model, x)[0]
    assert output_difference(load_engine(tmp_path / "m.onnx").predict(x)[1],
                             reference) <= TOLERANCE


@pytest.mark.slow
def test_named_module_and_none(checkpoint: Path, tmp_path: Path) -> None:
    _export(checkpoint, tmp_path / "l4.onnx", "--features", "layer4", "--pool", "meanstd")
    found = read_sidecar(tmp_path / "l4.onnx")["features"]
    assert (found["modules"], found["pool"], found["dim"]) == (["layer4"], "meanstd", 1024)
    output = _export(checkpoint, tmp_path / "bare.ts", "--format", "torchscript",
                     "--features", "none")
    side = read_sidecar(tmp_path / "bare.ts")
    assert side["features"] is None and side["output_names"] == ["output"]
    assert "features:" not in output


def test_unknown_module_or_pool_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    for options, message in ((["--features", "layer9"], "features: expected a module of "
                              "ResNet, found 'layer9'"),
                             (["--features", "layer4", "--pool", "max"],
                              "pool: expected one of mean, meanstd, found 'max'")):
        result = runner.invoke(app, ["export", str(checkpoint), "--out",
                                     str(tmp_path / "x.onnx"), *options])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert message in lines[0]
    assert not list(tmp_path.iterdir())
