"""Clips per second from the prepared store vs decoding the AVI per clip (EchoNet-style).

Also: prepare throughput (videos/s) with 1 and 2 processes, and peak memory of prepare vs
cohort size. Prints numbers; never asserts timings.

    python benchmarks/store_vs_avi.py [--n 48] [--clips 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cinelab.data.datasets import ClipDataset
from cinelab.data.store import PreparedStore
from cinelab.formats.ingest import ingest
from cinelab.prep.prepare import PrepSpec, prepare

FRAMES, PERIOD, PAD = 32, 2, 12


class AviClips(Dataset):
    """EchoNet-Dynamic's `Echo.__getitem__`: decode the whole AVI, convert it to float32,
    normalise every frame, then take one clip and pad-12 translate it, on every access."""

    def __init__(self, paths: list[str], n: int, mean: np.ndarray, std: np.ndarray) -> None:
        self.paths, self.n = paths, n
        self.mean, self.std = mean.reshape(3, 1, 1, 1), std.reshape(3, 1, 1, 1)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        cap = cv2.VideoCapture(self.paths[i % len(self.paths)])
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        video = np.stack(frames).transpose(3, 0, 1, 2).astype(np.float32)
        video = (video - self.mean) / self.std
        rng = np.random.default_rng(i)
        start = rng.integers(0, max(1, video.shape[1] - (FRAMES - 1) * PERIOD))
        idx = np.clip(start + PERIOD * np.arange(FRAMES), 0, video.shape[1] - 1)
        clip = video[:, idx]
        c, f, h, w = clip.shape
        padded = np.zeros((c, f, h + 2 * PAD, w + 2 * PAD), clip.dtype)
        padded[:, :, PAD:-PAD, PAD:-PAD] = clip
        dy, dx = rng.integers(0, 2 * PAD, 2)
        return torch.from_numpy(padded[:, :, dy:dy + h, dx:dx + w].copy())


def store_clips(store: PreparedStore, n: int) -> Dataset:
    """cinelab's training dataset: uint8 clips indexed from the memory-mapped store
    (normalisation and translation happen later, on the batch, on the model's device)."""
    ids = (store.ids * (n // len(store.ids) + 1))[:n]
    return ClipDataset(store.root, ids, FRAMES, PERIOD, target="EF", random_clip=True)


def clips_per_second(dataset: Dataset, workers: int = 2, batch: int = 8) -> float:
    """Serve every item of the dataset through a DataLoader; clips per second."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False,
                        persistent_workers=False)
    start = time.perf_counter()
    count = sum(len(b[0]) if isinstance(b, list | tuple) else len(b) for b in loader)
    return count / (time.perf_counter() - start)


def prepare_rate(cohort: Path, out: Path, workers: int) -> float:
    """Videos per second for a fresh prepare with `workers` processes."""
    manifest = ingest(cohort).manifest
    start = time.perf_counter()
    summary = prepare(manifest, out, PrepSpec(size=112), workers=workers)
    return summary.prepared / (time.perf_counter() - start)


def peak_memory_mb(cohort: Path, out: Path, n: int) -> float:
    """Peak resident memory (MB, VmHWM) of a child process preparing the first n videos."""
    code = (
        "import sys;from cinelab.formats.ingest import ingest;"
        "from cinelab.prep.prepare import prepare,PrepSpec;"
        f"m=ingest(sys.argv[1]).manifest.head({n});"
        "prepare(m,sys.argv[2],PrepSpec(size=112),workers=1);"
        "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0];"
        "print(int(hwm.split()[1])/1024)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(cohort), str(out)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the benchmarks on a synthetic cohort and print a table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=96, help="videos in the synthetic cohort")
    parser.add_argument("--clips", type=int, default=640, help="clips served from the store")
    parser.add_argument("--real", type=Path, default=None,
                        help="an EchoNet-layout folder of real videos to serve clips from "
                             "(e.g. ../shared/data/real/echonet-extra) instead of the phantoms")
    parser.add_argument("--batch", type=int, default=16, help="clips per batch")
    args = parser.parse_args()
    from cinelab.synth.echo import synth_echo_cohort

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cohort = synth_echo_cohort(tmp / "cohort", n=args.n, seed=1)
        rate1 = prepare_rate(cohort, tmp / "store1", workers=1)
        rate2 = prepare_rate(cohort, tmp / "store2", workers=2)
        store = PreparedStore(tmp / "store2")
        if args.real is not None:
            prepare_rate(args.real, tmp / "real", workers=2)
            store = PreparedStore(tmp / "real")
        paths = store.manifest["path"].tolist()
        avi = clips_per_second(AviClips(paths, args.clips // 8, store.mean, store.std),
                               batch=args.batch)
        mem = clips_per_second(store_clips(store, args.clips), batch=args.batch)
        print(f"prepare: {rate1:.1f} videos/s with 1 process, {rate2:.1f} with 2")
        source = f"{len(store.ids)} real videos" if args.real else f"{len(store.ids)} phantoms"
        print(f"random {FRAMES}-frame clips (period {PERIOD}) from {source}, 2 workers: "
              f"store {mem:.0f} clips/s, AVI decode per clip {avi:.1f} clips/s, "
              f"speed-up {mem / avi:.0f}x")
        for n in (args.n // 4, args.n // 2, args.n):
            peak = peak_memory_mb(cohort, tmp / f"mem{n}", n)
            print(f"prepare peak memory with {n:3d} videos: {peak:.0f} MB")


if __name__ == "__main__":
    main()
