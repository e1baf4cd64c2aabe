"""Optical-flow throughput: frames/s per core for each available method, on echo phantoms.

Farneback always; TV-L1 when OpenCV has its contrib module; RAFT when a local weights file is
given (on --device, batched; reported per device rather than per core). With --workers N,
also the throughput of prepare_flow over a small prepared store with N processes.
Prints numbers; never asserts timings.

    python benchmarks/flow_throughput.py [--size 112] [--frames 48] [--videos 4]
        [--raft-weights raft_small_C_T_V2-01064c6d.pth --device cuda] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from cinelab.data.manifest import new_manifest
from cinelab.data.store import write_sample
from cinelab.prep.flow import available_methods, compute_flow, prepare_flow
from cinelab.synth.echo import echo_phantom_video


def phantoms(n: int, size: int, frames: int) -> list[np.ndarray]:
    """`n` grey phantom videos (T, H, W) uint8."""
    return [echo_phantom_video(np.random.default_rng(i), size=size, n_frames=frames)[0]
            for i in range(n)]


def time_method(videos: list[np.ndarray], method: str, weights: str | None, device: str,
                batch: int) -> float:
    """Frame pairs per second of one method, in this process."""
    compute_flow(videos[0][:3], method, weights, device, batch)  # warm-up (model load, JIT)
    start = time.perf_counter()
    pairs = 0
    for video in videos:
        compute_flow(video, method, weights, device, batch)
        pairs += len(video) - 1
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return pairs / (time.perf_counter() - start)


def time_prepare_flow(videos: list[np.ndarray], workers: int) -> float:
    """Frames per second of prepare_flow (Farneback) with `workers` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        rows = []
        for i, video in enumerate(videos):
            write_sample(store, f"v{i}", video[..., None], {"source_hash": str(i)})
            rows.append({"sample_id": f"v{i}", "path": f"v{i}"})
        new_manifest(rows).to_csv(store / "manifest.csv", index=False)
        (store / "store.json").write_text('{"format": "cinelab-store/1"}')
        start = time.perf_counter()
        prepare_flow(store, workers=workers)
        return sum(len(v) for v in videos) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--raft-weights", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    videos = phantoms(args.videos, args.size, args.frames)
    cv2.setNumThreads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    print(f"{args.videos} videos x {args.frames} frames of {args.size}x{args.size} px; "
          f"OpenCV {cv2.__version__}, {os.cpu_count()} cores")
    for method in available_methods(args.raft_weights):
        raft = method.startswith("raft")
        if raft and args.device == "cpu":
            import torch

            torch.set_num_threads(1)
        rate = time_method(videos, method, args.raft_weights, args.device if raft else "cpu",
                           args.batch)
        where = f"on {args.device}" if raft and args.device != "cpu" else "per core"
        print(f"{method:>10}: {rate:8.1f} frames/s {where}")
    for method in ("tvl1", "raft"):
        if method not in available_methods(args.raft_weights):
            print(f"{method:>10}: unavailable "
                  f"({'no cv2.optflow' if method == 'tvl1' else 'no --raft-weights'})")
    if args.workers:
        rate = time_prepare_flow(videos * max(1, args.workers), args.workers)
        print(f"prepare_flow farneback, {args.workers} workers: {rate:.1f} frames/s "
              f"({rate / args.workers:.1f} per worker)")


if __name__ == "__main__":
    main()
