"""CMR predict with ``--option engine=onnx`` labels as eager does and records the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.infer.contract import read_run
from cinelab.io.nifti import read_volume
from cinelab.models import create_model
from cinelab.pipelines.cmr.acdc import read_acdc
from cinelab.pipelines.cmr.pipeline import predict
from cinelab.pipelines.cmr.predict import INDEX_FILE
from cinelab.pipelines.cmr.prepare import prepare_cmr
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import InputSpec, save_checkpoint

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
