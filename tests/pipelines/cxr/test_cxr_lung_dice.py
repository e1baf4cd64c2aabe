"""`lung_dice` (issue 12): a mask of another shape is a problem row (dice NaN, the reason),
and the rows after it are still scored against their masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cinelab.models.registry import register_model
from cinelab.pipelines.cxr.prepare import lung_dice
from cinelab.train.checkpoint import InputSpec, save_checkpoint

SIDE = 64


class AllLung(nn.Module):
    """A one-channel 'U-Net' that calls every pixel lung."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 10.0)


@register_model("cxr_test_all_lung", "segmentation")
def _all_lung(**_: object) -> nn.Module:
    return AllLung()


def _png(path: Path, array: np.ndarray) -> str:
    cv2.imwrite(str(path), array)
    return str(path)


def test_a_mismatched_mask_is_reported_and_the_rest_go_on(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(
        tmp_path / "lung" / "model.pt", AllLung(),
        {"name": "lung-test", "model": {"name": "cxr_test_all_lung", "kwargs": {}}},
        InputSpec("image_segmentation", 32, 1, mean=[0.0], std=[1.0], target="mask"))
    rng = np.random.default_rng(0)
    half = np.zeros((SIDE, SIDE), np.uint8)
    half[:, : SIDE // 2] = 255  # truth: the left half; predicted: everything -> dice 2/3
    rows = []
    for k, mask in enumerate([half, np.full((SIDE, 20), 255, np.uint8), half[:, ::-1]]):
        image = _png(tmp_path / f"img{k}.png", rng.integers(0, 256, (SIDE, SIDE), np.uint8))
        rows.append({"sample_id": f"s{k}", "path": image,
                     "mask_path": _png(tmp_path / f"mask{k}.png", np.ascontiguousarray(mask))})
    scores = lung_dice(checkpoint, pd.DataFrame(rows)).set_index("sample_id")
    assert list(scores.index) == ["s0", "s1", "s2"]
    assert scores.loc["s0", "dice"] == pytest.approx(2 / 3)
    assert scores.loc["s2", "dice"] == pytest.approx(2 / 3)  # scored after the bad row
    assert np.isnan(scores.loc["s1", "dice"])
    assert "mask1.png" in scores.loc["s1", "problem"]
    assert "lung mask shape" in scores.loc["s1", "problem"]
    assert scores.loc[["s0", "s2"], "problem"].eq("").all()
