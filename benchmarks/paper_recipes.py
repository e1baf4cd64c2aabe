"""Paper recipes at paper dimensions on the CPU: every wire from store to prediction, and scale.

For every paper recipe (the non ``-cpu`` ones; the CXR ensemble as one member per architecture
at 224 and at 331 px): the recipe's real model at the paper's input size and batch, on a tiny
synthetic store of that size (`paper_stores`), through the ordinary training path
(`train.fit` with ``trainer.limit_train_batches=2``, one epoch): 2 optimisation steps with the
recipe's optimiser and loss, one validation step (one validation sample), the checkpoint
export (model.pt), reload, and the pipeline's own `predict` on two test inputs.

Not the paper's: random initialisation (``model.pretrained=null``: no weights are downloaded),
the frozen-encoder phases skipped (cmr-seg ``freeze_encoder_epochs=0``, cxr
``freeze_epochs=0``, so the steps train the whole network), whole CXR images
(``data.crop=uncrop``: cropping needs a trained lung U-Net), ``num_workers=0``, fp32 on CPU.

Prints per recipe: parameters, GFLOP per sample (forward, batch 1, counted by
torch.utils.flop_counter.FlopCounterMode; a training step costs about 3x), seconds per step
(step 1 includes one-off allocation; step 2 is the steady one; ``cpu_s_step2``: the process
CPU seconds of step 2, all threads, for a loaded machine), the validation step, peak
RSS (each recipe in its own process, resource.getrusage) and whether predict gave finite
outputs. Numbers only, nothing asserted.

    python benchmarks/paper_recipes.py [--only echonet-ef,cmr-seg] [--reduced] [--work DIR]

``--reduced`` is what tests/benchmarks/test_bench_paper_recipes.py runs: batch 2 and shorter
clips (echonet-ef, rvf-twostream: 8 frames), at the paper's image size. ``--flops``: parameters
and FLOPs of every case only (meta device). ``--batch NAME=B``: another batch for one case.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_stores import build_store  # noqa: E402

from cinelab.infer.contract import read_predictions  # noqa: E402
from cinelab.infer.engines import input_shape  # noqa: E402
from cinelab.models.registry import create_model  # noqa: E402
from cinelab.pipelines.registry import Options, get_pipeline  # noqa: E402
from cinelab.train.checkpoint import load_checkpoint  # noqa: E402
from cinelab.train.fit import fit  # noqa: E402
from cinelab.train.recipe import load_recipe  # noqa: E402

STEPS = 2
REDUCED_BATCH, REDUCED_FRAMES = 2, 8
COMMON = ["data.num_workers=0", "trainer.max_epochs=1", f"trainer.limit_train_batches={STEPS}",
          "trainer.accelerator=cpu", "trainer.devices=1", "model.pretrained=null"]
NOT_OUTPUTS = {"n_frames", "fps", "ef_fps", "n_beats", "n_beats_clipped", "n_beats_past_end",
               "threshold", "n_clips", "slice", "frame"}
STREAM_CHANNELS = 3  # two-stream input: grey (1) + optical flow (dx, dy)
CXR_ARCHS = ["densenet121", "efficientnet_b2", "inception_v3", "inception_resnet_v2",
             "resnet50", "xception"]


@dataclass(frozen=True)
class Case:
    """One paper recipe at paper dimensions: store kind, size, clip frames, paper batch."""

    name: str
    recipe: str
    pipeline: str
    store: str
    size: int
    batch: int
    frames: int | None = None  # clip length of a video recipe
    store_frames: int = 40
    test_frames: int | None = None  # test inputs cut to this many frames (quick predict)
    overrides: tuple[str, ...] = ()
    predict: dict[str, Any] = field(default_factory=dict)


def _cxr(arch: str, size: int) -> Case:
    return Case(f"cxr-{arch}-{size}", "cxr-ensemble", "cxr", "cxr", size, 16,
                overrides=(f"model.name={arch}", f"data.size={size}", "data.crop=uncrop",
                           "model.freeze_epochs=0"))


CASES = [
    Case("echonet-seg", "echonet-seg", "echonet", "echo", 112, 20, test_frames=8),
    Case("echonet-ef", "echonet-ef", "echonet", "echo", 112, 20, frames=32, test_frames=80,
         predict={"stride": 16}),
    Case("cmr-seg", "cmr-seg", "cmr", "cmr", 256, 32, store_frames=4,
         overrides=("model.freeze_encoder_epochs=0",)),
    *[_cxr(arch, size) for size in (224, 331) for arch in CXR_ARCHS],
    Case("rvf-twostream", "rvf-twostream", "rvf", "rvf", 112, 8, frames=32, store_frames=40,
         predict={"clips": 1}),
    Case("cmr-age", "cmr-age", "age", "age", 128, 16, frames=25, store_frames=25),
]
CASE_BY_NAME = {c.name: c for c in CASES}


class StepTimer(L.Callback):
    """Wall seconds of every training and validation batch, and the process CPU seconds of
    every training batch (less sensitive to other load on a shared machine)."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.train_cpu: list[float] = []
        self.val: list[float] = []
        self._t = self._cpu = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._t, self._cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, *args: Any) -> None:
        self.train.append(time.perf_counter() - self._t)
        self.train_cpu.append(time.process_time() - self._cpu)

    def on_validation_batch_start(self, *args: Any) -> None:
        self._t = time.perf_counter()

    def on_validation_batch_end(self, *args: Any) -> None:
        self.val.append(time.perf_counter() - self._t)


