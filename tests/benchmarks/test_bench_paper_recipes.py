"""Every paper recipe wired end to end at the paper's image size (benchmarks/paper_recipes.py
--reduced): 2 training steps with its optimiser and loss, 1 validation step, model.pt export,
reload, and the pipeline's predict on two test inputs.

Reduced: batch 2 and 8-frame clips (echonet-ef, rvf-twostream; cmr-age keeps its 25-frame
cycle), test videos of echonet cut to 8 (seg) / 80 (EF) frames. The CXR ensemble is covered by
one member (ResNet-50 at 224 px); benchmarks/paper_recipes.py runs every architecture at 224
and 331 px.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bench_import import load_benchmark

paper = load_benchmark("paper_recipes")

COVERED = ["echonet-seg", "echonet-ef", "cmr-seg", "cxr-resnet50-224", "rvf-twostream",
           "cmr-age"]


def test_every_paper_recipe_has_a_case() -> None:
    recipes = {c.recipe for c in paper.CASES}
    assert recipes == {"echonet-seg", "echonet-ef", "cmr-seg", "cxr-ensemble", "rvf-twostream",
                       "cmr-age"}
    assert {c.name for c in paper.CASES if c.recipe == "cxr-ensemble"} == {
        f"cxr-{a}-{s}" for a in paper.CXR_ARCHS for s in (224, 331)}
    batch, frames, overrides = paper.settings(paper.CASE_BY_NAME["echonet-ef"], reduced=True)
    assert (batch, frames) == (paper.REDUCED_BATCH, paper.REDUCED_FRAMES)
    assert "trainer.limit_train_batches=2" in overrides


@pytest.mark.slow
def test_every_paper_model_builds_at_paper_dimensions() -> None:
    """Parameters and FLOPs on the meta device (no memory): every model at its input size
    (CXR architectures at 224 px; the same models run at 331 in the benchmark)."""
    cases = [c for c in paper.CASES if not c.name.endswith("-331")]
    rows = {c.name: paper.model_flops(c) for c in cases}
    assert all(r["params_M"] > 1 and r["gflop_fwd_sample"] > 1 for r in rows.values())
    assert rows["echonet-ef"]["input"] == "3x32x112x112"
    assert rows["rvf-twostream"]["params_M"] > 200  # two ResNet-152 3D streams


@pytest.mark.slow  # all six: under 4 min on a quiet 2-core CPU
@pytest.mark.parametrize("name", COVERED)
def test_paper_recipe_trains_exports_and_predicts(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    row = paper.run_case(paper.CASE_BY_NAME[name], tmp_path, reduced=True)
    assert row["steps"] == paper.STEPS and row["size"] == paper.CASE_BY_NAME[name].size
    assert math.isfinite(row["s_val_step"]) and row["gflop_fwd_sample"] > 0
    assert row["n_pred"] == 2 and (row["finite"] or row["masks"] >= 2), row
