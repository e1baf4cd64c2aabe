"""CMR volume intervals wired through `cinelab calibrate` -> checkpoint -> predict ->
evaluate, with a fixed model (LV = bright pixels) on a synthetic ACDC-like cohort. The
coverage guarantee itself is tested on the mechanism (tests/infer) and on known-truth
cohorts of the echonet and age pipelines; here: the columns, the stored state and the
metrics through the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.infer.contract import read_predictions, read_run
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.models.registry import register_model
from cinelab.pipelines.cmr.acdc import LV_LABEL, MYO_LABEL, RV_LABEL
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint
from cinelab.utils import read_json

SIZE = 32
CLASSES = {"LV": LV_LABEL, "MYO": MYO_LABEL, "RV": RV_LABEL}


class Bright(nn.Module):
    """Class 1 (LV) where the normalised input is above 1, else background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lv = 4 * (x - 1.0)
        return torch.cat([-lv, lv, torch.full_like(x, -9), torch.full_like(x, -9)], dim=1)


@register_model("cmr_test_bright_intervals", "segmentation")
def _bright(**_: object) -> nn.Module:
    return Bright()


@pytest.mark.slow
def test_calibrated_volume_intervals_reach_predictions(tmp_path: Path) -> None:
    cohort = synth_cmr_cohort(tmp_path / "synth", n=6, seed=5, layout="acdc", size=(40, 36),
                              n_frames=4, defects=False)
    recipe = {"name": "cmr-test", "model": {"name": "cmr_test_bright_intervals", "kwargs": {}},
              "data": {"classes": CLASSES}}
    spec = InputSpec("image_segmentation", SIZE, 1, mean=[60.0], std=[40.0], target="labels")
    model = save_checkpoint(tmp_path / "model.pt", Bright(), recipe, spec, {"classes": CLASSES})
    result = CliRunner().invoke(app, ["calibrate", str(model), "--data",
                                      str(cohort.acdc_root), "--out", str(tmp_path / "cal"),
                                      "--split", "", "--pipeline", "cmr"])
    assert result.exit_code == 0, result.output
    summary = read_json(tmp_path / "cal" / "calibration.json")
    assert summary["n_calibration"] == {"edv": 6, "esv": 6, "ef": 6}
    state = UncertaintyState.from_extra(load_checkpoint(model).info["extra"])
    assert sorted(state.intervals) == ["edv", "ef", "esv"]
    assert load_checkpoint(model).info["extra"]["classes"] == CLASSES  # extra kept
    cmr = get_pipeline("cmr")
    out = cmr.predict(model, cohort.acdc_root, tmp_path / "pred", Options(extra={
        "coverage": 0.5}))
    table = read_predictions(out)
    for name in ("edv", "esv", "ef"):
        ok = table[name].notna()
        assert ok.any()
        assert (table.loc[ok, f"{name}_lo"] <= table.loc[ok, name] + 1e-9).all()
        assert (table.loc[ok, name] <= table.loc[ok, f"{name}_hi"] + 1e-9).all()
    half = state.intervals["ef"].half_width(0.5)
    ok = table["ef"].notna() & (table["ef_hi"] < 100) & (table["ef_lo"] > 0)
    assert np.allclose((table.loc[ok, "ef_hi"] - table.loc[ok, "ef_lo"]) / 2, half)
    assert read_run(out)["options"]["coverage"] == 0.5
    metrics = cmr.evaluate(out, tmp_path / "eval", Options())
    assert metrics["edv_interval_n"] == 6 and 0.0 <= metrics["edv_coverage"] <= 1.0
    assert metrics["ef_coverage"] == pytest.approx(metrics["ef_coverage"])