def settings(case: Case, reduced: bool, batch: int | None = None
             ) -> tuple[int, int | None, list[str]]:
    """(batch, clip frames, recipe overrides) of a case, full or reduced (`batch`: instead of
    the paper's, e.g. the largest that fits the memory)."""
    batch = batch or (REDUCED_BATCH if reduced else case.batch)
    frames = case.frames
    if reduced and frames is not None and case.store != "age":  # age: one whole cycle (25)
        frames = min(frames, REDUCED_FRAMES)
    overrides = [*COMMON, f"data.batch_size={batch}", *case.overrides]
    if frames is not None:
        overrides.append(f"data.frames={frames}")
    return batch, frames, overrides


def gflop_per_sample(model_pt: Path) -> tuple[int, float]:
    """(parameters, forward GFLOP of one sample) of an exported checkpoint's model."""
    loaded = load_checkpoint(model_pt)
    model = loaded.model.eval()
    x = torch.zeros(input_shape(loaded, 1))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 1e9


def model_flops(case: Case) -> dict[str, Any]:
    """Parameters and forward GFLOP per sample of a case's model at paper dimensions,
    counted on the meta device (no memory, no compute: every case in seconds)."""
    recipe = load_recipe(case.recipe, settings(case, False)[2])
    with torch.device("meta"):
        model = create_model(recipe.model.name, **recipe.model.kwargs).eval()
        channels = STREAM_CHANNELS if recipe.model.name == "two_stream" else \
            int(recipe.model.kwargs.get("in_channels", 3))
        shape = (1, channels, *([case.frames] if case.frames else []), case.size, case.size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(shape))
    return {"recipe": case.name, "input": "x".join(map(str, shape[1:])), "batch": case.batch,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflop_fwd_sample": counter.get_total_flops() / 1e9,
            "tflop_train_step": 3 * case.batch * counter.get_total_flops() / 1e12}


