"""`predict` on every real EchoNet-Dynamic video and on a real ultrasound DICOM.

Checkpoints are demo-sized (tiny_video + unet_small) with random weights written by the test:
EF and beats are meaningless here, only completeness and sanity are checked. The models run
at 32 px (EF) and 64 px (segmentation), so the 112 px videos are resized on the fly, and
all-clips EF uses every ALL_CLIPS_STRIDE-th start (halves the clips on shared CPUs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.models.registry import create_model
from cinelab.pipelines.echonet.api import evaluate_echonet_predictions
from cinelab.pipelines.echonet.predict import predict
from cinelab.pipelines.echonet.tables import BEAT_COLUMNS, FRAME_COLUMNS, PREDICTION_COLUMNS
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from conftest import real_path

EF_SIZE, SEG_SIZE, CLIP, PERIOD = 32, 64, 16, 2
ALL_CLIPS_STRIDE = 2  # > 1 also exercises beat clips that are not among the all-clips starts
BATCH = 16
MEAN, STD = [32.0] * 3, [50.0] * 3
EF_KW = {"in_channels": 3, "channels": [4, 8]}
SEG_KW = {"in_channels": 3, "out_channels": 1, "channels": [4, 8, 16, 32]}
DICOM_FRAMES, DICOM_FPS = 30, 30.0  # examples_ybr_color.dcm: 30 frames, FrameTime 33.333 ms


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread when the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real_ckpt")
    torch.manual_seed(0)
    for sub, name, kw, spec in (
            ("ef", "tiny_video", EF_KW, InputSpec("video", EF_SIZE, 3, CLIP, PERIOD, MEAN, STD,
                                                  "EF")),
            ("seg", "unet_small", SEG_KW, InputSpec("segmentation", SEG_SIZE, 3, None, None,
                                                    MEAN, STD))):
        save_checkpoint(root / sub / "model.pt", create_model(name, **kw),
                        {"model": {"name": name, "kwargs": kw}}, spec)
    return root


def _predict(run_dir: Path, source: Path, out: Path, labels: Path | None = None) -> Path:
    return predict(run_dir, source, out, batch_size=BATCH, all_clips_stride=ALL_CLIPS_STRIDE,
                   labels=labels)


def _check_outputs(out: Path, expected_frames: dict[str, int]) -> pd.DataFrame:
    """One row per video, EF finite, n_frames right, one frames.csv row per frame."""
    preds = pd.read_csv(out / "predictions.csv", dtype={"sample_id": str})
    assert list(preds.columns) == ["sample_id", "patient_id", *PREDICTION_COLUMNS[1:],
                                   "ef_beat_sd", "ef_beat_sd_flag"]
    assert sorted(preds["sample_id"]) == sorted(expected_frames)
    assert np.isfinite(preds[["ef_one_clip", "ef_all_clips", "ef"]].to_numpy()).all()
    assert dict(zip(preds["sample_id"], preds["n_frames"], strict=True)) == expected_frames
    frames = pd.read_csv(out / "frames.csv", dtype={"sample_id": str})
    assert list(frames.columns) == FRAME_COLUMNS
    assert frames.groupby("sample_id").size().to_dict() == expected_frames
    assert (frames["lv_area"].between(0, SEG_SIZE * SEG_SIZE)).all()
    beats = pd.read_csv(out / "beats.csv", dtype={"sample_id": str})
    assert list(beats.columns) == BEAT_COLUMNS
    used = beats[beats["used"] == 1]
    assert used.groupby("sample_id").size().reindex(preds["sample_id"], fill_value=0) \
        .tolist() == preds["n_beats"].tolist()
    past = beats[beats["flag"] == "past_end"].groupby("sample_id").size()
    assert past.reindex(preds["sample_id"], fill_value=0).tolist() == \
        preds["n_beats_past_end"].tolist()
    assert len(pd.read_csv(out / "problems.csv")) == 0
    for sid, n in expected_frames.items():
        with np.load(out / "masks" / f"{sid}.npz") as data:
            assert data["mask"].shape == (n, SEG_SIZE, SEG_SIZE)
    return preds


def _filelist(root: Path) -> pd.DataFrame:
    table = pd.read_csv(root / "FileList.csv")
    table["sample_id"] = table["FileName"].str.replace(".avi", "", regex=False)
    return table.set_index("sample_id")


@pytest.mark.slow
def test_every_echonet_mini_video(run_dir: Path, tmp_path: Path) -> None:
    root = real_path("echonet-mini")
    videos = root / "Videos"
    table = _filelist(root).loc[[p.stem for p in sorted(videos.glob("*.avi"))]]
    out = _predict(run_dir, videos, tmp_path, labels=root / "FileList.csv")
    preds = _check_outputs(out, table["NumberOfFrames"].astype(int).to_dict()) \
        .set_index("sample_id").loc[table.index]
    np.testing.assert_allclose(preds["fps"], table["FPS"])
    metrics = evaluate_echonet_predictions(out, tmp_path / "eval", Options(extra={"n_boot": 10}))
    assert metrics["n_evaluated"] == len(table)  # labels found through run.json
    assert metrics["ef_mae"] == pytest.approx((preds["ef"] - table["EF"]).abs().mean())


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["Videos", "three_case"])
def test_every_echonet_extra_video(run_dir: Path, tmp_path: Path, folder: str) -> None:
    root = real_path("echonet-extra")
    videos = root / folder
    table = _filelist(root).loc[[p.stem for p in sorted(videos.glob("*.avi"))]]
    out = _predict(run_dir, videos, tmp_path, labels=root / "FileList.csv")
    preds = _check_outputs(out, table["NumberOfFrames"].astype(int).to_dict())
    metrics = evaluate_echonet_predictions(out, tmp_path / "eval",
                                           Options(labels=root / "FileList.csv",
                                                   extra={"n_boot": 10}))
    assert metrics["n_evaluated"] == len(preds)


@pytest.mark.filterwarnings("ignore:.*SequenceOfUltrasoundRegions")  # header of the original
def test_real_ultrasound_dicom(run_dir: Path, tmp_path: Path) -> None:
    dcm = real_path("echo-dicom", "examples_ybr_color.dcm")
    out = _predict(run_dir, dcm, tmp_path)
    preds = _check_outputs(out, {dcm.stem: DICOM_FRAMES})
    assert preds["fps"].tolist() == pytest.approx([DICOM_FPS], rel=1e-3)
