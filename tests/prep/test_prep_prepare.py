"""The prepared store: round trip, resumability after SIGKILL, problems, Dask, statistics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import PreparedStore, is_complete, sample_files
from cinelab.io.video import write_video
from cinelab.prep.prepare import PrepSpec, prepare


def _video(seed: int, frames: int = 20, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(20, 200, (size, size), dtype=np.uint8)
    shift = np.stack([np.roll(base, t, axis=1) for t in range(frames)])
    return np.repeat(shift[..., None], 3, axis=-1)


def _cohort(root: Path, n: int, frames: int = 20, size: int = 48) -> pd.DataFrame:
    rows = []
    for i in range(n):
        path = write_video(root / "Videos" / f"v{i:03d}.avi", _video(i, frames, size), fps=50)
        rows.append({"sample_id": f"v{i:03d}", "path": str(path), "modality": "echo",
                     "split": ["train", "val", "test"][i % 3], "EF": 40.0 + i})
    return new_manifest(rows)


def test_round_trip_reads_back_frames_and_metadata(tmp_path: Path) -> None:
    manifest = _cohort(tmp_path, 4)
    summary = prepare(manifest, tmp_path / "store", PrepSpec(size=32), workers=1)
    assert (summary.prepared, summary.failed) == (4, 0)
    store = PreparedStore(tmp_path / "store")
    assert store.ids == manifest["sample_id"].tolist()
    frames = store.frames("v000")
    assert isinstance(frames, np.memmap) and frames.shape == (20, 32, 32, 3)
    assert frames.dtype == np.uint8
    meta = store.meta("v000")
    assert meta["fps"] == pytest.approx(50) and meta["original_shape"] == [20, 48, 48, 3]
    assert meta["spec"]["size"] == 32 and len(meta["source_hash"]) == 16
    assert store.info["stats_from"] == "train" and len(store.mean) == 3
    train = np.concatenate([store.frames(s).reshape(-1, 3) for s in store.split_ids("train")])
    np.testing.assert_allclose(store.mean, train.mean(0), rtol=1e-4)
    np.testing.assert_allclose(store.std, train.std(0), rtol=1e-3)


def test_rerun_is_idempotent_and_force_recomputes(tmp_path: Path) -> None:
    manifest = _cohort(tmp_path, 3)
    prepare(manifest, tmp_path / "store", PrepSpec(size=32), workers=1)
    again = prepare(manifest, tmp_path / "store", PrepSpec(size=32), workers=1)
    assert (again.prepared, again.skipped) == (0, 3)
    forced = prepare(manifest, tmp_path / "store", PrepSpec(size=32), workers=1, force=True)
    assert forced.prepared == 3
    changed = prepare(manifest, tmp_path / "store", PrepSpec(size=24), workers=1)
    assert changed.prepared == 3 and PreparedStore(tmp_path / "store").frames("v001").shape[1] == 24


@pytest.mark.slow
def test_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    manifest = _cohort(tmp_path, 3)
    good = Path(manifest.loc[0, "path"])
    truncated = tmp_path / "Videos" / "trunc.avi"
    truncated.write_bytes(good.read_bytes()[:300])
    empty = tmp_path / "Videos" / "empty.avi"
    empty.write_bytes(b"")
    bad = new_manifest([{"sample_id": "trunc", "path": str(truncated), "modality": "echo"},
                        {"sample_id": "empty", "path": str(empty), "modality": "echo"},
                        {"sample_id": "gone", "path": str(tmp_path / "nope.avi")}])
    summary = prepare(pd.concat([manifest, bad], ignore_index=True), tmp_path / "store",
                      PrepSpec(size=32), workers=2)
    assert summary.prepared == 3 and summary.failed == 3
    store = PreparedStore(tmp_path / "store")
    assert sorted(store.ids) == ["v000", "v001", "v002"]
    problems = store.problems
    assert len(problems) == 3 and set(problems["stage"]) == {"prepare"}
    assert any("0 bytes" in e for e in problems["error"])


def test_corrupt_sample_file_is_not_complete(tmp_path: Path) -> None:
    manifest = _cohort(tmp_path, 2)
    prepare(manifest, tmp_path / "store", PrepSpec(size=32), workers=1)
    files = sample_files(tmp_path / "store", "v000")
    files["frames"].write_bytes(files["frames"].read_bytes()[:200])
    assert not is_complete(tmp_path / "store", "v000")
    summary = prepare(manifest, tmp_path / "store", PrepSpec(size=32), workers=1)
    assert (summary.prepared, summary.skipped) == (1, 1)
    assert PreparedStore(tmp_path / "store").frames("v000").shape == (20, 32, 32, 3)


@pytest.mark.slow
def test_prepare_killed_midway_then_rerun_completes(tmp_path: Path) -> None:
    manifest = _cohort(tmp_path, 40, frames=60, size=112)
    write_manifest(manifest, tmp_path / "manifest.csv")
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "cinelab.cli", "prepare", str(tmp_path / "manifest.csv"),
           "--out", str(store), "--size", "112", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((store / "samples").glob("*.json"))) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((store / "samples").glob("*.json")))
    assert 3 <= done < 40, "the kill should land midway"
    with pytest.raises(Exception, match="interrupted"):
        PreparedStore(store)
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    result = PreparedStore(store)
    assert len(result.ids) == 40
    assert all(is_complete(store, s) for s in result.ids)
    assert not list((store / "samples").glob("*.tmp*"))


@pytest.mark.slow
def test_dask_local_cluster(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    manifest = _cohort(tmp_path, 4)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        summary = prepare(manifest, tmp_path / "store", PrepSpec(size=32),
                          scheduler=cluster.scheduler_address)
    assert summary.prepared == 4
    assert len(PreparedStore(tmp_path / "store").ids) == 4
