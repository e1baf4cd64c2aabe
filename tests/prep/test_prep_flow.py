"""Optical flow: a known translation is recovered, quantisation round-trips within its scale,
unavailable methods say why, and prepare_flow writes flow beside the frames resumably."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cinelab.data.manifest import new_manifest
from cinelab.data.store import sample_files
from cinelab.errors import MissingWeightsError
from cinelab.prep.flow import (
    FlowUnavailableError,
    available_methods,
    compute_flow,
    dequantise_flow,
    flow_files,
    prepare_flow,
    quantise_flow,
    read_flow,
    tvl1_available,
)
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.utils import read_json

DX, DY = 2.0, -1.0
MARGIN = 8  # px of border left out of the comparison (content enters and leaves there)


def _texture(size: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).uniform(0, 255, (size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def translating(frames: int = 5, size: int = 48, dx: int = 2, dy: int = -1) -> np.ndarray:
    """(T, H, W) uint8: a texture moving by (dx, dy) px per frame (right, down)."""
    tex = _texture(size + 2 * frames * max(abs(dx), abs(dy)) + 2)
    o = frames * max(abs(dx), abs(dy)) + 1
    return np.stack([tex[o - t * dy:o - t * dy + size, o - t * dx:o - t * dx + size]
                     for t in range(frames)])


def _interior_median(flow: np.ndarray) -> np.ndarray:
    return np.median(flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN].reshape(-1, 2), axis=0)


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_farneback_recovers_a_known_translation(channels: int | None) -> None:
    frames = translating()
    if channels is not None:
        frames = np.repeat(frames[..., None], channels, axis=-1)
    flow = compute_flow(frames)
    assert flow.shape == (4, 48, 48, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(_interior_median(flow), [DX, DY], atol=0.5)


def test_quantise_round_trip_within_scale() -> None:
    flow = np.random.default_rng(1).normal(0, 3, (4, 16, 16, 2)).astype(np.float32)
    q, scale = quantise_flow(flow)
    assert q.dtype == np.uint8 and q.shape == flow.shape
    assert scale == pytest.approx(np.abs(flow).max())
    assert np.abs(dequantise_flow(q, scale) - flow).max() <= scale / 127
    q_fixed, fixed = quantise_flow(flow, scale=2.0)  # a cohort-wide scale clips beyond it
    back = dequantise_flow(q_fixed, fixed)
    inside = np.abs(flow) <= fixed
    assert np.abs(back - flow)[inside].max() <= fixed / 127
    assert np.abs(back[~inside]).max() <= fixed * (1 + 1 / 127)
    zeros, tiny = quantise_flow(np.zeros((1, 4, 4, 2), np.float32))
    assert tiny > 0 and np.all(dequantise_flow(zeros, tiny) == 0)


def test_tvl1_runs_or_says_what_to_install() -> None:
    if tvl1_available():
        assert "tvl1" in available_methods()
        np.testing.assert_allclose(_interior_median(compute_flow(translating(), "tvl1")),
                                   [DX, DY], atol=0.5)
    else:
        assert available_methods() == ["farneback"]
        with pytest.raises(FlowUnavailableError, match="opencv-contrib"):
            compute_flow(translating(), "tvl1")


def test_raft_needs_a_local_weights_file_and_runs_batched(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("CINELAB_WEIGHTS", str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match="raft_large_C_T_SKHT_V2-ff5fadd5.pth"):
        compute_flow(translating(), "raft")
    with pytest.raises(MissingWeightsError, match="never downloads"):
        compute_flow(translating(), "raft_small", raft_weights=tmp_path / "nope.pth")
    torch = pytest.importorskip("torch")
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights = tmp_path / "raft_small_random.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)  # random: checks plumbing
    assert "raft" in available_methods(weights)
    flow = compute_flow(translating(frames=4, size=36), "raft_small", raft_weights=weights,
                        batch_size=2)
    assert flow.shape == (3, 36, 36, 2) and flow.dtype == np.float32
    assert np.isfinite(flow).all()
    store = _prepared(tmp_path, n=1, frames=3)
    summary = prepare_flow(store, "raft_small", raft_weights=weights, workers=4)
    assert (summary.computed, summary.failed) == (1, 0)
    params = read_json(flow_files(store, "v0")["meta"])["params"]
    assert params["weights"] == weights.name and len(params["weights_hash"]) == 16
    assert prepare_flow(store, "raft_small", raft_weights=weights).skipped == 1




def _prepared(tmp_path: Path, n: int = 3, frames: int = 6) -> Path:
    """A prepared store written directly (frames of a known translation)."""
    from cinelab.data.store import write_sample

    store = tmp_path / "store"
    rows = []
    for i in range(n):
        frames_i = np.repeat(translating(frames=frames)[..., None], 3, axis=-1)
        write_sample(store, f"v{i}", frames_i, {"source_hash": f"h{i}", "fps": 30.0})
        rows.append({"sample_id": f"v{i}", "path": f"v{i}.avi"})
    new_manifest(rows).to_csv(store / "manifest.csv", index=False)
    (store / "store.json").write_text('{"format": "cinelab-store/1", "status": "complete"}')
    return store


def test_prepare_flow_writes_beside_frames_and_resumes(tmp_path: Path) -> None:
    store = _prepared(tmp_path)
    first = prepare_flow(store, workers=1)
    assert (first.computed, first.skipped, first.failed) == (3, 0, 0)
    q = np.load(flow_files(store, "v0")["flow"])
    assert q.dtype == np.uint8 and q.shape == (6, 48, 48, 2)  # one flow per frame
    meta = read_json(flow_files(store, "v0")["meta"])
    assert meta["method"] == "farneback" and meta["scale"] > 0 and meta["shape"] == [6, 48, 48, 2]
    flow = read_flow(store, "v0")
    np.testing.assert_allclose(_interior_median(flow), [DX, DY], atol=0.5)
    np.testing.assert_array_equal(flow[-1], flow[-2])
    assert read_json(store / "store.json")["flow"]["samples"] == 3
    again = prepare_flow(store, workers=1)
    assert (again.computed, again.skipped) == (0, 3)
    flow_files(store, "v1")["meta"].unlink()  # an interrupted sample: only it is redone
    sample_meta = sample_files(store, "v2")["meta"]  # re-prepared frames: redone
    sample_meta.write_text(sample_meta.read_text().replace('"h2"', '"h2b"'))
    resumed = prepare_flow(store, workers=1)
    assert (resumed.computed, resumed.skipped) == (2, 1)
    forced = prepare_flow(store, workers=1, force=True, scale=4.0)
    assert forced.computed == 3 and read_json(flow_files(store, "v0")["meta"])["scale"] == 4.0


def test_prepare_flow_reports_a_bad_sample_and_keeps_the_rest(tmp_path: Path) -> None:
    store = _prepared(tmp_path)
    sample_files(store, "v1")["frames"].write_bytes(b"not an array")
    summary = prepare_flow(store, workers=1)
    assert (summary.computed, summary.failed) == (2, 1)
    assert "v1" in summary.problems[0].file and summary.problems[0].stage == "flow"
    assert (store / "flow_problems.csv").read_text().count("\n") == 2
    if not tvl1_available():  # an unavailable method fails up front, before any sample
        with pytest.raises(FlowUnavailableError):
            prepare_flow(store, method="tvl1")


@pytest.mark.slow
def test_prepare_flow_after_prepare_in_parallel(tmp_path: Path) -> None:
    from cinelab.io.video import write_video

    rows = []
    for i in range(2):
        frames = np.repeat(translating(frames=6)[..., None], 3, axis=-1)
        path = write_video(tmp_path / f"v{i}.avi", frames, fps=30)
        rows.append({"sample_id": f"v{i}", "path": str(path), "modality": "echo"})
    prepare(new_manifest(rows), tmp_path / "store", PrepSpec(size=48), workers=1)
    summary = prepare_flow(tmp_path / "store", workers=2)
    assert (summary.computed, summary.failed) == (2, 0)
    assert read_flow(tmp_path / "store", "v1").shape == (6, 48, 48, 2)
