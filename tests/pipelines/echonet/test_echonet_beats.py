"""ED/ES detection on synthetic LV area curves (regular and irregular) and beat clips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter1d

from cinelab.data.sampling import clip_indices
from cinelab.pipelines.echonet.beats import (
    Beat,
    BeatClip,
    area_ef,
    beat_clip_offset,
    beats_from_extrema,
    detect_ed_es,
    place_beat_clips,
    select_beat_clips,
)

FPS = 50.0
TOLERANCE = 2  # frames


def _area_curve(rng, n_beats=10, rr=40, jitter=0.3, noise=0.02, alternate=True, crop=7):
    """LV area (A = 10 + 5 * a) with variable RR, alternating strong/weak beats and noise.

    Returns the curve and the true ED/ES frames; the curve starts `crop` frames after an ED.
    """
    times, values, ed, es = [0], [1.0], [0], []
    t = 0
    for k in range(n_beats):
        n = int(round(rr * (1 + rng.uniform(-jitter, jitter))))
        systole = int(round(0.35 * n))
        weak = alternate and k % 2 == 1
        next_ed = 0.8 if alternate and k % 2 == 0 else 1.0
        times += [t + systole, t + n]
        values += [0.2 if weak else 0.0, next_ed]
        es.append(t + systole)
        t += n
        ed.append(t)
    a = gaussian_filter1d(np.interp(np.arange(t + 1), times, values), 1.5)
    a = 10 + 5 * (a + rng.normal(0, noise, len(a)))
    return a[crop:], np.array(ed) - crop, np.array(es) - crop


def _assert_recovered(found, truth, n):
    """Every interior true extremum is found within tolerance; nothing spurious is found."""
    truth = truth[(truth > 0) & (truth < n - 1)]
    for x in truth[1:-1]:  # the first and last extremum may be unconfirmable at the edges
        assert np.abs(found - x).min() <= TOLERANCE, (x, found)
    for x in found:
        assert np.abs(truth - x).min() <= TOLERANCE, (x, truth)


def test_regular_noise_free_curve_exact():
    rng = np.random.default_rng(0)
    area, ed, es = _area_curve(rng, jitter=0.0, noise=0.0, alternate=False)
    found_ed, found_es = detect_ed_es(area, fps=FPS)
    _assert_recovered(found_ed, ed, len(area))
    _assert_recovered(found_es, es, len(area))
    assert len(found_ed) >= 8 and len(found_es) >= 8


@pytest.mark.parametrize("seed", range(6))
def test_irregular_alternating_noisy_curve(seed):
    rng = np.random.default_rng(seed)
    area, ed, es = _area_curve(rng, jitter=0.3, noise=0.02, alternate=True)
    found_ed, found_es = detect_ed_es(area, fps=FPS, smooth=9)
    _assert_recovered(found_ed, ed, len(area))
    _assert_recovered(found_es, es, len(area))


def test_light_noise_without_smoothing_and_frame_distance():
    rng = np.random.default_rng(42)
    area, ed, es = _area_curve(rng, noise=0.005)
    found_ed, found_es = detect_ed_es(area, fps=None, min_distance_frames=8)
    _assert_recovered(found_ed, ed, len(area))
    _assert_recovered(found_es, es, len(area))


def test_threshold_does_not_depend_on_video_length():
    rng = np.random.default_rng(1)
    one, _, _ = _area_curve(rng, n_beats=4, jitter=0.0, noise=0.0, alternate=True, crop=0)
    beat = one[:80]  # exactly two beats (strong, weak) at rr=40 with no jitter
    counts = [len(detect_ed_es(np.tile(beat, k), fps=FPS)[1]) for k in (2, 20)]
    assert counts == [4, 40]


def test_constant_and_too_short_curves():
    ed, es = detect_ed_es(np.full(100, 3.0), fps=FPS)
    assert len(ed) == 0 and len(es) == 0
    ed, es = detect_ed_es(np.array([1.0, 2.0]), fps=FPS)
    assert len(ed) == 0 and len(es) == 0
    rng = np.random.default_rng(3)
    area, _, _ = _area_curve(rng, n_beats=2, jitter=0.0, noise=0.0)
    ed, es = detect_ed_es(area[:30], fps=FPS)
    assert len(beats_from_extrema(ed, es)) <= 1


def test_detect_rejects_bad_inputs():
    with pytest.raises(ValueError, match="area"):
        detect_ed_es(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="area"):
        detect_ed_es(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="fps"):
        detect_ed_es(np.arange(10.0), fps=0.0)


def test_beats_from_extrema_pairs_each_es_with_preceding_ed():
    beats = beats_from_extrema(np.array([10, 50, 90]), np.array([5, 25, 65, 70, 105]))
    assert beats == [Beat(10, 25), Beat(50, 65), Beat(90, 105)]
    assert beats_from_extrema(np.array([], dtype=int), np.array([3])) == []


def test_area_ef():
    area = np.array([10.0, 8.0, 4.0, 6.0])
    assert area_ef(area, Beat(0, 2)) == pytest.approx(60.0)
    with pytest.raises(ValueError):
        area_ef(np.zeros(4), Beat(0, 2))


def test_select_beat_clips_normal_and_subsampled():
    # 8 frames every 2nd: offset 8 frames before ES, span 15, last start 200 - 15 = 185
    starts, reason = select_beat_clips(np.array([40, 80, 120]), 200, 8, 2)
    assert reason == "" and starts == [32, 72, 112]
    assert [clip_indices(s, 8, 2, 200)[4] for s in starts] == [40, 80, 120]
    es = np.arange(40, 200, 20)
    starts, reason = select_beat_clips(es, 220, 8, 2, max_beats=3)
    assert reason == "" and [s + 8 for s in starts] == [40, 120, 180]


def test_select_beat_clips_fallbacks():
    assert select_beat_clips(np.array([], dtype=int), 200, 8, 2) == ([], "no_beats")
    assert select_beat_clips(np.array([5]), 10, 8, 2) == ([0], "short_video")
    assert select_beat_clips(np.array([6, 60]), 200, 8, 2) == ([0, 52], "")
    assert select_beat_clips(np.array([195]), 200, 8, 2) == ([], "beats_past_end")


def test_place_beat_clips_hand_computed_echonet_example():
    """32 frames every 2nd (EchoNet-Dynamic's model), 200 frames: offset 32, span 63,
    last all-clips start 137. ES 20 -> 20-32 < 0 -> start 0 (clipped_start, averaged);
    ES 70 -> 38; 120 -> 88; 170 -> 138 > 137 and 190 -> 158: past_end (not averaged)."""
    clips = place_beat_clips(np.array([120, 20, 190, 70, 170]), 200, 32, 2)
    assert clips == [BeatClip(20, 0, "clipped_start"), BeatClip(70, 38), BeatClip(120, 88),
                     BeatClip(170, 138, "past_end"), BeatClip(190, 158, "past_end")]
    assert [c.used for c in clips] == [True, True, True, False, False]
    assert beat_clip_offset(32, 2) == 32 and beat_clip_offset(16, 4) == 32


def test_place_beat_clips_equals_the_official_r_script():
    """beat_by_beat_analysis.R: Frame - 32, negative -> 0, inner merge with the all-clips
    predictions (filename, clip start, EF), mean per video."""
    rng = np.random.default_rng(3)
    n_total, frames, period = 180, 32, 2
    clip_ef = pd.DataFrame({"V1": "a", "V2": np.arange(n_total - 62),
                            "V3": rng.uniform(20, 80, n_total - 62)})
    es = np.array([10, 31, 33, 60, 101, 150, 170])
    size = pd.DataFrame({"Filename": "a", "Frame": es - 32})
    size.loc[size["Frame"] < 0, "Frame"] = 0
    merged = size.merge(clip_ef, left_on=["Filename", "Frame"], right_on=["V1", "V2"])
    official = merged["V3"].mean()
    clips = place_beat_clips(es, n_total, frames, period)
    ef = dict(zip(clip_ef["V2"], clip_ef["V3"], strict=True))
    ours = np.mean([ef[c.start] for c in clips if c.used])
    assert ours == pytest.approx(official, abs=1e-12)
    assert len(merged) == sum(c.used for c in clips) == 5
