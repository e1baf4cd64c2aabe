"""Execution engines and export: ONNX Runtime and TorchScript equal eager for every task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.streams import model_streams
from cinelab.errors import InputError
from cinelab.infer.engine_outputs import FeatureSpec
from cinelab.infer.engines import (
    DEFAULT_OPSET,
    SIDECAR_FORMAT,
    TOLERANCE,
    EngineCache,
    engine_checkpoint,
    export_checkpoint,
    input_shape,
    load_engine,
    output_difference,
    read_sidecar,
    sidecar_path,
)
from cinelab.infer.ood import MahalanobisDetector, capture_features, penultimate_features
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.models import create_model
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint
from cinelab.utils import file_hash, read_json, write_json

runner = CliRunner()

# task -> (model name, kwargs, input spec): one tiny model per task and model family
CASES = {
    "segmentation": ("unet_small", {"out_channels": 2}, InputSpec("segmentation", 32)),
    "video_regression": ("tiny_video", {}, InputSpec("video_regression", 32, frames=4,
                                                     period=2)),
    "regression": ("resnet3d_10", {}, InputSpec("regression", 32, frames=4)),
    "cine_regression": ("tiny_video", {"in_channels": 1}, InputSpec("cine_regression", 32,
                                                                    channels=1, frames=4,
                                                                    mean=[0.0], std=[1.0])),
    "video_classification": ("two_stream", {"fusion": "mean_prob"},
                             InputSpec("video_classification", 32, frames=4)),
    "image_classification": ("resnet10t", {"num_outputs": 3},
                             InputSpec("image_classification", 32)),
    "image_segmentation": ("unet_small", {"in_channels": 1, "out_channels": 4},
                           InputSpec("image_segmentation", 32, channels=1, mean=[0.0],
                                     std=[1.0])),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random-weight checkpoint per task."""
    root = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    out = {}
    for task, (name, kwargs, spec) in CASES.items():
        model = create_model(name, **kwargs)
        out[task] = save_checkpoint(root / f"{task}.pt", model,
                                    {"model": {"name": name, "kwargs": kwargs}}, spec)
    return out


def _batch(path: Path, batch: int = 3) -> torch.Tensor:
    shape = input_shape(load_checkpoint(path), batch)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(CASES))
def test_onnx_engine_equals_eager(checkpoints: dict[str, Path], task: str) -> None:
    x = _batch(checkpoints[task])  # batch 3: export traced batch 1, so the axis is dynamic
    eager = load_engine(checkpoints[task], "eager")(x)
    onnx = load_engine(checkpoints[task], "onnx")
    assert onnx.info["providers"] == ["CPUExecutionProvider"]
    out = onnx(x)
    assert out.shape == eager.shape and out.dtype == torch.float32
    assert output_difference(out, eager) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit")
@pytest.mark.parametrize("task", list(CASES))
def test_torchscript_export_reloads_and_matches(checkpoints: dict[str, Path], task: str,
                                                tmp_path: Path) -> None:
    ckpt = checkpoints[task]
    written = export_checkpoint(ckpt, tmp_path / "model.ts", "torchscript")
    x = _batch(ckpt, 2)
    reloaded = torch.jit.load(str(written))
    side = read_sidecar(written)
    with torch.no_grad():
        found = reloaded(x)
        eager, features = load_engine(ckpt).predict(x)
        if side["features"] is not None:  # (prediction, features)
            assert output_difference(found[1], features) <= TOLERANCE
            found = found[0]
        assert output_difference(found, eager) <= TOLERANCE
    assert side["export_format"] == "torchscript" and side["opset"] is None
    assert side["checkpoint_sha256"] == file_hash(ckpt)
    assert side["input_spec"] == CASES[task][2].to_dict()
    assert side["example_shape"] == list(input_shape(load_checkpoint(ckpt)))


