"""One-study CPU latency of the EchoNet paper models: eager vs torch.compile vs ONNX Runtime.

The models: deeplabv3_resnet50 (LV segmentation, every frame) and r2plus1d_18 (EF from
`--frames`-frame clips every `--period` frames) at 112 px, with random weights or EchoNet-
Dynamic's released files (--seg deeplabv3_resnet50_random.pt, --ef
r2plus1d_18_32_2_pretrained.pt). One video (a real echonet-mini AVI by default, read in place;
an ultrasound DICOM works too) is predicted two ways per engine:

- beat by beat: segment every frame -> LV area -> ES frames -> one clip ending at each ES
  (up to `--max-beats`, all in one batch). With random weights there are usually no beats:
  the same number of clips, spread evenly, is timed instead (the cost is the same) and the
  table says so;
- beat by beat, coarse to fine (`--seg-strides 4`, `pipelines.echonet.fastbeats`): every
  k-th frame segmented, then the frames around each ED/ES candidate; the table gives the
  frames segmented. Random weights give a flat area curve (no candidates, so too few frames
  would be timed): `--beats-from CKPT` (a trained cinelab segmentation checkpoint, e.g.
  echonet-seg-cpu) then decides which frames are segmented and which ES frames get clips,
  while the timed deeplabv3 segments exactly those frames;
- all clips: one clip starting at every `--stride`-th frame (EchoNet's test-time protocol).

Each engine runs the study once untimed (compile, ONNX export, caches), then `--repeat` timed
times (the best is printed). Setup (loading, export, compilation) is reported separately.
Wall seconds (perf_counter) and CPU seconds of this process (process_time: less sensitive to
other load on a shared machine, but it sums over threads) are both printed.
Prints seconds per study; asserts nothing but that every engine's outputs equal eager's
within `cinelab.infer.engines.TOLERANCE`.

    python benchmarks/echonet_latency.py [--video V.avi] [--seg S.pt --ef E.pt]
        [--engines eager,compiled,onnx] [--seg-strides 1,4] [--beats-from seg/model.pt]
        [--max-frames 64 --frames 8]   # quick check
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
from cinelab.pipelines.echonet.beats import select_beat_clips
from cinelab.pipelines.echonet.fastbeats import coarse_to_fine
from cinelab.pipelines.echonet.segment import segment_video
from cinelab.pipelines.echonet.sources import list_items, load_item
from cinelab.pipelines.echonet.video import predict_ef_clips
from cinelab.pipelines.echonet.weights import load_echonet_model
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint, load_checkpoint

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


def _beat_starts(es: np.ndarray, n: int, frames: int, period: int, max_beats: int
                 ) -> tuple[list[int], str]:
    """Clip starts of the beats (or, with no beats, as many clips spread evenly)."""
    starts, fallback = select_beat_clips(es, n, frames, period, max_beats)
    if fallback in ("no_beats", "short_video") or not starts:
        every = all_clip_starts(n, frames, period, 1)
        pick = np.unique(np.linspace(0, len(every) - 1, max_beats).round().astype(int))
        return [int(every[i]) for i in pick], f"{fallback or 'none'}: evenly spaced clips"
    return [int(s) for s in starts], fallback or "beats"


class _Clock:
    """Wall and process CPU seconds since `start`."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def _segment_fn(seg, frames: np.ndarray, batch: int, guide: np.ndarray | None):
    """frame indices -> masks, through `seg`; with `guide` (masks of a trained model) the
    timed model still runs on those frames but the guide's masks are returned."""
    def segment(index: np.ndarray) -> np.ndarray:
        masks = segment_video(seg, frames, seg.input_spec, batch, index=index)[index]
        return masks if guide is None else guide[index]
    return segment


def study(seg, ef, frames: np.ndarray, fps: float | None, args: argparse.Namespace,
          seg_stride: int, guide: np.ndarray | None, all_clips: bool = True
          ) -> dict[str, object]:
    """Time one study through `seg` and `ef` (engines or modules); all clips only when
    `all_clips` and `seg_stride` is 1."""
    clock = _Clock()
    found = coarse_to_fine(_segment_fn(seg, frames, args.batch, guide), len(frames), fps,
                           seg_stride)
    seg_t = clock.lap()
    starts, how = _beat_starts(found.es, len(frames), args.frames, args.period, args.max_beats)
    beat_ef = predict_ef_clips(ef, frames, ef.input_spec, np.asarray(starts), args.batch)
    ef_t = clock.lap()
    every = all_clip_starts(len(frames), args.frames, args.period, args.stride)
    all_ef = predict_ef_clips(ef, frames, ef.input_spec, every, args.batch) \
        if all_clips and seg_stride == 1 else np.zeros(0)
    all_t = clock.lap()
    return {"seg_s": seg_t, "ef_s": ef_t, "all_clips_s": all_t, "n_beats": len(starts),
            "how": how, "n_clips": len(every), "masks": found.masks, "beat_ef": beat_ef,
            "all_ef": all_ef, "n_seg": found.n_segmented, "es": found.es, "ed": found.ed}


