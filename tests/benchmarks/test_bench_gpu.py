"""benchmarks/gpu_benchmarks.py --tiny runs on the CPU, so the GPU benchmark does not rot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bench_import import load_benchmark

gpu = load_benchmark("gpu_benchmarks")


def _settings(batches: int = 1) -> object:
    return gpu.Settings("cpu", batches, 1, 0, 2, True, math.nan)


@pytest.mark.slow
def test_tiny_echonet_ef_row_ours_and_the_avi_loop(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    row = gpu.bench_row("echonet-ef", _settings(), tmp_path, {})
    assert row["recipe"] == "echonet-ef" and row["size"] == gpu.TINY_SIZE
    for key in ("ours_sps", "peer_sps", "pred_vps", "gflop_fwd", "params_M"):
        assert row[key] > 0, key
    assert math.isnan(row["mfu"]) and math.isnan(row["ours_gpu%"])  # CPU: no peak, no GPU


def test_peak_lookup_and_overrides() -> None:
    assert gpu.peak_tflops("cuda", 500.0) == 500.0
    assert math.isnan(gpu.peak_tflops("cpu", None))
    case = gpu.case_for("rvf-twostream", tiny=True)
    assert case.recipe == "rvf-twostream-cpu" and case.frames == gpu.TINY_FRAMES
    ours = gpu.overrides(gpu.case_for("echonet-ef", False), gpu.Settings(
        "cuda", 20, 3, 8, 8, False, 989.0), ours=True)
    assert "trainer.channels_last=true" in ours and "data.num_workers=8" in ours
    assert "trainer.accelerator=gpu" in ours and "data.frames=32" in ours


@pytest.mark.slow  # every row at tiny size: about a minute on a quiet 2-core CPU
def test_tiny_table_has_every_paper_recipe(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    models: dict[str, Path] = {}
    rows = [gpu.bench_row(name, _settings(), tmp_path / name, models) for name in gpu.ROWS]
    assert [r["recipe"] for r in rows] == gpu.ROWS
    assert all(r["ours_sps"] > 0 and r["peer_sps"] > 0 and r["pred_vps"] > 0 for r in rows)