@pytest.mark.slow
def test_onnx_export_file_and_sidecar(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    ckpt = checkpoints["video_regression"]
    written = export_checkpoint(ckpt, tmp_path / "ef.onnx", "onnx")
    side = read_sidecar(written)
    assert sidecar_path(written) == tmp_path / "ef.onnx.json"
    assert side["format"] == SIDECAR_FORMAT and side["opset"] == DEFAULT_OPSET
    assert side["dynamic_axes"] == {"input": {"0": "batch"}, "output": {"0": "batch"},
                                    "features": {"0": "batch"}}
    assert side["output_names"] == ["output", "features"]
    assert side["features"]["modules"] == [""] and side["features"]["dim"] == 128
    assert side["example_shape"] == [1, 3, 4, 32, 32]
    assert side["input_dims"] == ["batch", "channels", "frames", "height", "width"]
    assert side["checkpoint_sha256"] == file_hash(ckpt) and side["model"] == "tiny_video"
    assert side["max_relative_difference_vs_eager"] <= TOLERANCE
    engine = load_engine(written)  # the exported file runs without the checkpoint
    assert engine.input_spec == CASES["video_regression"][2]
    x = _batch(ckpt, 5)
    assert output_difference(engine(x), load_engine(ckpt)(x)) <= TOLERANCE


def test_engine_stands_in_for_a_module(checkpoints: dict[str, Path]) -> None:
    engine = load_engine(load_checkpoint(checkpoints["segmentation"]), "onnx")
    assert engine.eval().to("cpu") is engine
    assert engine.example_shape == (1, 3, 32, 32)
    assert engine(_batch(checkpoints["segmentation"], 2)).shape == (2, 2, 32, 32)


def test_engine_checkpoint_keeps_the_model_for_introspection(
        checkpoints: dict[str, Path]) -> None:
    loaded = load_checkpoint(checkpoints["video_classification"])
    assert engine_checkpoint(loaded, "eager") is loaded
    swapped = engine_checkpoint(loaded, "onnx")
    assert swapped.info["engine"] == "onnx" and swapped.input_spec == loaded.input_spec
    assert swapped.model.module is loaded.model
    assert swapped.model.active_streams == ("grey", "flow")  # from the eager model
    assert model_streams(swapped.model) == model_streams(loaded.model)
    x = _batch(checkpoints["video_classification"], 2)
    with torch.no_grad():
        assert output_difference(swapped.model(x), loaded.model(x)) <= TOLERANCE


def test_unknown_engine_and_format(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_engine(checkpoints["segmentation"], "tensorrt")
    assert (err.value.field, err.value.found) == ("engine", "'tensorrt'")
    with pytest.raises(InputError) as err:
        export_checkpoint(checkpoints["segmentation"], tmp_path / "m.x", "coreml")
    assert (err.value.field, err.value.found) == ("format", "'coreml'")
    assert list(tmp_path.iterdir()) == []


def test_onnx_file_without_sidecar(tmp_path: Path) -> None:
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"\x08\x07")
    with pytest.raises(InputError) as err:
        load_engine(bare)
    assert (err.value.field, err.value.found) == ("sidecar", "no sidecar")


@pytest.mark.slow
def test_export_cli_writes_files(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "seg.onnx"
    result = runner.invoke(app, ["export", str(checkpoints["segmentation"]), "--format", "onnx",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and sidecar_path(out).is_file()
    assert read_sidecar(out)["input_spec"]["task"] == "segmentation"


def test_export_cli_refuses_a_non_checkpoint(tmp_path: Path) -> None:
    notes = tmp_path / "notes.pt"
    torch.save({"weights": torch.zeros(2)}, notes)
    result = runner.invoke(app, ["export", str(notes), "--format", "torchscript",
                                 "--out", str(tmp_path / "m.ts")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0] == (f"error: {notes}: format: expected cinelab-checkpoint/1, found None "
                        "(import foreign weights with `cinelab import` first)")
    assert not (tmp_path / "m.ts").exists()


@pytest.mark.slow
def test_compiled_engine_equals_eager(checkpoints: dict[str, Path]) -> None:
    x = _batch(checkpoints["video_regression"], 2)
    eager = load_engine(checkpoints["video_regression"], "eager")(x)
    compiled = load_engine(checkpoints["video_regression"], "compiled")
    assert output_difference(compiled(x), eager) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,spec", [
    ("deeplabv3_resnet50", {}, InputSpec("segmentation", 64)),
    ("r2plus1d_18", {}, InputSpec("video_regression", 64, frames=8, period=2)),
])
def test_paper_models_onnx_equal_eager(tmp_path: Path, name: str, kwargs: dict,
                                       spec: InputSpec) -> None:
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(name, **kwargs),
                           {"model": {"name": name, "kwargs": kwargs}}, spec)
    x = _batch(ckpt, 2)
    eager = load_engine(ckpt, "eager")(x)
    assert output_difference(load_engine(ckpt, "onnx")(x), eager) <= TOLERANCE


def _with_detector(ckpt: Path, out: Path, module: str = "", pool: str = "mean") -> Path:
    """A copy of `ckpt` with a Mahalanobis detector fitted where `module` / `pool` say."""
    out.write_bytes(ckpt.read_bytes())
    loaded = load_checkpoint(out)
    feats = penultimate_features(loaded.model, _batch(out, 6), module or None, pool=pool)[0]
    detector = MahalanobisDetector.fit(feats, module=module, pool=pool)
    save_checkpoint(out, loaded.model, loaded.recipe, loaded.input_spec,
                    UncertaintyState(ood=detector).to_extra())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("task,module,pool", [
    ("video_regression", "", "mean"),  # EchoNet EF: the penultimate features
    ("image_segmentation", "model.1.submodule.0", "mean"),  # CMR U-Net: an encoder block
    ("image_classification", "layer4", "meanstd"),  # CXR member: the last feature map
])
def test_onnx_features_equal_eager_where_the_detector_was_fitted(
        checkpoints: dict[str, Path], tmp_path: Path, task: str, module: str, pool: str) -> None:
    ckpt = _with_detector(checkpoints[task], tmp_path / "m.pt", module, pool)
    x = _batch(ckpt, 3)
    loaded = load_checkpoint(ckpt)
    detector = UncertaintyState.from_extra(loaded.info["extra"]).ood
    reference, output = detector.features(loaded.model, x)
    engine = load_engine(ckpt, "onnx")
    assert engine.features == FeatureSpec((module,), None, pool)
    prediction, features = engine.predict(x)
    assert output_difference(features, reference) <= TOLERANCE
    assert output_difference(prediction, load_engine(ckpt)(x)) <= TOLERANCE
    scores = detector.score(reference), detector.score(features)
    assert np.abs(scores[1] - scores[0]).max() <= TOLERANCE * max(1.0, scores[0].max())
    with capture_features(engine, module or None, pool=pool) as found:  # as on eager
        engine(x)
    assert len(found) == 1 and output_difference(found[0], reference) <= TOLERANCE
    side = read_sidecar(export_checkpoint(ckpt, tmp_path / "m.onnx"))
    assert side["features"]["modules"] == [module] and side["features"]["pool"] == pool
    assert side["features"]["dim"] == reference.shape[1]
    exported = load_engine(tmp_path / "m.onnx")
    assert output_difference(exported.predict(x)[1], reference) <= TOLERANCE


def test_features_elsewhere_are_refused(checkpoints: dict[str, Path]) -> None:
    engine = load_engine(checkpoints["video_regression"], "eager")
    assert engine.has_features() and not engine.has_features("layers", pool="meanstd")
    with pytest.raises(InputError) as err:
        with capture_features(engine, "layers", pool="meanstd"):
            pass
    assert err.value.field == "features"
    none = load_engine(checkpoints["segmentation"], "eager")  # no output Linear, no detector
    assert none.features is None
    assert none.predict(_batch(checkpoints["segmentation"], 2))[1] is None


@pytest.mark.slow
def test_old_sidecar_without_features_still_loads(checkpoints: dict[str, Path],
                                                  tmp_path: Path) -> None:
    ckpt = checkpoints["video_regression"]
    written = export_checkpoint(ckpt, tmp_path / "old.onnx", features=None)
    side = read_json(sidecar_path(written))
    assert side["output_names"] == ["output"] and side["features"] is None
    write_json(sidecar_path(written), {k: v for k, v in side.items()
                                       if k not in ("features", "output_names")})
    engine = load_engine(written)
    x = _batch(ckpt, 2)
    prediction, features = engine.predict(x)
    assert features is None and not engine.has_features()
    assert output_difference(prediction, load_engine(ckpt)(x)) <= TOLERANCE
    with pytest.raises(InputError, match="no features output"):
        with capture_features(engine, None):
            pass


@pytest.mark.slow
def test_engine_cache_exports_once_or_reuses_the_file_beside(checkpoints: dict[str, Path],
                                                             tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(checkpoints["image_classification"].read_bytes())
    cache = EngineCache("onnx")
    first = cache.load(ckpt)
    assert cache.load(ckpt) is first and "file" not in first.model.info
    export_checkpoint(ckpt, tmp_path / "model.onnx")
    beside = EngineCache("onnx").load(ckpt)
    assert beside.model.info["file"] == str(tmp_path / "model.onnx")
    x = _batch(ckpt, 2)
    assert output_difference(beside.model(x), first.model(x)) <= TOLERANCE
    assert EngineCache("onnx").record() == {"name": "onnx", "models": {}}
    ckpt.write_bytes(checkpoints["video_regression"].read_bytes())  # another checkpoint now
    assert "file" not in EngineCache("onnx").load(ckpt).model.info