def predict_two(case: Case, model_pt: Path, store: Path, out: Path) -> tuple[int, str, int]:
    """The pipeline's predict on the store's test split (two samples): (rows, the output
    columns finite in every row, mask files written)."""
    options = Options(split="test", batch_size=2, extra=dict(case.predict))
    folder = get_pipeline(case.pipeline).predict(model_pt, store, out, options)
    table = read_predictions(folder)
    numbers = table.select_dtypes("number")
    finite = [c for c in numbers if numbers[c].notna().all() and c not in NOT_OUTPUTS]
    masks = folder / "masks"
    n_masks = sum(1 for p in masks.rglob("*") if p.is_file()) if masks.is_dir() else 0
    return len(table), ",".join(finite[:4]), n_masks


def run_case(case: Case, work: Path, reduced: bool = False, batch: int | None = None
             ) -> dict[str, Any]:
    """Store, 2 training steps + 1 validation step, export, reload, predict: the numbers."""
    batch, frames, overrides = settings(case, reduced, batch)
    store_frames = case.store_frames if frames is None else max(case.store_frames,
                                                                2 * frames + 8)
    started = time.perf_counter()
    store = build_store(case.store, work / "data", case.size, store_frames, STEPS * batch,
                        test_frames=case.test_frames)
    store_s = time.perf_counter() - started
    recipe = load_recipe(case.recipe, overrides)
    timer = StepTimer()
    torch.manual_seed(0)
    result = fit(recipe, store, work / "run", progress=False, callbacks=[timer])
    params, gflop = gflop_per_sample(result.best_checkpoint)
    started = time.perf_counter()
    n_pred, finite, n_masks = predict_two(case, result.best_checkpoint, store.root, work / "pred")
    return {"recipe": case.name, "size": case.size, "frames": frames, "batch": batch,
            "paper_batch": case.batch,
            "params_M": params / 1e6, "gflop_fwd_sample": gflop,
            "steps": len(timer.train), "s_step1": timer.train[0] if timer.train else math.nan,
            "s_step2": timer.train[-1] if len(timer.train) > 1 else math.nan,
            "cpu_s_step2": timer.train_cpu[-1] if timer.train_cpu else math.nan,
            "s_val_step": timer.val[-1] if timer.val else math.nan,
            "predict_s": time.perf_counter() - started, "n_pred": n_pred, "finite": finite,
            "masks": n_masks,
            "store_s": store_s, "peak_rss_gb": peak_rss_gb(), "cpu_s_total": cpu_seconds()}


def cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gb() -> float:
    """This process's peak resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _child(name: str, reduced: bool, work: Path | None, batch: int | None) -> dict[str, Any]:
    """Run one case in a fresh process (its own peak RSS); its JSON line back."""
    cmd = [sys.executable, __file__, "--one", name, *(["--reduced"] if reduced else []),
           *(["--work", str(work)] if work else []), *(["--batch", f"{name}={batch}"]
                                                        if batch else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:  # -9: killed, e.g. out of memory
        errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln] or ["?"]
        return {"recipe": name, "error": f"exit {proc.returncode}: {errors[-1]}"}
    return json.loads(lines[-1])


def main() -> None:
    """Parse arguments; one case (--one, JSON out) or all of them in subprocesses (a table)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--reduced", action="store_true", help="batch 2, 8-frame clips")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temp)")
    ap.add_argument("--batch", action="append", default=[],
                    help="NAME=B: batch B instead of the paper's for case NAME (repeatable)")
    ap.add_argument("--flops", action="store_true",
                    help="only parameters and GFLOP of every case (meta device, seconds)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = {k: int(v) for k, v in (b.split("=", 1) for b in args.batch)}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.one:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            print(json.dumps(run_case(CASE_BY_NAME[args.one], Path(tmp), args.reduced,
                                      batches.get(args.one))))
        return
    names = [n for n in args.only.split(",") if n] or [c.name for c in CASES]
    if args.flops:
        table = pd.DataFrame([model_flops(CASE_BY_NAME[n]) for n in names])
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        return
    rows = []
    for name in names:
        rows.append(_child(name, args.reduced, args.work, batches.get(name)))
        print(json.dumps(rows[-1]), flush=True)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
