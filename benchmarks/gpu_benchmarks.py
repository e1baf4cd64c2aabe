"""GPU benchmark of every paper recipe: one command, one table.

    python benchmarks/gpu_benchmarks.py [--only echonet-ef,cmr-seg] [--batches 20]
                                        [--workers 8] [--peak-tflops 989]
    python benchmarks/gpu_benchmarks.py --tiny     # CPU, tiny sizes: proves the script runs

Per recipe (the paper recipes of `paper_recipes.CASES`; the CXR ensemble as DenseNet-121 at
224 px and Inception-ResNet-V2 at 331 px), on a synthetic store at the paper's input size:

- ``ours_sps`` / ``ours_gpu%``: training samples/s and GPU utilisation (nvidia-smi, every
  200 ms) of the cinelab path: ``train.fit`` on the prepared store (uint8 memory maps; padding /
  augmentation applied to the batch on the device), ``bf16-mixed``, ``trainer.channels_last``
  (channels_last_3d for video models), pinned host memory, ``--workers`` loader workers.
  Loader workers are not persistent: `fit` recreates them each epoch so that the epoch seed
  reaches them (one epoch is timed here, after ``--warmup`` batches).
- ``peer_sps`` / ``peer_gpu%``: the peer-style loop. echonet-ef: EchoNet-Dynamic's own
  (decode the AVI per item with OpenCV, float32, normalise and pad on the CPU, 4 workers,
  fp32, no AMP; `store_vs_avi.AviClips`); the others: the same `fit` in fp32 without
  channels_last, 4 workers (their published loops read per-item files too, not simulated).
- ``speedup``: ours / peer; ``mfu``: ours_sps x 3 x forward FLOP per sample (FlopCounterMode)
  over the card's dense bf16 peak (``--peak-tflops``, else looked up from the device name).
- ``pred_vps``: the pipeline's own `predict` on the test split, samples (videos) per second;
  echonet-ef predicts with the echonet-seg model beside it: all clips + beat by beat.

``--tiny`` runs each pipeline's ``-cpu`` recipe at 32 px, batch 2, 4-frame clips, 2 timed
batches, on the CPU (bf16-mixed autocast on CPU): GPU columns are then NaN. Numbers only.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_recipes import CASE_BY_NAME, Case, gflop_per_sample  # noqa: E402
from paper_stores import build_store  # noqa: E402
from store_vs_avi import AviClips  # noqa: E402

from cinelab.data.store import PreparedStore  # noqa: E402
from cinelab.models.registry import create_model  # noqa: E402
from cinelab.pipelines.registry import Options, get_pipeline  # noqa: E402
from cinelab.train.fit import fit  # noqa: E402
from cinelab.train.recipe import Recipe, load_recipe  # noqa: E402

ROWS = ["echonet-seg", "echonet-ef", "cmr-seg", "cxr-densenet121-224",
        "cxr-inception_resnet_v2-331", "rvf-twostream", "cmr-age"]
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}  # dense
PEER_WORKERS = 4
TINY_SIZE, TINY_FRAMES, TINY_BATCH = 32, 4, 2


@dataclass(frozen=True)
class Settings:
    """What one benchmark run uses."""

    device: str
    batches: int
    warmup: int
    workers: int
    n_pred: int
    tiny: bool
    peak_tflops: float


class BatchTimer(L.Callback):
    """Samples per second over the training batches after the first `warmup`."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.seen, self.samples, self.elapsed, self.last = warmup, 0, 0, 0.0, 0.0

    def on_train_epoch_start(self, *args: Any) -> None:
        self.last = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seen += 1
        if self.seen > self.warmup:
            self.samples += _batch_len(batch)
            self.elapsed += now - self.last
        self.last = now

    @property
    def rate(self) -> float:
        """Samples per second after warm-up (loading + step; validation excluded)."""
        return self.samples / self.elapsed if self.elapsed > 0 else math.nan


def _batch_len(batch: Any) -> int:
    while isinstance(batch, list | tuple | dict):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(batch)


class GpuSampler:
    """GPU utilisation (%) sampled by nvidia-smi while a block runs (NaN without one)."""

    def __enter__(self) -> GpuSampler:
        self.samples: list[float] = []
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate()
            self.samples = [float(v) for v in out.split() if v.strip().isdigit()]

    @property
    def busy(self) -> float:
        """Mean utilisation over the samples."""
        return float(np.mean(self.samples)) if self.samples else math.nan


def peak_tflops(device: str, given: float | None) -> float:
    """The card's dense bf16 peak (TFLOP/s): `given`, else by device name; NaN on CPU."""
    if given:
        return given
    if not device.startswith("cuda"):
        return math.nan
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), math.nan)


def case_for(name: str, tiny: bool) -> Case:
    """The paper case, or (tiny) its pipeline's -cpu recipe at 32 px."""
    case = CASE_BY_NAME[name]
    if not tiny:
        return case
    recipe = "cxr-ensemble-cpu" if case.store == "cxr" else f"{case.recipe}-cpu"
    return replace(case, recipe=recipe, size=TINY_SIZE, batch=TINY_BATCH,
                   frames=None if case.frames is None else TINY_FRAMES,
                   overrides=("data.crop=uncrop",) if case.store == "cxr" else ())


def overrides(case: Case, s: Settings, ours: bool) -> list[str]:
    """Recipe overrides of the timed fit: ours (channels_last) or the peer-style fp32 one."""
    out = ["model.pretrained=null", "trainer.max_epochs=1", "trainer.devices=1",
           f"trainer.limit_train_batches={s.batches + s.warmup}", f"data.size={case.size}",
           f"data.batch_size={case.batch}", f"trainer.channels_last={str(ours).lower()}",
           f"data.num_workers={0 if s.tiny else s.workers if ours else PEER_WORKERS}",
           f"trainer.accelerator={'gpu' if s.device.startswith('cuda') else 'cpu'}",
           *case.overrides]
    if case.frames is not None:
        out.append(f"data.frames={case.frames}")
    return out


