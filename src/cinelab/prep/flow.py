"""Dense optical flow per video: OpenCV Farneback, TV-L1 (opencv-contrib), torchvision RAFT.

flow[t] carries frame t onto frame t+1: channel 0 is dx (px, to the right), channel 1 dy (px,
down). In a prepared store, beside each sample's frames:
  samples/<id>.flow.npy   uint8 (T, H, W, 2): round(flow / scale * 127.5 + 128) clipped to
                          0..255; the T-1 flows of T frames plus the last one repeated, so
                          flow and frames share frame indices
  samples/<id>.flow.json  method, parameters, scale, shape, the frames it came from; written
                          last, so its presence marks the flow complete
`prepare_flow` is parallel (run_tasks: processes or Dask), resumable and idempotent like
prepare; RAFT runs in this process, batched on the given device, from a local weights file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from cinelab.data.flow_store import (  # noqa: F401  (re-exported for flow users)
    QUANT_HALF_RANGE,
    dequantise_flow,
    flow_files,
    quantise_flow,
    read_flow,
)
from cinelab.data.store import sample_files
from cinelab.errors import (
    CinelabError,
    InputError,
    MissingWeightsError,
    Problem,
    UnreadableFileError,
)
from cinelab.prep.runner import run_tasks
from cinelab.utils import atomic_path, file_hash, read_json, write_csv, write_json

FLOW_FORMAT = "cinelab-flow/1"
METHODS = ("farneback", "tvl1", "raft", "raft_small", "raft_large")
FARNEBACK_PARAMS = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3,
                    "poly_n": 5, "poly_sigma": 1.2, "flags": 0}

RAFT_MULTIPLE = 8  # RAFT needs sides divisible by 8 ...
RAFT_MIN_SIDE = 128  # ... and at least 128 px (its correlation pyramid); smaller are padded
RAFT_BATCH = 8
RAFT_UPDATES = 12
RAFT_FILES = {"raft_small": "raft_small_C_T_V2-01064c6d.pth",
              "raft_large": "raft_large_C_T_SKHT_V2-ff5fadd5.pth"}
# The weights folder of cinelab.models.weights, read here without importing cinelab.models
# (which loads MONAI: seconds per flow worker).
WEIGHTS_ENV = "CINELAB_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "~/.cache/cinelab/weights"
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
ERROR_CHARS = 200  # of a state-dict mismatch, in error messages
CONTRIB_FIX = ("install opencv-contrib-python-headless (same version) in place of "
               "opencv-python-headless, or use method='farneback'")


class FlowUnavailableError(CinelabError):
    """The requested optical-flow method cannot run in this environment."""


def tvl1_available() -> bool:
    """True when OpenCV has the contrib module with Dual TV-L1 (cv2.optflow)."""
    return _tvl1_factory() is not None


def _tvl1_factory() -> Callable[[], Any] | None:
    optflow = getattr(cv2, "optflow", None)
    factory = getattr(optflow, "DualTVL1OpticalFlow_create", None)
    return factory or getattr(cv2, "DualTVL1OpticalFlow_create", None)


def available_methods(raft_weights: str | Path | None = None) -> list[str]:
    """Methods that can run now: farneback always, tvl1 with opencv-contrib, raft when
    `raft_weights` names a local file (a path or a bare name in the weights folder)."""
    out = ["farneback"] + (["tvl1"] if tvl1_available() else [])
    if raft_weights is not None:
        try:
            _raft_weights_file("raft", raft_weights)
            out.append("raft")
        except MissingWeightsError:
            pass
    return out


def check_method(method: str, raft_weights: str | Path | None = None) -> None:
    """Raise a clear error when `method` is unknown or cannot run here."""
    if method not in METHODS:
        raise InputError(None, "method", f"one of {METHODS}", repr(method))
    if method == "tvl1" and not tvl1_available():
        raise FlowUnavailableError(
            f"method 'tvl1' needs OpenCV's contrib module (cv2.optflow), which this OpenCV "
            f"{cv2.__version__} lacks: {CONTRIB_FIX}")
    if method.startswith("raft"):
        _raft_weights_file(method, raft_weights)


def weights_dir() -> Path:
    """The local weights folder: $CINELAB_WEIGHTS or ~/.cache/cinelab/weights."""
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def _raft_weights_file(method: str, raft_weights: str | Path | None) -> Path:
    """The local RAFT weights: a path, a bare name in the weights folder, or (None) one of
    torchvision's file names found there; else MissingWeightsError naming file and folder."""
    names = [RAFT_FILES[method]] if method in RAFT_FILES else list(RAFT_FILES.values())
    what = (f"torchvision's RAFT optical-flow weights ({' or '.join(names)}, a state dict of "
            f"torchvision.models.optical_flow.{method if method in RAFT_FILES else 'raft_*'})")
    folder = weights_dir()
    candidates = [folder / n for n in names]
    if raft_weights is not None:
        path = Path(raft_weights).expanduser()
        candidates = [path] + ([folder / path] if len(path.parts) == 1 else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingWeightsError(
        f"RAFT optical flow needs a local weights file: {what}. Not found at "
        f"{', '.join(map(str, candidates))}. Put it there (or pass its path as raft_weights, "
        f"or set {WEIGHTS_ENV} to its folder). cinelab never downloads weights.")


def to_grey(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W) from (T, H, W) or (T, H, W, 1|3) frames."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or \
            (frames.ndim == 4 and frames.shape[-1] not in (1, 3)):
        raise InputError(None, "frames", "uint8 (T, H, W) or (T, H, W, 1|3)",
                         f"{frames.dtype} array of shape {frames.shape}")
    if frames.ndim == 3:
        return frames
    if frames.shape[-1] == 1:
        return frames[..., 0]
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def compute_flow(
    frames: np.ndarray,
    method: str = "farneback",
    raft_weights: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = RAFT_BATCH,
) -> np.ndarray:
    """Flow between consecutive frames: float32 (T-1, H, W, 2), dx then dy in pixels."""
    check_method(method, raft_weights)
    grey = to_grey(frames)
    if grey.shape[0] < 2:
        raise InputError(None, "frames", "at least 2 frames", f"{grey.shape[0]} frame(s)")
    if method == "farneback":
        return _pairwise(grey, lambda a, b: cv2.calcOpticalFlowFarneback(
            a, b, None, **FARNEBACK_PARAMS))
    if method == "tvl1":
        solver = _tvl1_factory()()  # type: ignore[misc]
        return _pairwise(grey, lambda a, b: solver.calc(a, b, None))
    return _raft_flow(grey, method, _raft_weights_file(method, raft_weights), device, batch_size)


def _pairwise(grey: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
              ) -> np.ndarray:
    out = np.empty((grey.shape[0] - 1, *grey.shape[1:], 2), np.float32)
    for t in range(grey.shape[0] - 1):
        out[t] = fn(grey[t], grey[t + 1])
    return out


@functools.lru_cache(maxsize=2)
def _load_raft(method: str, weights: str, device: str) -> Any:
    """A RAFT model with the local weights (architecture from the file when method='raft')."""
    import torch
    from torchvision.models.optical_flow import raft_large, raft_small

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on bad files
        raise UnreadableFileError(weights, "weights", "a torch.save state dict",
                                  f"{type(exc).__name__}: {exc}") from exc
    for key in STATE_DICT_KEYS:  # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    builders = {"raft_small": raft_small, "raft_large": raft_large}
    names = [method] if method in builders else ["raft_large", "raft_small"]
    errors = []
    for name in names:
        model = builders[name](weights=None)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            errors.append(f"{name}: {lines[-1][:ERROR_CHARS] if lines else exc}")
            continue
        return model.eval().to(device)
    raise InputError(weights, "state_dict", f"RAFT weights for {' or '.join(names)}",
                     "; ".join(errors))


def _raft_flow(grey: np.ndarray, method: str, weights: Path, device: str,
               batch_size: int) -> np.ndarray:
    """RAFT on frame pairs, `batch_size` pairs at a time; input edge-padded to sides that are
    multiples of 8 and at least 128 px, the flow cropped back."""
    import torch
    import torch.nn.functional as F

    model = _load_raft(method, str(weights), device)
    h, w = grey.shape[1:]
    pad = (0, _padded(w) - w, 0, _padded(h) - h)
    images = torch.from_numpy(np.ascontiguousarray(grey)).float().div(QUANT_HALF_RANGE)
    images = images.sub(1.0)[:, None].expand(-1, 3, -1, -1)  # [-1, 1], 3 channels
    out = []
    with torch.inference_mode():
        for start in range(0, grey.shape[0] - 1, batch_size):
            stop = min(start + batch_size, grey.shape[0] - 1)
            a = F.pad(images[start:stop], pad, mode="replicate").to(device)
            b = F.pad(images[start + 1:stop + 1], pad, mode="replicate").to(device)
            flow = model(a, b, num_flow_updates=RAFT_UPDATES)[-1]
            out.append(flow[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _padded(side: int) -> int:
    return max(RAFT_MIN_SIDE, side + (-side % RAFT_MULTIPLE))


def flow_complete(root: str | Path, sample_id: str, expect: dict[str, Any] | None = None) -> bool:
    """True when the flow files exist, the array has the recorded shape and `expect` matches."""
    files = flow_files(root, sample_id)
    if not files["meta"].exists() or not files["flow"].exists():
        return False
    try:
        meta = read_json(files["meta"])
        if list(np.load(files["flow"], mmap_mode="r").shape) != meta["shape"]:
            return False
    except (OSError, ValueError, KeyError):
        return False
    return all(meta.get(k) == v for k, v in (expect or {}).items())


@dataclass
class FlowSummary:
    """What a prepare_flow run did."""

    store: Path
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    computed: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list[Problem] = field(default_factory=list)


def flow_params(method: str, raft_weights: str | Path | None = None) -> dict[str, Any]:
    """What determines a method's output (recorded; a change makes prepare_flow recompute)."""
    if method == "farneback":
        return dict(FARNEBACK_PARAMS)
    if method.startswith("raft"):
        weights = _raft_weights_file(method, raft_weights)
        return {"num_flow_updates": RAFT_UPDATES, "weights": weights.name,
                "weights_hash": file_hash(weights)}
    return {}


def flow_sample(task: dict[str, Any]) -> dict[str, Any]:
    """Compute, quantise and write one sample's flow; never raises (failures -> problem)."""
    root, sid = Path(task["root"]), str(task["sample_id"])
    frames_path = sample_files(root, sid)["frames"]
    try:
        flow = compute_flow(np.load(frames_path), task["method"], task["raft_weights"],
                            task["device"])
        flow = np.concatenate([flow, flow[-1:]])  # one flow per frame: repeat the last
        q, scale = quantise_flow(flow, task["scale"])
        files = flow_files(root, sid)
        with atomic_path(files["flow"]) as tmp, open(tmp, "wb") as f:
            np.save(f, q)
        meta = {**task["expect"], "format": FLOW_FORMAT, "sample_id": sid, "scale": scale,
                "shape": list(q.shape), "channels": ["dx", "dy"], "padding": "repeat_last",
                "encoding": "uint8 = clip(round(flow_px / scale * 127.5 + 128), 0, 255)"}
        write_json(files["meta"], meta)  # last: marks the flow complete
        return {"sample_id": sid, "meta": meta}
    except Exception as exc:  # one bad sample is reported and skipped
        return {"sample_id": sid, "problem": asdict(Problem.from_exception(frames_path, "flow",
                                                                           exc))}


def prepare_flow(
    store_root: str | Path,
    method: str = "farneback",
    workers: int | None = None,
    scheduler: Any = None,
    force: bool = False,
    raft_weights: str | Path | None = None,
    device: str = "cpu",
    scale: float | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> FlowSummary:
    """Flow for every sample of a prepared store, beside its frames; resumable, idempotent.

    A sample is skipped when its flow was made by the same method, parameters and scale from
    the same frames (the hash of the sample's metadata). `scale=None` scales each video by its
    own max |flow|; a number fixes it for the cohort. RAFT runs here (workers ignored).
    """
    root = Path(store_root)
    check_method(method, raft_weights)
    ids = _store_ids(root)
    summary = FlowSummary(store=root, method=method, params=flow_params(method, raft_weights))
    tasks = []
    for sid in ids:
        task = _flow_task(root, sid, summary, raft_weights, device, scale)
        if task is None:
            continue
        if not force and flow_complete(root, sid, task["expect"]):
            summary.skipped += 1
            continue
        tasks.append(task)
    if method.startswith("raft"):
        workers, scheduler = 1, None
    for result in run_tasks(flow_sample, tasks, workers=workers, scheduler=scheduler):
        if "problem" in result:
            summary.failed += 1
            summary.problems.append(Problem(**result["problem"]))
        else:
            summary.computed += 1
        if on_result is not None:
            on_result(result)
    _finalise(root, summary, scale, len(ids))
    return summary


def _store_ids(root: Path) -> list[str]:
    """Sample ids of a prepared store (its manifest.csv)."""
    path = root / "manifest.csv"
    if not (root / "store.json").exists() or not path.exists():
        raise InputError(root, "store", "a prepared store (run `cinelab prepare` first)",
                         "no store.json / manifest.csv in that folder")
    return pd.read_csv(path, usecols=["sample_id"], dtype=str)["sample_id"].tolist()


def _flow_task(root: Path, sid: str, summary: FlowSummary, raft_weights: str | Path | None,
               device: str, scale: float | None) -> dict | None:
    method, params = summary.method, summary.params
    meta_path = sample_files(root, sid)["meta"]
    if not meta_path.exists():
        summary.failed += 1
        summary.problems.append(Problem(str(meta_path), "flow", "frames not prepared "
                                        "(no sample metadata): run `cinelab prepare` again"))
        return None
    expect = {"method": method, "params": params, "scale_requested": scale,
              "frames_meta_hash": file_hash(meta_path)}
    return {"root": str(root), "sample_id": sid, "method": method, "device": device,
            "raft_weights": None if raft_weights is None else str(raft_weights),
            "scale": scale, "expect": expect}


def _finalise(root: Path, summary: FlowSummary, scale: float | None, n: int) -> None:
    """flow_problems.csv and a `flow` entry in store.json."""
    columns = list(Problem.__dataclass_fields__)
    write_csv(pd.DataFrame([asdict(p) for p in summary.problems], columns=columns),
              root / "flow_problems.csv")
    info = read_json(root / "store.json")
    info["flow"] = {"format": FLOW_FORMAT, "method": summary.method,
                    "params": summary.params, "scale_requested": scale,
                    "samples": n - len(summary.problems), "problems": len(summary.problems)}
    write_json(root / "store.json", info)
