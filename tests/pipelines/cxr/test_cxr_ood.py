"""CXR OOD flag (issue 15): per-member Mahalanobis detectors fitted by `cinelab calibrate` on
the training radiographs of a synthetic cohort (two untrained tiny members), thresholded on
its validation split; predict then flags echo frames and noise but few held-out
radiographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cinelab.infer.contract import read_predictions
from cinelab.infer.ensemble import EnsembleWeights, save_ensemble_weights
from cinelab.models.registry import register_model, set_head
from cinelab.pipelines.cxr.ood import read_member_ood
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.synth.echo import echo_phantom_video
from cinelab.train.checkpoint import InputSpec, save_checkpoint

N, SIDE, N_OOD = 140, 48, 20
MEMBERS = {"small-32": 32, "small-40": 40}
MODEL = "cxr_test_small_cnn"


@register_model(MODEL, "classification")
def _small_cnn(in_channels: int = 1, num_outputs: int = 1, **_: object) -> nn.Module:
    """Two strided convs (16 feature maps) and a Linear head: 16-d penultimate features."""
    model = nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_outputs))
    return set_head(model, "6")


def _ensemble(root: Path) -> Path:
    info = {}
    for k, (name, size) in enumerate(MEMBERS.items()):
        torch.manual_seed(k)
        model = _small_cnn()
        path = root / "members" / name / "model.pt"
        save_checkpoint(path, model, {"model": {"name": MODEL, "kwargs": {
            "in_channels": 1, "num_outputs": 1}}},
            InputSpec("image_classification", size, 1, mean=[110.0], std=[60.0]))
        info[name] = {"model": MODEL, "size": size, "crop": "uncrop",
                      "checkpoint": str(path.relative_to(root))}
    save_ensemble_weights(root / "ensemble.json", EnsembleWeights(
        np.array([0.5, 0.5]), "bmc", "binary", list(MEMBERS),
        {"member_info": info, "threshold": 0.5}))
    return root


def _ood_folder(root: Path) -> Path:
    """N_OOD echo frames and N_OOD noise images."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(N_OOD):
        frames, _, _ = echo_phantom_video(rng, size=SIDE, n_frames=8, fps=30.0,
                                          heart_rate=70.0)
        Image.fromarray(frames[i % len(frames)]).save(root / f"echo{i:02d}.png")
        noise = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        Image.fromarray(noise).save(root / f"noise{i:02d}.png")
    return root


@pytest.mark.slow
def test_echo_and_noise_are_flagged_radiographs_are_not(tmp_path: Path) -> None:
    cohort = synth_cxr_cohort(tmp_path / "cohort", n=N, size=SIDE, seed=0)
    ens = _ensemble(tmp_path / "ens")
    cxr = get_pipeline("cxr")
    masks = {"masks": "none"}
    summary = cxr.calibrate(ens, cohort, tmp_path / "cal", Options(extra=masks))
    assert summary["ood"] == "mahalanobis per member" and summary["n_ood_fit"] > 50
    assert read_member_ood(ens) is not None
    held_out = read_predictions(cxr.predict(ens, cohort, tmp_path / "test",
                                            Options(split="test", extra=masks)))
    strange = read_predictions(cxr.predict(ens, _ood_folder(tmp_path / "ood"),
                                           tmp_path / "ood_pred", Options(extra=masks)))
    assert len(strange) == 2 * N_OOD
    assert {"ood_score", "ood_flag", "probability_raw"} <= set(held_out.columns)
    flagged_in = held_out["ood_flag"].astype(str).str.lower().eq("true").mean()
    caught = strange["ood_flag"].astype(str).str.lower().eq("true").mean()
    print(f"in-distribution flagged {flagged_in:.3f}, OOD caught {caught:.3f}")
    assert caught >= 0.95
    assert flagged_in <= 0.10
