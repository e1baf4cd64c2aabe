"""CXR probability calibration wired through calibrate -> stored state -> predict ->
evaluate, on radiograph stand-ins of known truth: uniform images whose label is drawn with
P(y=1) = sigmoid((brightness - 110) / 10), read by a model that outputs 5x that logit
(a deliberately over-confident model). One temperature fitted on a validation folder must
lower the ECE on a test folder; member disagreement is checked on a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from cinelab.infer.contract import read_predictions
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.models.registry import register_model
from cinelab.pipelines.cxr.calibrate import calibrate_cxr
from cinelab.pipelines.cxr.uncertainty import annotate_cxr, read_cxr_state
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.train.checkpoint import InputSpec, save_checkpoint

N, SIDE, SIZE, OVERCONFIDENCE = 300, 40, 32, 5.0
MEAN, STD = 110.0, 60.0


class Brightness(nn.Module):
    """logit = scale x mean of the normalised image."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=(1, 2, 3)).unsqueeze(1)


@register_model("cxr_test_brightness", "classification")
def _brightness(scale: float = 1.0, **_: object) -> nn.Module:
    return Brightness(scale)


def _folder(root: Path, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for i in range(N):
        level = rng.uniform(60, 160)
        image = np.clip(level + rng.normal(0, 2, (SIDE, SIDE)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"img{i:04d}.png")
        label = int(rng.random() < 1 / (1 + np.exp(-(level - MEAN) / 10)))
        rows.append({"sample_id": f"img{i:04d}", "label": label})
    labels = root.parent / f"{root.name}_labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return root, labels


def test_temperature_fixes_an_overconfident_model(tmp_path: Path) -> None:
    scale = OVERCONFIDENCE * STD / 10  # 5x the true logit (level - 110) / 10
    kwargs = {"scale": scale, "num_outputs": 1}
    model = save_checkpoint(tmp_path / "model.pt", Brightness(scale),
                            {"model": {"name": "cxr_test_brightness", "kwargs": kwargs}},
                            InputSpec("image_classification", SIZE, 1, mean=[MEAN], std=[STD]),
                            {"threshold": 0.5})
    val, val_labels = _folder(tmp_path / "val", 0)
    test, test_labels = _folder(tmp_path / "test", 1)
    summary = calibrate_cxr(model, val, tmp_path / "cal",
                            Options(split="", labels=val_labels, extra={"masks": "none"}))
    assert summary["temperature"] == pytest.approx(OVERCONFIDENCE, rel=0.35)
    assert summary["ece_after"] < summary["ece_before"]
    assert read_cxr_state(model).calibrator is not None  # stored in the checkpoint
    cxr = get_pipeline("cxr")
    out = cxr.predict(model, test, tmp_path / "pred", Options(labels=test_labels,
                                                              extra={"masks": "none"}))
    table = read_predictions(out)
    assert {"probability", "probability_raw"} <= set(table.columns)
    raw_pred = (table["probability_raw"] >= 0.5).astype(int)
    assert (table["prediction"] == raw_pred).all()  # the threshold moved with the calibration
    metrics = cxr.evaluate(out, tmp_path / "eval", Options(extra={"n_boot": 10}))
    assert metrics["ece"] < metrics["ece_raw"]
    assert metrics["ece_raw"] > 0.05 and metrics["ece"] < 0.06
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 0


def test_member_disagreement_is_the_sd_of_member_probabilities() -> None:
    table = pd.DataFrame({"sample_id": ["a", "b"], "probability": [0.5, 0.9],
                          "probability_m1": [0.2, 0.9], "probability_m2": [0.8, 0.9]})
    out = annotate_cxr(table, UncertaintyState())
    assert out["disagreement"].tolist() == pytest.approx([0.3, 0.0])
    assert "probability_raw" not in out.columns  # nothing calibrated: probability as is
