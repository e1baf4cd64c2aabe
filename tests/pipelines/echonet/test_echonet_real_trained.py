"""Predict with a demo-size checkpoint trained on the real echonet-mini tracings.

Segmentation learns from the 20 traced frames of the 10 echonet-mini videos, the EF head sits
on top; then every real video (echonet-mini, echonet-extra, its three_case set) and the real
ultrasound DICOM go through `cinelab predict`. Accuracy is not the point (10 videos of
training); complete, sane outputs are: one row per video, EF in 0-100, LV masks of every frame,
and beats found on the multi-cycle videos.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.formats.ingest import ingest
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.train.fit import fit
from cinelab.train.recipe import load_recipe
from conftest import real_path

MULTI_CYCLE_FRAMES = 120  # at 50 fps, 2.4 s: at least two cardiac cycles
STRIDE = 8  # every 8th all-clips start: keeps the run short on 2 cores


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = real_path("echonet-mini")
    out = tmp_path_factory.mktemp("real-trained")
    cohort = ingest(root)
    manifest = cohort.manifest.assign(split="train")  # echonet-mini is all TEST
    prepare(manifest, out / "store", PrepSpec(size=64), tracings=cohort.tracings, workers=1)
    seg = fit(load_recipe("echonet-seg-cpu", ["trainer.max_epochs=25"]), out / "store",
              out / "run" / "seg", progress=False)
    fit(load_recipe("echonet-ef-cpu", [f"model.pretrained={seg.best_checkpoint}",
                                       "trainer.max_epochs=3"]),
        out / "store", out / "run" / "ef", progress=False)
    return out / "run"


def _predict(run: Path, source: Path, out: Path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(app, ["predict", str(run), str(source), "--out", str(out),
                                          "--option", f"stride={STRIDE}"])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / "predictions.csv", dtype={"sample_id": str})


@pytest.mark.parametrize("folder", [("echonet-mini", "Videos"), ("echonet-extra", "Videos"),
                                    ("echonet-extra", "three_case")])
@pytest.mark.slow
def test_every_real_video(run_dir: Path, tmp_path: Path, folder: tuple[str, str]) -> None:
    source = real_path(*folder)
    videos = sorted(source.glob("*.avi"))
    preds = _predict(run_dir, source, tmp_path / "pred")
    assert sorted(preds["sample_id"]) == sorted(v.stem for v in videos)
    for col in ("ef_one_clip", "ef_all_clips", "ef"):
        assert preds[col].between(0, 100).all(), preds[col].describe()
    frames = pd.read_csv(tmp_path / "pred" / "frames.csv", dtype={"sample_id": str})
    counts = frames.groupby("sample_id").size()
    for row in preds.itertuples():
        assert counts[row.sample_id] == row.n_frames
        with np.load(tmp_path / "pred" / "masks" / f"{row.sample_id}.npz") as data:
            assert data["mask"].shape == (row.n_frames, 64, 64)
    long = preds[preds["n_frames"] >= MULTI_CYCLE_FRAMES]
    assert len(long) and (long["n_beats"] >= 1).mean() >= 0.9, long[["sample_id", "n_beats"]]


def test_real_ultrasound_dicom(run_dir: Path, tmp_path: Path) -> None:
    dicom = real_path("echo-dicom") / "examples_ybr_color.dcm"
    preds = _predict(run_dir, dicom, tmp_path / "pred")
    assert len(preds) == 1 and preds["n_frames"].iat[0] == 30
    assert preds["ef_all_clips"].between(0, 100).all()
