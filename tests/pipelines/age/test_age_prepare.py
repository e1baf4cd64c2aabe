"""Cine preparation: exact 25-frame resampling, heart crop, the store preparer on DICOM series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.pipelines.age.layout import ingest_lax
from cinelab.pipelines.age.prepare import (
    TARGET_FRAMES,
    centre_box,
    cycle_times,
    heart_box,
    preprocess_cine,
    resample_cycle,
)
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.prep.prepare import PREPARERS, PrepSpec, prepare

RR_MS = 800.0


def ramp(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose every pixel equals the frame index; trigger times evenly over RR_MS."""
    frames = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 2, 3)).copy()
    return frames, np.arange(n) * RR_MS / n + 12.0  # t0 need not be 0


def test_thirty_frames_to_25_is_linear_in_time() -> None:
    frames, times = ramp(30)
    out = resample_cycle(frames, times)
    # output k sits at k * 800 / 25 ms = acquired frame position k * 30 / 25 = 1.2 k
    expected = 1.2 * np.arange(TARGET_FRAMES)
    assert out.shape == (25, 2, 3)
    np.testing.assert_allclose(out[:, 0, 0], expected, atol=1e-5)
    assert np.all(out == out[:, :1, :1])


def test_twenty_frames_to_25_wraps_over_the_cycle() -> None:
    frames, times = ramp(20)
    out = resample_cycle(frames, times)[:, 1, 2]
    expected = 0.8 * np.arange(TARGET_FRAMES)  # positions 0, 0.8, ..., 19.2
    # position 19.2 lies between the last frame (19) and the first frame of the next cycle (0)
    expected[-1] = 0.8 * 19 + 0.2 * 0
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out[-1] == pytest.approx(15.2)


def test_25_frames_are_kept_and_missing_times_mean_even_spacing() -> None:
    frames, times = ramp(25)
    np.testing.assert_allclose(resample_cycle(frames, times), frames, atol=1e-6)
    np.testing.assert_allclose(resample_cycle(frames, None), frames, atol=1e-6)
    np.testing.assert_allclose(resample_cycle(*ramp(30)), resample_cycle(ramp(30)[0], None),
                               atol=1e-5)


def test_cycle_times_fall_back_on_repeated_times() -> None:
    t, rr, source = cycle_times(np.array([0.0, 40.0, 40.0, 120.0]), 4)
    assert source == "index" and rr == 4.0 and list(t) == [0, 1, 2, 3]
    t, rr, source = cycle_times(np.array([10.0, 50.0, 90.0]), 3)
    assert source == "TriggerTime" and rr == pytest.approx(120.0) and t[0] == 0


def test_heart_box_follows_motion() -> None:
    rng = np.random.default_rng(0)
    frames = rng.normal(100, 2, (25, 60, 80)).astype(np.float32)
    radius = 5 + 3 * np.sin(np.linspace(0, 2 * np.pi, 25))
    yy, xx = np.mgrid[:60, :80]
    for t, r in enumerate(radius):
        frames[t][(yy - 20) ** 2 + (xx - 55) ** 2 < r ** 2] = 250
    y0, x0, y1, x1 = heart_box(frames, 30)
    assert (y1 - y0, x1 - x0) == (30, 30)
    assert abs((y0 + y1) / 2 - 20) <= 6 and abs((x0 + x1) / 2 - 55) <= 2
    assert centre_box((60, 80)) == (0, 10, 60, 70)


def test_preprocess_cine_shapes_and_crops() -> None:
    frames, times = ramp(20)
    big = np.repeat(np.repeat(frames, 20, axis=1), 20, axis=2)  # (20, 40, 60)
    out, info = preprocess_cine(big, times, size=16, crop="centre", channels=3)
    assert out.shape == (25, 16, 16, 3) and out.dtype == np.uint8
    assert info["box"] == [0, 10, 40, 50]
    out, _ = preprocess_cine(big, times, size=16, crop="never", spacing_mm=(1.0, 1.0))
    assert out.shape == (25, 16, 16, 1)
    with pytest.raises(InputError, match="crop"):
        preprocess_cine(big, times, size=16, crop="lungs")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lax")
    synth_cmr_lax_cohort(root / "cohort", n=3, seed=1, size=40, frame_choices=(20, 30),
                         missing_rate=0.0, extra_rate=0.0)
    ingest_lax(root / "cohort" / "dicom", root / "cohort" / "ages.csv", root / "ingest")
    return root


def test_store_preparer_is_registered_and_prepares_series(cohort: Path) -> None:
    assert "cine" in PREPARERS
    manifest = pd.read_csv(cohort / "ingest" / "manifest.csv", dtype=str)
    bad = manifest.iloc[:1].assign(sample_id="broken", path=str(cohort / "nothing.csv"))
    summary = prepare(pd.concat([manifest, bad]), cohort / "store",
                      PrepSpec(size=24, channels=1), workers=1)
    assert summary.prepared == 6 and summary.failed == 1
    store = PreparedStore(cohort / "store")
    for sid in store.ids:
        assert store.frames(sid).shape == (25, 24, 24, 1)
        meta = store.meta(sid)
        assert meta["fps_source"] == "TriggerTime" and meta["original_frames"] in (20, 30)
        assert meta["fps"] == pytest.approx(25 / (meta["cycle_ms"] / 1000))
    assert set(store.manifest["view"]) == {"3ch", "4ch"}
    again = prepare(manifest, cohort / "store", PrepSpec(size=24, channels=1), workers=1)
    assert again.skipped == 6 and again.prepared == 0
