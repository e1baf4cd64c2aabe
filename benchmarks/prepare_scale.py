"""Prepare at cohort scale: videos/s and peak memory vs cohort size, local pool vs Dask.

    python benchmarks/prepare_scale.py [--n 2000] [--n 100 --n 300] [--workers 2] [--no-dask]

For each cohort size N: a synthetic EchoNet-layout cohort of N phantom echo videos (112 px) is
generated in a temporary folder (its disk need is printed first, from a 4-video pilot, and
checked against the free space) and removed afterwards; it is prepared into a uint8 store
(a) with the local process pool (``--workers``) and (b) on a Dask ``LocalCluster`` with as
many single-threaded worker processes (when dask.distributed imports). Per run: videos/s and
the peak resident memory of this process plus all its descendants (pool or Dask workers),
sampled every 0.1 s with psutil. Then the store's random-clip read rate (32 frames, period 2,
2 loader workers, `store_vs_avi.store_clips`) against EchoNet-style AVI decoding of the same
videos (`store_vs_avi.AviClips`). Numbers only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_vs_avi import AviClips, clips_per_second, store_clips  # noqa: E402

from cinelab.data.store import PreparedStore  # noqa: E402
from cinelab.formats.ingest import ingest  # noqa: E402
from cinelab.prep.prepare import PrepSpec, prepare  # noqa: E402
from cinelab.synth.echo import synth_echo_cohort  # noqa: E402

SIZE, PILOT = 112, 4
CLIPS = 160  # random clips served per read-rate measurement
GB = 2**30


class PeakMemory:
    """Peak summed RSS (bytes) of this process and its descendants while a block runs."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def folder_bytes(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_need(work: Path, n: int) -> int:
    """Bytes a cohort of n videos plus two stores of it need, from a PILOT-video cohort."""
    pilot = synth_echo_cohort(work / "pilot", n=PILOT, seed=9, size=SIZE)
    prepare(ingest(pilot).manifest, work / "pilot_store", PrepSpec(size=SIZE), workers=1)
    per_video = (folder_bytes(pilot) + 2 * folder_bytes(work / "pilot_store")) / PILOT
    shutil.rmtree(work / "pilot")
    shutil.rmtree(work / "pilot_store")
    return int(per_video * n)


def timed(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    """(seconds, peak bytes, result) of fn()."""
    with PeakMemory() as mem:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
    return seconds, mem.peak, result


def dask_prepare(manifest: pd.DataFrame, out: Path, workers: int) -> Any:
    """prepare() on a fresh Dask LocalCluster of `workers` single-threaded processes."""
    from distributed import Client, LocalCluster  # optional dependency, only for this run

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return prepare(manifest, out, PrepSpec(size=SIZE), scheduler=client)


def dask_available() -> bool:
    """True when dask.distributed imports."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def read_rates(store: PreparedStore) -> tuple[float, float]:
    """(store random clips/s, AVI-decoded clips/s) on the same videos, 2 loader workers."""
    ours = clips_per_second(store_clips(store, CLIPS))
    avi = clips_per_second(AviClips(store.manifest["path"].tolist(), CLIPS // 4, store.mean,
                                    store.std))
    return ours, avi


def run_size(n: int, work: Path, workers: int, use_dask: bool) -> list[dict[str, Any]]:
    """The rows of one cohort size (pool, and Dask when asked)."""
    cohort = synth_echo_cohort(work / "cohort", n=n, seed=1, size=SIZE)
    manifest = ingest(cohort).manifest
    rows = []
    runs = {f"pool x{workers}": lambda: prepare(manifest, work / "pool", PrepSpec(size=SIZE),
                                                workers=workers)}
    if use_dask:
        runs[f"dask x{workers}"] = lambda: dask_prepare(manifest, work / "dask", workers)
    for name, fn in runs.items():
        seconds, peak, summary = timed(fn)
        rows.append({"videos": n, "runner": name, "prepared": summary.prepared,
                     "videos_per_s": summary.prepared / seconds, "peak_rss_gb": peak / GB})
    ours, avi = read_rates(PreparedStore(work / "pool"))
    rows[0].update(store_clips_per_s=ours, avi_clips_per_s=avi, read_speedup=ours / avi)
    return rows


def main() -> None:
    """Parse arguments, check the disk, run every size, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, action="append", default=None,
                    help="cohort size (repeatable; default 2000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster run")
    ap.add_argument("--work", type=Path, default=None, help="parent of the temporary folder")
    args = ap.parse_args()
    sizes = args.n or [2000]
    use_dask = not args.no_dask and dask_available()
    print(f"dask.distributed: {'used' if use_dask else 'not used (absent or --no-dask)'}")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        need = disk_need(Path(tmp), max(sizes))
        free = shutil.disk_usage(tmp).free
        print(f"disk needed for {max(sizes)} videos and their stores: {need / GB:.2f} GB "
              f"(free {free / GB:.1f} GB)", flush=True)
        if need > free:
            raise SystemExit("not enough free disk: pass --work on a larger disk or a smaller --n")
        for n in sizes:
            rows += run_size(n, Path(tmp) / f"n{n}", args.workers, use_dask)
            print(pd.DataFrame(rows[-2:]).to_string(index=False), flush=True)
            shutil.rmtree(Path(tmp) / f"n{n}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
