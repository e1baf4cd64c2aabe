"""Beat detection on irregular-rhythm echo phantoms: every true ED/ES is found."""

from __future__ import annotations

import numpy as np
import pytest

from cinelab.pipelines.echonet.beats import beats_from_extrema, detect_ed_es, select_beat_clips
from cinelab.synth.echo import echo_phantom_video

TOLERANCE = 2  # frames
EDGE = 3  # an extremum this close to either end cannot be told from the curve's edge


def _nearest(found: np.ndarray, frame: int) -> int:
    return int(np.min(np.abs(found - frame))) if len(found) else 10**6


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_every_beat_of_an_irregular_phantom_is_found(seed: int) -> None:
    frames, masks, truth = echo_phantom_video(np.random.default_rng(seed), irregular=True)
    intervals = np.diff([ed for ed, _ in truth.beats])
    assert truth.irregular and len(truth.beats) >= 3
    area = masks.reshape(len(masks), -1).sum(1).astype(float)
    ed, es = detect_ed_es(area, fps=truth.fps)
    inside = [f for beat in truth.beats for f in beat if EDGE <= f < len(area) - EDGE]
    assert len(inside) >= 4
    for true_ed, true_es in truth.beats:
        if EDGE <= true_ed < len(area) - EDGE:
            assert _nearest(ed, true_ed) <= TOLERANCE, (seed, true_ed, ed)
        if EDGE <= true_es < len(area) - EDGE:
            assert _nearest(es, true_es) <= TOLERANCE, (seed, true_es, es)
    beats = beats_from_extrema(ed, es)
    assert len(beats) >= len(truth.beats) - 1
    if len(intervals) > 1:
        assert intervals.max() > intervals.min()  # the rhythm really is irregular


def test_one_clip_ends_at_each_detected_end_systole() -> None:
    frames, masks, truth = echo_phantom_video(np.random.default_rng(7), irregular=True)
    area = masks.reshape(len(masks), -1).sum(1).astype(float)
    _, es = detect_ed_es(area, fps=truth.fps)
    starts, _ = select_beat_clips(es, len(frames), frames=16, period=2, max_beats=5)
    centres = [s + 16 for s in starts]  # EchoNet: clip starts frames * period // 2 before ES
    full = [e for e in es if 16 <= e <= len(frames) - 31 + 16]
    assert full and all(e in centres for e in full)
