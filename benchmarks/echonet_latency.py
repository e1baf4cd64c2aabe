"""One-study CPU latency of the EchoNet paper models: eager vs torch.compile vs ONNX Runtime.

The models: deeplabv3_resnet50 (LV segmentation, every frame) and r2plus1d_18 (EF from
`--frames`-frame clips every `--period` frames) at 112 px, with random weights or EchoNet-
Dynamic's released files (--seg deeplabv3_resnet50_random.pt, --ef
r2plus1d_18_32_2_pretrained.pt). One video (a real echonet-mini AVI by default, read in place;
an ultrasound DICOM works too) is predicted two ways per engine:

- beat by beat: segment every frame -> LV area -> ES frames -> one clip ending at each ES
  (up to `--max-beats`). With random weights there are usually no beats: the same number of
  clips, spread evenly, is timed instead (the cost is the same) and the table says so;
- all clips: one clip starting at every `--stride`-th frame (EchoNet's test-time protocol).

Each engine runs the study once untimed (compile, ONNX export, caches), then `--repeat` timed
times (the best is printed). Setup (loading, export, compilation) is reported separately.
Prints seconds per study; asserts nothing but that every engine's outputs equal eager's
within `cinelab.infer.engines.TOLERANCE`.

    python benchmarks/echonet_latency.py [--video V.avi] [--seg S.pt --ef E.pt]
        [--engines eager,compiled,onnx] [--max-frames 64 --frames 8]   # quick check
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cinelab.data.sampling import all_clip_starts
from cinelab.infer.engines import ENGINES, TOLERANCE, load_engine, output_difference
from cinelab.models import create_model
from cinelab.pipelines.echonet.beats import detect_ed_es, select_beat_clips
from cinelab.pipelines.echonet.predict import predict_ef_clips
from cinelab.pipelines.echonet.segment import lv_area, segment_video
from cinelab.pipelines.echonet.sources import list_items, load_item
from cinelab.pipelines.echonet.weights import load_echonet_model
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint

ECHONET_MINI = Path("/work/shared/data/real/echonet-mini/Videos")
SIZE, CHANNELS = 112, 3
# EchoNet-Dynamic's training-set statistics are not in its release; typical values (0-255)
MEAN, STD = [32.0, 32.0, 32.0], [50.0, 50.0, 50.0]


def _loaded(name: str, file: Path | None, spec: InputSpec, **kwargs: object) -> LoadedCheckpoint:
    model = load_echonet_model(file, name, **kwargs) if file else create_model(name, **kwargs)
    return LoadedCheckpoint(model.eval(), {"model": {"name": name, "kwargs": kwargs}}, spec,
                            {})


def _first_video() -> Path:
    videos = sorted(ECHONET_MINI.glob("*.avi"))
    if not videos:
        raise SystemExit(f"no --video given and no AVI under {ECHONET_MINI}")
    return videos[0]


def _beat_starts(area: np.ndarray, fps: float | None, n: int, frames: int, period: int,
                 max_beats: int) -> tuple[list[int], str]:
    """Clip starts of the beats (or, with no beats, as many clips spread evenly)."""
    _, es = detect_ed_es(area, fps)
    starts, fallback = select_beat_clips(es, n, frames, period, max_beats)
    if fallback in ("no_beats", "short_video") or not starts:
        every = all_clip_starts(n, frames, period, 1)
        pick = np.unique(np.linspace(0, len(every) - 1, max_beats).round().astype(int))
        return [int(every[i]) for i in pick], f"{fallback or 'none'}: evenly spaced clips"
    return [int(s) for s in starts], fallback or "beats"


def study(seg, ef, frames: np.ndarray, fps: float | None, args: argparse.Namespace
          ) -> dict[str, object]:
    """Time one study through `seg` and `ef` (engines or modules)."""
    t0 = time.perf_counter()
    masks = segment_video(seg, frames, seg.input_spec, args.batch)
    area = lv_area(masks)
    starts, how = _beat_starts(area, fps, len(frames), args.frames, args.period, args.max_beats)
    beat_ef = predict_ef_clips(ef, frames, ef.input_spec, np.asarray(starts), args.batch)
    t1 = time.perf_counter()
    every = all_clip_starts(len(frames), args.frames, args.period, args.stride)
    all_ef = predict_ef_clips(ef, frames, ef.input_spec, every, args.batch)
    t2 = time.perf_counter()
    return {"beats_s": t1 - t0, "all_clips_s": t2 - t1, "n_beats": len(starts), "how": how,
            "n_clips": len(every), "masks": masks, "beat_ef": beat_ef, "all_ef": all_ef}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--seg", type=Path, default=None, help="deeplabv3_resnet50_random.pt")
    parser.add_argument("--ef", type=Path, default=None, help="r2plus1d_18_32_2_pretrained.pt")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--period", type=int, default=2)
    parser.add_argument("--stride", type=int, default=1, help="all clips: every n-th start")
    parser.add_argument("--max-beats", type=int, default=5)
    parser.add_argument("--max-frames", type=int, default=0, help="cut the video (quick runs)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    item = list_items(args.video or _first_video())[0]
    sample = load_item(item, SIZE, CHANNELS)
    frames = sample.frames[:args.max_frames] if args.max_frames else sample.frames
    seg_spec = InputSpec("segmentation", SIZE, CHANNELS, mean=MEAN, std=STD)
    ef_spec = InputSpec("video_regression", SIZE, CHANNELS, frames=args.frames,
                        period=args.period, mean=MEAN, std=STD)
    seg = _loaded("deeplabv3_resnet50", args.seg, seg_spec)
    ef = _loaded("r2plus1d_18", args.ef, ef_spec)
    print(f"video {item.path.name}: {len(frames)} frames at {SIZE} px, fps {sample.fps}; "
          f"EF clips {args.frames} x period {args.period}; torch threads "
          f"{torch.get_num_threads()}; weights: {'EchoNet' if args.seg or args.ef else 'random'}")
    rows, reference = [], None
    for name in args.engines.split(","):
        t = time.perf_counter()
        seg_engine = load_engine(seg, name, (args.batch, CHANNELS, SIZE, SIZE))
        ef_engine = load_engine(ef, name, (args.batch, CHANNELS, args.frames, SIZE, SIZE))
        setup = time.perf_counter() - t
        t = time.perf_counter()
        first = study(seg_engine, ef_engine, frames, sample.fps, args)  # warm-up
        warm = time.perf_counter() - t
        runs = [study(seg_engine, ef_engine, frames, sample.fps, args)
                for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["beats_s"] + r["all_clips_s"])
        reference = reference or first
        diff = max(output_difference(torch.from_numpy(first["all_ef"]),
                                     torch.from_numpy(reference["all_ef"])),
                   float((first["masks"] != reference["masks"]).mean()))
        rows.append((name, setup, warm, best, diff))
    print(f"\n{'engine':<10}{'setup s':>9}{'1st run s':>11}{'beat-by-beat s/study':>22}"
          f"{'all clips s/study':>19}{'clips':>7}  vs eager (EF rel. / mask px)")
    for name, setup, warm, best, diff in rows:
        print(f"{name:<10}{setup:>9.1f}{warm:>11.1f}{best['beats_s']:>22.2f}"
              f"{best['all_clips_s']:>19.2f}{best['n_clips']:>7}  {diff:.2g}")
    print(f"\nbeat by beat: segmentation of all {len(frames)} frames + {rows[0][3]['n_beats']} "
          f"clip(s) ({rows[0][3]['how']}); all clips: EF only. EF tolerance {TOLERANCE} "
          "relative; masks may differ in a few boundary pixels.")


if __name__ == "__main__":
    main()
