"""Issue 14 (EchoNet-Dynamic): frame-rate normalisation, per-beat flags and counts, per-clip
predictions, EDV/ESV by the method of discs, the collapse detector, small-cohort warnings
and refused bootstrap CIs; every value checked against a hand-computed one."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.draw import ellipse
from test_echonet_predict import (
    EF_KW,
    SEG_KW,
    SIZE,
    _ef_spec,
    _noise,
    _seg_spec,
)
from torch import nn

from cinelab.evaluate import metrics as em
from cinelab.infer.contract import read_run
from cinelab.io.video import write_video
from cinelab.models.registry import create_model
from cinelab.pipelines.echonet.api import evaluate_echonet_predictions
from cinelab.pipelines.echonet.predict import predict
from cinelab.pipelines.echonet.tables import CLIP_COLUMNS, mask_disc_volume
from cinelab.pipelines.echonet.video import predict_video, resample_to_fps
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from cinelab.train.fit import small_cohort_note


def _save(path: Path, name: str, kwargs: dict, spec: InputSpec, extra: dict | None = None
          ) -> Path:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    return save_checkpoint(path, model, {"model": {"name": name, "kwargs": kwargs}}, spec,
                           extra)


# -- frame rate ----------------------------------------------------------------------------


def test_resample_to_fps_hand_computed() -> None:
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None]
    out, fps = resample_to_fps(frames, 30.0, 50.0)
    # frame k at 50 fps shows time k/50 s = source frame k * 30/50 = 0.6 k, nearest
    assert out[:, 0, 0, 0].tolist() == [0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6, 7, 7, 8, 8, 9]
    assert fps == 50.0
    down, fps = resample_to_fps(np.arange(10, dtype=np.uint8), 50.0, 25.0)
    assert down.tolist() == [0, 2, 4, 6, 8] and fps == 25.0
    same, fps = resample_to_fps(frames, 50.2, 50.0)  # within 1 %: unchanged
    assert same is frames and fps == 50.2
    unknown, fps = resample_to_fps(frames, None, 50.0)
    assert unknown is frames and fps is None


@pytest.fixture(scope="module")
def fps_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EF checkpoint trained at 50 fps, a segmenter, one 30-fps video of 24 frames."""
    root = tmp_path_factory.mktemp("fps")
    _save(root / "run" / "ef" / "model.pt", "tiny_video", EF_KW, _ef_spec(), {"fps": 50.0})
    _save(root / "run" / "seg" / "model.pt", "unet_small", SEG_KW, _seg_spec())
    write_video(root / "videos" / "a.avi", _noise(1, 24, SIZE, SIZE), 30)
    return root


@pytest.mark.slow
def test_predict_resamples_to_the_training_frame_rate(fps_run: Path, tmp_path: Path) -> None:
    out = predict(fps_run / "run", fps_run / "videos", tmp_path / "p", batch_size=4)
    run = read_run(out)
    assert run["frame_rate"]["target_fps"] == 50.0 and run["frame_rate"]["source"] == \
        "checkpoint" and "resampled to 50 fps" in run["frame_rate"]["note"]
    preds = pd.read_csv(out / "predictions.csv")
    # masks and frames stay in the video's 24 frames; EF clips come from 24 frames at 30 fps
    # -> floor(23 * 50 / 30) + 1 = 39 frames at 50 fps
    assert preds.loc[0, "n_frames"] == 24 and preds.loc[0, "ef_fps"] == 50.0
    assert preds.loc[0, "fps"] == pytest.approx(30.0, rel=1e-3)
    assert len(pd.read_csv(out / "frames.csv")) == 24
    clips = pd.read_csv(out / "clips.csv")
    assert list(clips.columns) == CLIP_COLUMNS
    # every start where a clip of 8 frames every 2nd (span 15) fits in 39 frames: 0..24
    assert clips["clip_start"].tolist() == list(range(39 - 15 + 1))
    assert clips["ef"].mean() == pytest.approx(preds.loc[0, "ef_all_clips"])
    assert clips.loc[0, "ef"] == pytest.approx(preds.loc[0, "ef_one_clip"])
    off = predict(fps_run / "run", fps_run / "videos", tmp_path / "q", batch_size=4, fps=None)
    assert pd.read_csv(off / "clips.csv")["clip_start"].max() == 24 - 15
    assert read_run(off)["frame_rate"]["target_fps"] is None


# -- beats: flags, counts, volumes ----------------------------------------------------------

