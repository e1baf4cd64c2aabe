"""CMR OOD flags: a Mahalanobis detector on a tiny U-Net's bottleneck features, fitted on
synthetic CMR stacks, flags noise, echo-like and chest-like stacks and few held-out CMR
stacks; the state survives the checkpoint's extra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.data.store import PreparedStore
from cinelab.infer.contract import read_predictions
from cinelab.infer.ood import MahalanobisDetector
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.models.segmentation import unet_small
from cinelab.pipelines.cmr.acdc import LV_LABEL, MYO_LABEL, RV_LABEL, read_acdc
from cinelab.pipelines.cmr.calibrate import calibrate_cmr
from cinelab.pipelines.cmr.ood import bottleneck_module, cmr_ood_columns, fit_cmr_ood
from cinelab.pipelines.cmr.prepare import prepare_cmr
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint

SIZE = 32
N_TRAIN, N_CAL = 24, 8
CLASSES = {"LV": LV_LABEL, "MYO": MYO_LABEL, "RV": RV_LABEL}


class Frames:
    """A store stand-in: uint8 (Z, H, W, 1) stacks by id."""

    def __init__(self, stacks: dict[str, np.ndarray]) -> None:
        self.stacks = stacks

    def frames(self, sid: str) -> np.ndarray:
        """The stack of `sid`."""
        return self.stacks[sid]


def _ood_stacks(rng: np.random.Generator, n: int, z: int) -> dict[str, np.ndarray]:
    """Noise volumes, echo-like sectors with speckle and chest-like radiographs."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    angle = np.arctan2(xx - SIZE / 2, yy + 4)
    sector = (np.abs(angle) < 0.6) & (np.hypot(yy + 4, xx - SIZE / 2) < SIZE + 2)
    lungs = (np.hypot((yy - 16) / 12, (np.abs(xx - 16) - 8) / 5) < 1)
    out = {}
    for i in range(n):
        out[f"noise{i}"] = rng.integers(0, 256, (z, SIZE, SIZE, 1), dtype=np.uint8)
        speckle = rng.rayleigh(60, (z, SIZE, SIZE)) * sector
        out[f"echo{i}"] = np.clip(speckle, 0, 255).astype(np.uint8)[..., None]
        chest = 200 - 150 * lungs + rng.normal(0, 10, (z, SIZE, SIZE))
        out[f"chest{i}"] = np.clip(chest, 0, 255).astype(np.uint8)[..., None]
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cmr_ood")
    cohort = synth_cmr_cohort(root / "synth", n=24, seed=3, layout="acdc", size=(40, 36),
                              n_frames=4, defects=False)
    prepare_cmr(read_acdc(cohort.acdc_root)[0], root / "store", size=SIZE, workers=1)
    store = PreparedStore(root / "store")
    torch.manual_seed(0)
    model = unet_small(in_channels=1, out_channels=4, channels=(4, 8, 16), strides=(2, 2))
    spec = InputSpec("image_segmentation", SIZE, 1, mean=[60.0], std=[40.0], target="labels")
    ids = sorted(store.ids)
    detector = fit_cmr_ood(model, spec, store, ids[:N_TRAIN], ids[N_TRAIN:N_TRAIN + N_CAL])
    return model, spec, store, ids[N_TRAIN + N_CAL:], detector


def test_bottleneck_is_the_deepest_map(fitted) -> None:
    model, *_ = fitted
    name = bottleneck_module(model, torch.zeros(1, 1, SIZE, SIZE))
    out = {}
    model.get_submodule(name).register_forward_hook(lambda _m, _a, o: out.update(o=o))
    model(torch.zeros(1, 1, SIZE, SIZE))
    assert out["o"].shape[-1] == SIZE // 4


def test_ood_stacks_flagged_held_out_not(fitted) -> None:
    model, spec, store, held_out, detector = fitted
    assert len(held_out) >= 8
    table = cmr_ood_columns(pd.DataFrame({"sample_id": held_out}), detector, model, spec,
                            store)
    assert table["ood_flag"].mean() <= 0.10 + 1e-9
    z = int(store.frames(held_out[0]).shape[0])
    ood = Frames(_ood_stacks(np.random.default_rng(1), 7, z))
    flagged = cmr_ood_columns(pd.DataFrame({"sample_id": list(ood.stacks)}), detector,
                              model, spec, ood)  # type: ignore[arg-type]
    assert flagged["ood_flag"].mean() >= 0.95
    assert flagged["ood_score"].min() > table["ood_score"].max()


def test_state_round_trip(fitted) -> None:
    *_, detector = fitted
    state = UncertaintyState.from_extra(UncertaintyState(ood=detector).to_extra())
    assert isinstance(state.ood, MahalanobisDetector)
    assert state.ood.module == detector.module
    assert state.ood.threshold == pytest.approx(detector.threshold)


def test_calibrate_stores_ood_and_predict_adds_columns(tmp_path: Path) -> None:
    cohort = synth_cmr_cohort(tmp_path / "synth", n=4, seed=5, layout="acdc", size=(40, 36),
                              n_frames=4, defects=False)
    kwargs = {"in_channels": 1, "out_channels": 4, "channels": [4, 8, 16], "strides": [2, 2]}
    recipe = {"name": "cmr-test", "model": {"name": "unet_small", "kwargs": kwargs},
              "data": {"classes": CLASSES}}
    spec = InputSpec("image_segmentation", SIZE, 1, mean=[60.0], std=[40.0], target="labels")
    torch.manual_seed(0)
    model = save_checkpoint(tmp_path / "model.pt", unet_small(**kwargs), recipe, spec,
                            {"classes": CLASSES})
    summary = calibrate_cmr(model, cohort.acdc_root, tmp_path / "cal", Options(split=""))
    state = UncertaintyState.from_extra(load_checkpoint(model).info["extra"])
    assert isinstance(state.ood, MahalanobisDetector) and state.intervals
    assert summary["ood"]["module"] == state.ood.module
    table = read_predictions(get_pipeline("cmr").predict(model, cohort.acdc_root,
                                                         tmp_path / "pred", Options()))
    assert table["ood_score"].notna().all()
    assert table["ood_flag"].mean() <= 0.25  # threshold = 95th pct of these very stacks
