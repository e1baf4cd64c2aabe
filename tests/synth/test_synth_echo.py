"""Synthetic echo cohorts: EchoNet layout, determinism, EF from own tracings, masks, rhythm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.io.video import probe_video, read_video
from cinelab.measure.ef import (
    disc_volume,
    ef_from_tracings,
    ef_from_volumes,
    tracing_mask,
    tracings_from_echonet_csv,
)
from cinelab.synth.echo import FILELIST_COLUMNS, echo_phantom_video, synth_echo_cohort

SMALL = {"frames_range": (20, 30), "fps_range": (30, 34)}  # short videos keep tests fast
REAL_COLUMNS = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS",
                "NumberOfFrames", "Split"]
LINES = ["X1", "Y1", "X2", "Y2"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("echo") / "cohort"
    return synth_echo_cohort(out, n=8, seed=3, irregular_fraction=0.25, **SMALL)


@pytest.fixture(scope="module")
def filelist(cohort):
    return pd.read_csv(cohort / "FileList.csv")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.slow
def test_layout_and_columns(cohort, filelist):
    assert filelist.columns.tolist() == FILELIST_COLUMNS
    assert filelist.columns[: len(REAL_COLUMNS)].tolist() == REAL_COLUMNS
    assert len(filelist) == 8 and filelist.FileName.is_unique
    assert not filelist.FileName.str.endswith(".avi").any()
    assert set(filelist.Split) == {"TRAIN", "VAL", "TEST"}
    assert filelist.Irregular.sum() == 2
    assert ((filelist.FrameHeight == 112) & (filelist.FrameWidth == 112)).all()
    for row in filelist.itertuples():
        info = probe_video(cohort / "Videos" / f"{row.FileName}.avi")
        assert (info.frames, info.height, info.width) == (row.NumberOfFrames, 112, 112)
        assert info.fps == pytest.approx(row.FPS)
        mask = np.load(cohort / "Masks" / f"{row.FileName}.npz")["mask"]
        assert mask.dtype == np.uint8 and mask.shape == (row.NumberOfFrames, 112, 112)
        assert set(np.unique(mask)) == {0, 1}
        truth = pd.read_csv(cohort / "Truth" / f"{row.FileName}.csv")
        assert truth.columns.tolist() == ["frame", "lv_area_px", "lv_volume", "is_ed", "is_es"]
        assert len(truth) == row.NumberOfFrames
        np.testing.assert_array_equal(truth.lv_area_px, mask.reshape(len(mask), -1).sum(1))
    raw = pd.read_csv(cohort / "VolumeTracings.csv")
    assert raw.columns.tolist() == ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
    assert raw.FileName.str.endswith(".avi").all()
    assert (raw.groupby("FileName").size() == 42).all()


def test_filelist_ef_equals_method_of_discs_on_own_tracings(cohort, filelist):
    tracings = tracings_from_echonet_csv(pd.read_csv(cohort / "VolumeTracings.csv"))
    table, problems = ef_from_tracings(tracings)
    assert problems == []
    merged = table.merge(filelist, left_on="sample_id", right_on="FileName",
                         suffixes=("", "_fl"))
    assert len(merged) == len(filelist)
    assert (merged.EF - merged.EF_fl).abs().max() <= 0.5
    assert ((merged.EF_fl > 10) & (merged.EF_fl < 85)).all()
    assert (merged.EDV_fl > merged.ESV_fl).all()
    for row in merged.itertuples():
        truth = pd.read_csv(cohort / "Truth" / f"{row.sample_id}.csv")
        assert truth.is_ed[row.ed_frame] == 1 and truth.is_es[row.es_frame] == 1
        assert truth.lv_volume[row.ed_frame] == pytest.approx(row.EDV_fl, rel=1e-6)


def test_tracings_follow_phantom_masks(cohort):
    tracings = tracings_from_echonet_csv(pd.read_csv(cohort / "VolumeTracings.csv"))
    for (sample_id, frame), lines in tracings.groupby(["sample_id", "frame"]):
        mask = np.load(cohort / "Masks" / f"{sample_id}.npz")["mask"][frame].astype(bool)
        traced = tracing_mask(lines[LINES].to_numpy(), mask.shape)
        assert dice(traced, mask) > 0.8


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(cohort, filelist, tmp_path):
    again = synth_echo_cohort(tmp_path / "again", n=8, seed=3, irregular_fraction=0.25,
                              **SMALL)
    pd.testing.assert_frame_equal(pd.read_csv(again / "FileList.csv"), filelist)
    for name in filelist.FileName[:3]:
        assert ((again / "Videos" / f"{name}.avi").read_bytes()
                == (cohort / "Videos" / f"{name}.avi").read_bytes())
    other = synth_echo_cohort(tmp_path / "other", n=2, seed=4, **SMALL)
    assert not pd.read_csv(other / "FileList.csv").EF.isin(filelist.EF).any()


def test_irregular_videos_have_variable_rr(cohort, filelist):
    spread = {}
    for row in filelist.itertuples():
        truth = pd.read_csv(cohort / "Truth" / f"{row.FileName}.csv")
        rr = np.diff(truth.frame[truth.is_ed == 1].to_numpy()) / row.FPS
        assert len(rr) >= (2 if row.Irregular else 1)
        spread[row.FileName] = (rr.max() - rr.min()) / rr.mean()
    irregular = [spread[n] for n in filelist.FileName[filelist.Irregular == 1]]
    regular = [spread[n] for n in filelist.FileName[filelist.Irregular == 0]]
    assert len(irregular) == 2 and min(irregular) > max(0.12, max(regular))


@pytest.mark.slow
def test_ef_is_not_encoded_in_brightness(tmp_path):
    root = synth_echo_cohort(tmp_path / "c30", n=30, seed=11, frames_range=(20, 24),
                             fps_range=(30, 30))
    filelist = pd.read_csv(root / "FileList.csv")
    brightness, cavity = [], []
    for name in filelist.FileName:
        frames = read_video(root / "Videos" / f"{name}.avi").frames[..., 0].astype(float)
        mask = np.load(root / "Masks" / f"{name}.npz")["mask"].astype(bool)
        brightness.append(frames.mean())
        cavity.append(frames[mask].mean())
    assert filelist.EF.std() > 5
    assert abs(np.corrcoef(brightness, filelist.EF)[0, 1]) < 0.5
    assert abs(np.corrcoef(cavity, filelist.EF)[0, 1]) < 0.5


def test_phantom_video_truth():
    frames, masks, truth = echo_phantom_video(np.random.default_rng(0), size=96, ef=35.0,
                                              heart_rate=75.0, fps=30.0, n_frames=60)
    assert frames.shape == masks.shape == (60, 96, 96) and frames.dtype == np.uint8
    assert len(truth.table) == 60 and truth.lines.shape == (60, 21, 4)
    assert truth.beats and truth.table.is_ed.sum() >= 2
    ed, es = truth.beats[0]
    ef = ef_from_volumes(disc_volume(truth.lines[ed]), disc_volume(truth.lines[es]))
    assert abs(ef - 35.0) < 10
    assert masks[ed].sum() > masks[es].sum()
    assert frames[:, 0, 0].max() == 0 and frames[:, -1, -1].max() == 0  # outside the fan
    y0, x0, y1, x1 = truth.region
    assert 0 <= y0 < y1 <= 96 and 0 <= x0 < x1 <= 96
    inside, outside = frames[:, masks[ed] > 0].mean(), frames[:, y0:y1, x0:x1].mean()
    assert inside < outside  # a dark blood pool inside brighter tissue


def test_dicom_copies(tmp_path):
    pytest.importorskip("cinelab.synth.dicom")
    dicom_io = pytest.importorskip("cinelab.io.dicom")
    root = synth_echo_cohort(tmp_path / "d", n=1, seed=5, dicom=True, **SMALL)
    row = pd.read_csv(root / "FileList.csv").iloc[0]
    video = dicom_io.read_ultrasound(root / "DICOM" / f"{row.FileName}.dcm")
    assert video.n_frames == row.NumberOfFrames
    assert video.fps == pytest.approx(row.FPS)
    assert video.frames.shape[1:3] == (112, 112)
    assert video.pixel_spacing_mm is not None and 1.0 < video.pixel_spacing_mm[0] < 2.5
    assert video.patient_id == row.FileName


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"irregular_fraction": 1.5}, {"size": 8}])
def test_bad_cohort_arguments_name_the_field(tmp_path, kwargs):
    with pytest.raises(InputError) as err:
        synth_echo_cohort(tmp_path / "bad", **{"n": 1, **kwargs})
    assert err.value.field == next(iter(kwargs))
    assert not (tmp_path / "bad").exists()