def timed_fit(recipe: Recipe, store: PreparedStore, out: Path, s: Settings,
              precision: str) -> tuple[float, float, Path]:
    """(samples/s, GPU busy %, exported model.pt) of one timed epoch."""
    timer = BatchTimer(s.warmup)
    with GpuSampler() as gpu:
        result = fit(recipe, store, out, progress=False, callbacks=[timer], precision=precision)
    return timer.rate, gpu.busy, result.best_checkpoint


def avi_loop_rate(store: PreparedStore, recipe: Recipe, s: Settings) -> tuple[float, float]:
    """EchoNet-Dynamic's loop: AVI decoded per item to float32, 4 workers, fp32 (samples/s,
    GPU busy %)."""
    batch = recipe.data.batch_size
    data = AviClips(store.manifest["path"].tolist(), (s.batches + s.warmup) * batch,
                    store.mean, store.std)
    loader = DataLoader(data, batch_size=batch, num_workers=0 if s.tiny else PEER_WORKERS,
                        shuffle=True, pin_memory=s.device.startswith("cuda"))
    model = create_model(recipe.model.name, **recipe.model.kwargs).to(s.device).train()
    optim = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    samples, start = 0, time.perf_counter()
    with GpuSampler() as gpu:
        for i, x in enumerate(loader):
            if i == s.warmup:
                _sync(s.device)
                samples, start = 0, time.perf_counter()
            loss = model(x.to(s.device, non_blocking=True)).float().pow(2).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            samples += len(x)
        _sync(s.device)
    return samples / (time.perf_counter() - start), gpu.busy


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def predict_rate(case: Case, model: Path, store: PreparedStore, out: Path, s: Settings,
                 batch: int) -> float:
    """Samples per second of the pipeline's predict on the store's test split."""
    n = len(store.split_ids("test"))
    started = time.perf_counter()
    get_pipeline(case.pipeline).predict(model, store.root, out, Options(
        split="test", device=s.device, batch_size=batch))
    return n / (time.perf_counter() - started)


def bench_row(name: str, s: Settings, work: Path, models: dict[str, Path]) -> dict[str, Any]:
    """One table row: ours vs peer training, MFU, prediction rate."""
    case = case_for(name, s.tiny)
    ours_recipe = load_recipe(case.recipe, overrides(case, s, True))
    store = build_store(case.store, work / "data", case.size, 2 * (case.frames or 4) + 40,
                        (s.batches + s.warmup) * case.batch, n_test=s.n_pred,
                        channels=int(ours_recipe.model.kwargs.get("in_channels", 3)))
    ours, ours_busy, model = timed_fit(ours_recipe, store, work / "ours" / "model", s,
                                       "bf16-mixed")
    models[name] = model
    peer_recipe = load_recipe(case.recipe, overrides(case, s, False))
    peer, peer_busy = avi_loop_rate(store, peer_recipe, s) if name == "echonet-ef" else \
        timed_fit(peer_recipe, store, work / "peer", s, "32-true")[:2]
    params, gflop = gflop_per_sample(model)
    target = model
    if name == "echonet-ef" and "echonet-seg" in models:  # run folder: seg/ + ef/
        target = _echonet_run(work / "echonet", models["echonet-seg"], model)
    pred = predict_rate(case, target, store, work / "pred", s, max(case.batch, 16))
    return {"recipe": name, "size": case.size, "frames": case.frames, "batch": case.batch,
            "params_M": params / 1e6, "gflop_fwd": gflop, "ours_sps": ours,
            "ours_gpu%": ours_busy, "peer_sps": peer, "peer_gpu%": peer_busy,
            "speedup": ours / peer if peer else math.nan,
            "mfu": ours * 3 * gflop * 1e9 / (s.peak_tflops * 1e12), "pred_vps": pred}


def _echonet_run(folder: Path, seg: Path, ef: Path) -> Path:
    """A run folder holding seg/model.pt and ef/model.pt (links to the trained files)."""
    for sub, path in (("seg", seg), ("ef", ef)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        link = folder / sub / "model.pt"
        if not link.exists():
            link.symlink_to(path.resolve())
    return folder


def parse() -> tuple[argparse.Namespace, Settings]:
    """Arguments and the settings they give."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated rows (default: all)")
    ap.add_argument("--tiny", action="store_true", help="CPU, -cpu recipes, 32 px")
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--batches", type=int, default=None, help="timed batches (default 20)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed batches (default 3)")
    ap.add_argument("--workers", type=int, default=8, help="loader workers of our path")
    ap.add_argument("--n-pred", type=int, default=None, help="test videos (default 8)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak")
    args = ap.parse_args()
    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    s = Settings(device, args.batches or (2 if args.tiny else 20),
                 args.warmup if args.warmup is not None else (1 if args.tiny else 3),
                 args.workers, args.n_pred or (2 if args.tiny else 8), args.tiny,
                 peak_tflops(device, args.peak_tflops))
    return args, s


def main() -> None:
    """Run every row (each in its own temporary folder) and print the table."""
    args, s = parse()
    names = [n for n in args.only.split(",") if n] or ROWS
    rows, models = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(bench_row(name, s, Path(tmp) / name, models))
    print(f"device: {s.device}; bf16 peak {s.peak_tflops} TFLOP/s; {s.batches} timed batches "
          f"after {s.warmup}; workers {s.workers} (peer {PEER_WORKERS})")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
