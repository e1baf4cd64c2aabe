"""EchoNet pipeline throughput: training clips/s and prediction videos/s (all clips + beats).

CPU (default): the CPU recipes on a synthetic cohort, plus a few batches of the paper's
r2plus1d_18 (32 x 112 x 112) for scale. With a GPU (--device cuda): the paper recipe with
bf16 autocast, channels_last_3d and the prepared store against an EchoNet-style loop (decode
the AVI per item, float32, 4 workers, no AMP) on the same GPU and data, with GPU utilisation
sampled by nvidia-smi. Prints numbers; asserts nothing.

    python benchmarks/echonet_throughput.py [--n 60] [--device cuda --workers 8]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from cinelab.data.store import PreparedStore
from cinelab.formats.ingest import ingest
from cinelab.models.registry import create_model
from cinelab.pipelines.echonet.predict import predict
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.synth.echo import synth_echo_cohort
from cinelab.train.fit import fit
from cinelab.train.recipe import load_recipe


class BatchTimer(L.Callback):
    """Clips per second over training batches after the first `warmup` ones."""

    def __init__(self, warmup: int = 1) -> None:
        self.warmup, self.clips, self.seen, self.elapsed = warmup, 0, 0, 0.0
        self.last = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:  # noqa: ANN001
        self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        self.seen += 1
        if self.seen > self.warmup:
            self.clips += len(batch[1])
            self.elapsed += now - self.last
        self.last = now

    @property
    def rate(self) -> float:
        """Clips per second after warm-up (loading + step time, validation excluded)."""
        return self.clips / max(self.elapsed, 1e-9)


def training_rate(recipe: str, store: Path, out: Path, overrides: list[str],
                  epochs: int, **fit_args: object) -> float:
    """Training clips/s of `recipe` over `epochs` epochs (after one warm-up batch; the time
    includes data loading but not validation)."""
    timer = BatchTimer(warmup=1)
    fit(load_recipe(recipe, [*overrides, f"trainer.max_epochs={epochs}"]),
        store, out, progress=False, callbacks=[timer], **fit_args)
    return timer.rate


class GpuSampler:
    """Samples GPU utilisation (%) with nvidia-smi while a block runs."""

    def __enter__(self) -> GpuSampler:
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             "-lms", "200"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        out, _ = self.proc.communicate()
        self.samples = [float(v) for v in out.split() if v.strip().isdigit()]

    @property
    def busy(self) -> float:
        """Mean utilisation over the samples."""
        return float(np.mean(self.samples)) if self.samples else float("nan")


def cpu_benchmarks(args: argparse.Namespace, tmp: Path) -> None:
    """CPU recipes on a synthetic cohort, and the paper model for scale."""
    cohort = synth_echo_cohort(tmp / "cohort", n=args.n, seed=3)
    found = ingest(cohort)
    prepare(found.manifest, tmp / "s64", PrepSpec(size=64), tracings=found.tracings)
    prepare(found.manifest, tmp / "s112", PrepSpec(size=112), tracings=found.tracings)
    seg = fit(load_recipe("echonet-seg-cpu", ["trainer.max_epochs=2"]), tmp / "s64",
              tmp / "run" / "seg", progress=False)
    ef_over = [f"model.pretrained={seg.best_checkpoint}"]
    rate_ef = training_rate("echonet-ef-cpu", tmp / "s64", tmp / "run" / "ef", ef_over, 8)
    rate_paper = training_rate("echonet-ef", tmp / "s112", tmp / "paper",
                               ["model.pretrained=null", "data.num_workers=2",
                                "data.batch_size=4"], 1)
    start = time.perf_counter()
    predict(tmp / "run", tmp / "s64", tmp / "pred", batch_size=16, split="test")
    elapsed = time.perf_counter() - start
    n_pred = int((found.manifest["split"] == "test").sum())
    print(f"training echonet-ef-cpu (seg_video, 16x64x64): {rate_ef:.1f} clips/s")
    print(f"training echonet-ef (r2plus1d_18, 32x112x112, fp32, CPU): {rate_paper:.2f} clips/s")
    print(f"prediction (all clips + beat by beat, CPU recipes): {n_pred / elapsed:.2f} videos/s "
          f"({n_pred} test videos, {elapsed:.0f} s)")


def gpu_benchmarks(args: argparse.Namespace, tmp: Path) -> None:
    """The paper recipe on the GPU: cinelab's loop vs an EchoNet-style loop."""
    cohort = synth_echo_cohort(tmp / "cohort", n=args.n, seed=3)
    found = ingest(cohort)
    prepare(found.manifest, tmp / "s112", PrepSpec(size=112), tracings=found.tracings,
            workers=args.workers)
    over = ["model.pretrained=null", f"data.num_workers={args.workers}",
            "trainer.channels_last=true", "trainer.accelerator=gpu", "trainer.devices=1"]
    with GpuSampler() as ours:
        rate = training_rate("echonet-ef", tmp / "s112", tmp / "paper", over, args.epochs,
                             precision="bf16-mixed")
    with GpuSampler() as theirs:
        base = echonet_loop_rate(tmp / "s112", args.batches)
    print(f"cinelab (store, bf16, channels_last_3d, {args.workers} workers): {rate:.1f} clips/s, "
          f"GPU busy {ours.busy:.0f} %")
    print(f"EchoNet-style (AVI per item, float32, 4 workers, no AMP): {base:.1f} clips/s, "
          f"GPU busy {theirs.busy:.0f} %; speed-up {rate / base:.1f}x")


def echonet_loop_rate(store_root: Path, batches: int, workers: int = 4,
                      batch_size: int = 20) -> float:
    """r2plus1d_18 trained on clips decoded from the AVIs per item (EchoNet's loop)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from store_vs_avi import AviClips

    store = PreparedStore(store_root)
    data = AviClips(store.manifest["path"].tolist(), batches * batch_size, store.mean,
                    store.std)
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=True)
    model = create_model("r2plus1d_18").cuda()
    optim = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    clips, start = 0, None
    for i, x in enumerate(loader):
        if i == 2:
            torch.cuda.synchronize()
            start, clips = time.perf_counter(), 0
        x = x.cuda(non_blocking=True)
        loss = model(x).float().pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        clips += len(x)
    torch.cuda.synchronize()
    return clips / (time.perf_counter() - start)


def main() -> None:
    """Run the CPU or the GPU benchmark."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40, help="videos in the synthetic cohort")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=8, help="loader workers (GPU run)")
    parser.add_argument("--batches", type=int, default=30, help="EchoNet-style timed batches")
    parser.add_argument("--epochs", type=int, default=3, help="cinelab timed epochs (GPU run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.device.startswith("cuda"):
            gpu_benchmarks(args, Path(tmp))
        else:
            cpu_benchmarks(args, Path(tmp))


if __name__ == "__main__":
    main()