def _guide(path: Path | None, item, n: int) -> np.ndarray | None:
    """Masks of every frame from a trained cinelab segmentation checkpoint (untimed)."""
    if path is None:
        return None
    loaded = load_checkpoint(path)
    spec = loaded.input_spec
    frames = load_item(item, spec.size, spec.channels).frames[:n]
    return segment_video(loaded.model, frames, spec, 64)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--seg", type=Path, default=None, help="deeplabv3_resnet50_random.pt")
    parser.add_argument("--ef", type=Path, default=None, help="r2plus1d_18_32_2_pretrained.pt")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--seg-strides", default="1,4", help="1: every frame; k: fastbeats")
    parser.add_argument("--beats-from", type=Path, default=None,
                        help="trained segmentation checkpoint choosing frames and beats")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--period", type=int, default=2)
    parser.add_argument("--stride", type=int, default=1, help="all clips: every n-th start")
    parser.add_argument("--max-beats", type=int, default=5)
    parser.add_argument("--max-frames", type=int, default=0, help="cut the video (quick runs)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--channels-last", action="store_true",
                        help="eager/compiled: weights in channels_last(_3d) memory format")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    item = list_items(args.video or _first_video())[0]
    sample = load_item(item, SIZE, CHANNELS)
    frames = sample.frames[:args.max_frames] if args.max_frames else sample.frames
    guide = _guide(args.beats_from, item, len(frames))
    seg_spec = InputSpec("segmentation", SIZE, CHANNELS, mean=MEAN, std=STD)
    ef_spec = InputSpec("video_regression", SIZE, CHANNELS, frames=args.frames,
                        period=args.period, mean=MEAN, std=STD)
    seg = _loaded("deeplabv3_resnet50", args.seg, seg_spec)
    ef = _loaded("r2plus1d_18", args.ef, ef_spec)
    if args.channels_last:
        seg.model.to(memory_format=torch.channels_last)
        ef.model.to(memory_format=torch.channels_last_3d)
    strides = [int(k) for k in args.seg_strides.split(",")]
    print(f"video {item.path.name}: {len(frames)} frames at {SIZE} px, fps {sample.fps}; "
          f"EF clips {args.frames} x period {args.period}; torch threads "
          f"{torch.get_num_threads()}{', channels_last' if args.channels_last else ''}; "
          f"weights: {'EchoNet' if args.seg or args.ef else 'random'}"
          f"; frames and beats chosen by {args.beats_from or 'the timed model'}")
    rows, reference = [], {}
    for name in args.engines.split(","):
        t = time.perf_counter()
        seg_engine = load_engine(seg, name, (args.batch, CHANNELS, SIZE, SIZE))
        ef_engine = load_engine(ef, name, (args.batch, CHANNELS, args.frames, SIZE, SIZE))
        setup = time.perf_counter() - t
        t = time.perf_counter()
        study(seg_engine, ef_engine, frames[:64], sample.fps, args, 1, None, False)  # warm-up
        warm = time.perf_counter() - t
        for k in strides:
            runs = [study(seg_engine, ef_engine, frames, sample.fps, args, k, guide)
                    for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seg_s"][0] + r["ef_s"][0])
            ref = reference.setdefault(k, best)
            same = all(np.array_equal(best[x], reference[strides[0]][x]) for x in ("ed", "es"))
            diff = output_difference(torch.from_numpy(best["beat_ef"]),
                                     torch.from_numpy(ref["beat_ef"]))
            rows.append((name, k, setup, warm, best, diff, same))
            print(f"  done: {name} k={k}: beat by beat {best['seg_s'][0] + best['ef_s'][0]:.1f} s "
                  f"wall, {best['n_seg']} frames segmented", flush=True)
    _print(rows, len(frames))


def _print(rows: list, n: int) -> None:
    print(f"\n{'engine':<9}{'k':>3}{'setup s':>8}{'warm s':>7}{'frames seg':>11}"
          f"{'seg s':>13}{'EF s':>11}{'beat-by-beat s':>16}{'all clips s':>13}{'clips':>6}"
          f"  ED/ES as k={rows[0][1]}  beat EF vs eager")
    for name, k, setup, warm, r, diff, same in rows:
        total = (r["seg_s"][0] + r["ef_s"][0], r["seg_s"][1] + r["ef_s"][1])
        clips = f"{r['all_clips_s'][0]:>13.2f}{r['n_clips']:>6}" if k == 1 else f"{'-':>13}{'':>6}"
        print(f"{name:<9}{k:>3}{setup:>8.1f}{warm:>7.1f}{r['n_seg']:>6}/{n:<4}"
              f"{r['seg_s'][0]:>6.2f}/{r['seg_s'][1]:<6.1f}{r['ef_s'][0]:>5.2f}/{r['ef_s'][1]:<5.1f}"
              f"{total[0]:>8.2f}/{total[1]:<7.1f}{clips}  {'same' if same else 'DIFFER':<14}"
              f"{diff:.2g}")
    first = rows[0][4]
    print(f"\nseconds as wall/CPU (process_time, summed over threads). beat by beat = "
          f"segmentation + {first['n_beats']} beat clip(s) in one batch ({first['how']}); all "
          f"clips: EF only, k=1 rows. EF tolerance {TOLERANCE} relative.")


if __name__ == "__main__":
    main()