N_FRAMES, CLIP, PERIOD = 60, 8, 2  # offset 8, span 15, last start 45
ES = [5, 20, 35, 55]  # 5 - 8 < 0: clipped_start; 55 - 8 = 47 > 45: past_end
ED = [12, 27, 47]
BIG, SMALL = (28, 14), (22, 11)  # LV ellipse semi-axes (rows, cols) at ED and ES


class _Index(nn.Module):
    """A fake segmenter drawing the ED or ES ellipse (the frame index in pixel (0, 0))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], 1, x.shape[-2], x.shape[-1]), -10.0)
        for i, t in enumerate(x[:, 0, 0, 0].round().long().tolist()):
            axes = SMALL if t in ES else BIG if t in ED else (25, 12)
            rr, cc = ellipse(32, 32, *axes, shape=(64, 64))
            out[i, 0, rr, cc] = 10.0
        return out


class _LastFrame(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, -1, 0, 0][:, None]


def _video() -> np.ndarray:
    frames = np.zeros((N_FRAMES, 64, 64, 3), dtype=np.uint8)
    frames[:, 0, 0, :] = np.arange(N_FRAMES)[:, None]
    return frames


def _spec(task: str, clip: int | None) -> InputSpec:
    return InputSpec(task, 64, 3, clip, PERIOD if clip else None, [0.0] * 3, [1.0] * 3)


def test_per_beat_flags_counts_and_volumes() -> None:
    pred = predict_video(_LastFrame(), _Index(), _video(), 50.0, _spec("video", CLIP),
                         _spec("segmentation", None), spacing=(0.5, 0.5))
    beats = pd.DataFrame(pred.beats)
    assert pred.es.tolist() == ES
    assert beats["flag"].tolist() == ["clipped_start", "", "", "past_end"]
    assert beats["used"].tolist() == [1, 1, 1, 0]
    assert beats["clip_start"].tolist() == [0, 12, 27, 47]
    # the fake EF model returns each clip's last frame: start + 14
    assert beats["ef"].tolist()[:3] == [14.0, 26.0, 41.0] and math.isnan(beats["ef"].iloc[3])
    row = pred.summary()
    assert row["ef_fps"] == 50.0 and row["n_beats"] == 3
    assert row["n_beats_clipped"] == 1 and row["n_beats_past_end"] == 1
    assert row["fallback"] == "" and row["ef"] == pytest.approx((14 + 26 + 41) / 3)
    # prolate spheroid 4/3 pi a b^2 with a, b in mm (0.5 mm pixels): the discs are within 3 %
    edv = 4 / 3 * math.pi * (BIG[0] * 0.5) * (BIG[1] * 0.5) ** 2 / 1000
    esv = 4 / 3 * math.pi * (SMALL[0] * 0.5) * (SMALL[1] * 0.5) ** 2 / 1000
    assert row["edv"] == pytest.approx(edv, rel=0.03)
    assert row["esv"] == pytest.approx(esv, rel=0.03)
    assert beats["edv"].iloc[0] is None or math.isnan(beats["edv"].iloc[0])  # no ED before 5
    no_spacing = predict_video(_LastFrame(), _Index(), _video(), 50.0, _spec("video", CLIP),
                               _spec("segmentation", None)).summary()
    assert math.isnan(no_spacing["edv"]) and math.isnan(no_spacing["esv"])


def test_mask_disc_volume_anisotropic_pixels() -> None:
    mask = np.zeros((120, 120), dtype=bool)
    rr, cc = ellipse(60, 60, 40, 20, shape=mask.shape)  # rows x 1 mm, cols x 0.5 mm
    mask[rr, cc] = True
    expected = 4 / 3 * math.pi * 40.0 * 10.0**2 / 1000  # a = 40 mm, b = 10 mm
    assert mask_disc_volume(mask, (1.0, 0.5)) == pytest.approx(expected, rel=0.04)
    assert math.isnan(mask_disc_volume(np.zeros((5, 5), bool), (1.0, 1.0)))


# -- the collapse detector ------------------------------------------------------------------


def test_baseline_comparison_hand_computed() -> None:
    y = np.array([30.0, 40.0, 50.0, 60.0, 70.0] * 4)
    good = em.baseline_comparison(y, y + 1.0, 50.0, n_boot=200)
    # baseline MAE = mean |y - 50| = 12, model MAE = 1: gain 11, always > 0
    assert good["mae_gain"]["value"] == pytest.approx(11.0) and good["mae_gain"]["ci_low"] > 0
    assert good["warning"] is None and not good["not_better"] and not good["collapsed"]
    flat = em.baseline_comparison(y, np.full_like(y, 52.0), 50.0, n_boot=200)
    # model MAE = mean |y - 52| = (22 + 12 + 2 + 8 + 18) / 5 = 12.4: gain -0.4
    assert flat["mae_gain"]["value"] == pytest.approx(-0.4)
    assert flat["not_better"] and flat["collapsed"] and flat["spread_ratio"] == 0.0
    assert "not better than the predict-the-mean baseline" in flat["warning"]
    assert "collapsed" in flat["warning"]


@pytest.mark.slow
def test_under_trained_ef_model_triggers_the_warning(fps_run: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """An EF model with no training at all (its initial weights) on 12 labelled videos."""
    videos = tmp_path / "videos"
    efs = np.linspace(20.0, 75.0, 12)
    for i in range(12):
        write_video(videos / f"v{i}.avi", _noise(10 + i, 20, SIZE, SIZE), 50)
    pd.DataFrame({"FileName": [f"v{i}.avi" for i in range(12)], "EF": efs,
                  "Split": ["TEST"] * 12}).to_csv(tmp_path / "FileList.csv", index=False)
    out = predict(fps_run / "run" / "ef" / "model.pt", videos, tmp_path / "p", batch_size=8,
                  labels=tmp_path / "FileList.csv", all_clips_stride=3)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = evaluate_echonet_predictions(out, tmp_path / "e",
                                            Options(labels=tmp_path / "FileList.csv",
                                                    extra={"n_boot": 100}))
    assert flat["ef_not_better_than_baseline"] is True
    assert "not better than the predict-the-mean baseline" in flat["ef_collapse_warning"]
    assert flat["ef_mae_gain"] < 0 and flat["ef_mae_gain_ci_low"] < 0
    assert any("not better than the predict-the-mean" in r.message for r in caplog.records)


# -- small cohorts and refused CIs ------------------------------------------------------------


def test_small_cohort_note() -> None:
    note = small_cohort_note(24, 16)  # one batch of 16, the other 8 dropped
    assert note is not None and "24 training item(s) at batch size 16 give 1 optimiser" in note
    assert "(8 item(s) of the partial last batch dropped" in note
    assert "data.batch_size=6" in note
    assert "give 1 optimiser step(s)" in small_cohort_note(12, 16)  # one batch of 12
    assert small_cohort_note(32, 16) is None  # two steps


def test_bootstrap_ci_refused_with_one_positive() -> None:
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    with pytest.warns(RuntimeWarning, match="1 positive and 7 negative"):
        report = em.binary_report(y, score, threshold=0.5, n_boot=50)
    assert report["auc"]["value"] == 1.0
    assert math.isnan(report["auc"]["ci_low"]) and math.isnan(report["auc"]["ci_high"])
    assert report["ci_refused"] == ("bootstrap CIs refused: 1 positive and 7 negative case(s); "
                                    "each class needs at least 2")
    ok = em.binary_report(np.r_[y, 1, 1], np.r_[score, 0.8, 0.05], threshold=0.5, n_boot=50)
    assert ok["ci_refused"] is None and np.isfinite(ok["auc"]["ci_low"])
    assert ok["ci_flag"].startswith("bootstrap CIs unreliable: 3 positive and 7 negative")


def test_beat_clips_at_the_training_frame_rate() -> None:
    """At 25 fps with a 50-fps EF model the ES frames 5, 20, 35, 55 map to 10, 40, 70, 110 of
    the 119 resampled frames (last start 104): starts 2, 32, 62 and 102; none clipped or past
    the end; beats.csv keeps the video's own ES frames."""
    pred = predict_video(_LastFrame(), _Index(), _video(), 25.0, _spec("video", CLIP),
                         _spec("segmentation", None), target_fps=50.0)
    beats = pd.DataFrame(pred.beats)
    assert beats["es_frame"].tolist() == ES and beats["flag"].tolist() == [""] * 4
    assert beats["clip_start"].tolist() == [2, 32, 62, 102]
    # the fake EF model returns the source frame shown last in each clip: the resampled
    # frame start + 14 shows source frame rint((start + 14) / 2)
    assert beats["ef"].tolist() == [8.0, 23.0, 38.0, 58.0]
    assert pred.ef_fps == 50.0 and pred.n_frames == N_FRAMES
