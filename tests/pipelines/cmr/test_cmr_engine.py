"""CMR predict with ``--option engine=onnx`` labels as eager does and records the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.data.store import PreparedStore
from cinelab.infer.contract import read_predictions, read_run
from cinelab.infer.engines import TOLERANCE, export_checkpoint, load_engine, sidecar_path
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.io.nifti import read_volume
from cinelab.models import create_model
from cinelab.pipelines.cmr.acdc import read_acdc
from cinelab.pipelines.cmr.ood import _normalised, fit_cmr_ood, stack_features
from cinelab.pipelines.cmr.pipeline import predict
from cinelab.pipelines.cmr.predict import INDEX_FILE
from cinelab.pipelines.cmr.prepare import prepare_cmr
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import (
    InputSpec,
    load_checkpoint,
    save_checkpoint,
    update_checkpoint_extra,
)
from cinelab.utils import read_json, write_json

SIZE = 32
CLASSES = {"LV": 3, "MYO": 2, "RV": 1}
KWARGS = {"in_channels": 1, "out_channels": 4, "channels": [8, 16], "strides": [2]}
AGREEMENT = 0.999  # pixels whose two top logits tie within float error may differ


@pytest.fixture(scope="module")
def store_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cmr_engine")
    synth = synth_cmr_cohort(root / "synth", n=2, seed=5, layout="acdc", size=(40, 36),
                             n_frames=4)
    prepare_cmr(read_acdc(synth.acdc_root)[0], root / "store", size=SIZE, workers=1)
    torch.manual_seed(0)
    spec = InputSpec("image_segmentation", SIZE, 1, mean=[50.0], std=[40.0], target="labels")
    model = save_checkpoint(root / "model.pt", create_model("unet_small", **KWARGS),
                            {"model": {"name": "unet_small", "kwargs": KWARGS},
                             "data": {"classes": CLASSES}}, spec, {"classes": CLASSES})
    return root / "store", model


def _labels(out: Path) -> np.ndarray:
    """Every predicted label, in sample order (NIfTI label files)."""
    index = pd.read_csv(out / INDEX_FILE).sort_values(["sample_id", "mask_path"])
    return np.concatenate([np.asarray(read_volume(p)[0]).ravel() for p in index["mask_path"]])


@pytest.mark.slow
def test_onnx_engine_labels_as_eager(store_and_model: tuple[Path, Path], tmp_path: Path) -> None:
    store, model = store_and_model
    eager = predict(model, store, tmp_path / "eager", Options())
    onnx = predict(model, store, tmp_path / "onnx", Options(extra={"engine": "onnx"}))
    assert (_labels(eager) == _labels(onnx)).mean() >= AGREEMENT
    assert read_run(onnx)["engine"]["name"] == "onnx"
    assert read_run(onnx)["engine"]["providers"] == ["CPUExecutionProvider"]
    assert read_run(eager)["engine"] == {"name": "eager"}


@pytest.fixture(scope="module")
def calibrated(store_and_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, Path, float]:
    """A copy of the model with a bottleneck OOD detector fitted on the store's stacks, its
    threshold halfway between the two middle scores (no score at the threshold); and that
    threshold."""
    store, model = store_and_model
    copy = tmp_path_factory.mktemp("calibrated") / "model.pt"
    copy.write_bytes(model.read_bytes())
    loaded, stacks = load_checkpoint(copy), PreparedStore(store)
    detector = fit_cmr_ood(loaded.model, loaded.input_spec, stacks, stacks.ids, stacks.ids)
    scores = np.sort(detector.score(stack_features(loaded.model, loaded.input_spec, stacks,
                                                   stacks.ids, detector.module)))
    detector.threshold = float(scores[len(scores) // 2 - 1:len(scores) // 2 + 1].mean())
    update_checkpoint_extra(copy, UncertaintyState(ood=detector).to_extra())
    return store, copy, detector.threshold


@pytest.mark.slow
def test_onnx_bottleneck_features_equal_eager(calibrated: tuple[Path, Path, float]) -> None:
    store, model, _ = calibrated
    loaded = load_checkpoint(model)
    detector = UncertaintyState.from_extra(loaded.info["extra"]).ood
    module, dim = detector.module, detector.info["dim"]
    onnx = load_engine(model, "onnx")
    assert onnx.features is not None and onnx.features.modules == (module,)
    stacks = PreparedStore(store)
    x = _normalised(stacks.frames(stacks.ids[0]), loaded.input_spec)
    eager = stack_features(loaded.model, loaded.input_spec, stacks, stacks.ids, module)
    found = stack_features(onnx, loaded.input_spec, stacks, stacks.ids, module)
    assert found.shape == eager.shape == (len(stacks.ids), dim)
    scale = max(1.0, float(np.abs(eager).max()))
    assert float(np.abs(found - eager).max()) / scale <= TOLERANCE
    assert onnx.predict(x)[1].shape == (len(x), dim)


@pytest.mark.slow
def test_onnx_ood_columns_equal_eager(calibrated: tuple[Path, Path, float],
                                      tmp_path: Path) -> None:
    store, model, threshold = calibrated
    eager = read_predictions(predict(model, store, tmp_path / "eager", Options()))
    onnx_dir = predict(model, store, tmp_path / "onnx", Options(extra={"engine": "onnx"}))
    onnx = read_predictions(onnx_dir)
    a, b = eager["ood_score"].to_numpy(float), onnx["ood_score"].to_numpy(float)
    assert np.isfinite(a).all()
    assert float(np.abs(b - a).max()) / max(1.0, float(np.abs(a).max())) <= TOLERANCE
    assert onnx["ood_flag"].tolist() == eager["ood_flag"].tolist()
    assert eager["ood_flag"].tolist() == (a > threshold).tolist()
    assert 0 < eager["ood_flag"].astype(bool).sum() < len(a)
    assert "ood_unavailable" not in read_run(onnx_dir)


@pytest.mark.slow
def test_old_export_without_features_says_ood_unavailable(calibrated: tuple[Path, Path, float],
                                                          tmp_path: Path) -> None:
    store, model, _ = calibrated
    exported = export_checkpoint(model, model.with_suffix(".onnx"), features=None)
    side = read_json(sidecar_path(exported))
    write_json(sidecar_path(exported), {k: v for k, v in side.items()
                                        if k not in ("features", "output_names")})
    try:
        out = predict(model, store, tmp_path / "old", Options(extra={"engine": "onnx"}))
    finally:
        exported.unlink()
        sidecar_path(exported).unlink()
    run = read_run(out)
    assert run["engine"]["file"] == str(exported)
    assert "cinelab export" in run["ood_unavailable"]
    assert "ood_score" not in read_predictions(out).columns
