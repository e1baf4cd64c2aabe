"""`cinelab prepare`: decode every sample once into the prepared store, in parallel, resumably.

Each sample is a task: read the source (video or ultrasound DICOM), crop/blank/resize, write
uint8 arrays atomically, then its metadata (which marks it complete). A rerun skips complete
samples whose source hash and spec match; a bad file becomes a row in problems.csv.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.manifest import sample_id_error, write_manifest
from cinelab.data.store import (
    STORE_FORMAT,
    channel_stats,
    combine_stats,
    is_complete,
    sample_files,
    write_sample,
)
from cinelab.errors import OUTPUT_STAGE, CinelabError, OutputWriteError, Problem, output_fault
from cinelab.io.dicom import is_dicom_path, read_ultrasound
from cinelab.io.video import read_video
from cinelab.plugins import Registry
from cinelab.prep.echo import map_mask, map_points, preprocess_echo
from cinelab.prep.runner import run_tasks
from cinelab.utils import file_hash, read_json, versions, write_csv, write_json

PREP_VERSION = 1
SKIPPED = "skipped"  # result key: the sample was complete already
DICOM_SUFFIXES = (".dcm", ".dicom", "")

MIN_ECHO_FRAMES = 3  # a cine: single-frame ultrasound DICOMs are reported, not prepared


@dataclass(frozen=True)
class PrepSpec:
    """How samples are preprocessed; recorded in the store and in every sample."""

    size: int = 112
    channels: int = 3
    crop: str = "auto"  # auto: crop to the scan sector for DICOM, keep videos as they are
    blank: bool = True
    version: int = PREP_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass
class PrepareSummary:
    """What a prepare run did."""

    store: Path
    prepared: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> int:
        """Samples available in the store after the run."""
        return self.prepared + self.skipped


def load_echo_source(path: Path) -> dict[str, Any]:
    """Frames and acquisition metadata from a video file or an ultrasound DICOM."""
    if is_dicom_path(path):
        us = read_ultrasound(path, min_frames=MIN_ECHO_FRAMES)
        return {"frames": us.frames, "fps": us.fps, "fps_source": us.fps_source,
                "pixel_spacing_mm": us.pixel_spacing_mm, "region": us.region, "dicom": True}
    video = read_video(path)
    return {"frames": video.frames, "fps": video.fps, "fps_source": "container",
            "pixel_spacing_mm": None, "region": None, "dicom": False}


def prepare_echo_sample(task: dict[str, Any]) -> dict[str, Any]:
    """Prepare one echo sample; never raises: failures come back as a problem."""
    row, root, spec = task["row"], Path(task["root"]), PrepSpec(**task["spec"])
    path = Path(row["path"])
    try:
        src = load_echo_source(path)
        crop = spec.crop == "always" or (spec.crop == "auto" and src["dicom"])
        frames, transform = preprocess_echo(src["frames"], region=src["region"], size=spec.size,
                                            channels=spec.channels, blank=spec.blank and crop,
                                            crop=crop)
        mask = _load_mask(row.get("mask_path"), transform, map_mask)
        if mask is not None and mask.shape[0] != frames.shape[0]:
            raise CinelabError(f"{row['mask_path']}: mask has {mask.shape[0]} frames, "
                               f"video has {frames.shape[0]}")
        spacing = src["pixel_spacing_mm"]
        scale = float(transform.get("scale", 1.0))
        meta = {
            "source": str(path), "source_hash": task["hash"], "spec": spec.to_dict(),
            "fps": float(src["fps"]), "fps_source": src["fps_source"],
            "original_shape": list(src["frames"].shape),
            "pixel_spacing_mm": None if spacing is None else [s / scale for s in spacing],
            "transform": transform, "stats": channel_stats(frames),
        }
        meta = write_sample(root, str(row["sample_id"]), frames, meta, mask)
        return {"sample_id": row["sample_id"], "meta": meta}
    except Exception as exc:  # one bad file is reported and skipped
        problem = Problem.from_exception(path, "prepare", exc)
        return {"sample_id": row["sample_id"], "problem": asdict(problem)}


def _load_mask(mask_path: Any, transform: dict, map_mask: Callable) -> np.ndarray | None:
    if not isinstance(mask_path, str) or not mask_path:
        return None
    with np.load(mask_path) as data:
        masks = data["mask"]
    return np.stack([map_mask(transform, m) for m in masks]).astype(np.uint8)


#: modality -> preparer(task) -> result; a pipeline registers the modalities it prepares
PREPARERS: Registry[Callable[[dict[str, Any]], dict[str, Any]]] = Registry("modality")
PREPARERS.add("echo", prepare_echo_sample)


def register_preparer(modality: str, fn: Callable[[dict[str, Any]], dict[str, Any]]
                      ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Prepare manifest rows of `modality` with `fn` (never raises; problems come back)."""
    return PREPARERS.add(modality, fn)


def prepare(
    manifest: pd.DataFrame,
    out: str | Path,
    spec: PrepSpec | None = None,
    tracings: pd.DataFrame | None = None,
    workers: int | None = None,
    scheduler: Any = None,
    force: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    problems: Sequence[Problem] = (),
) -> PrepareSummary:
    """Prepare every manifest row into the store at `out`; resumable and idempotent.

    `problems` found while reading the layout (before this step) come first in the store's
    problems.csv and in the summary, so a reader's problem is never lost on the way.

    Rows with an unsafe or repeated sample id become problems (the first of a repeated id is
    prepared). A complete sample is skipped only when its recorded checksums still match its
    files. When the store folder cannot be written (disk full, read-only, ...) the run stops
    with OutputWriteError and the store stays "incomplete": finished samples are kept and a
    rerun goes on from them.
    """
    out = Path(out)
    spec = spec or PrepSpec()
    try:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        for stale in (out / "samples").glob(".*.tmp*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        _write_info(out, spec, status="incomplete")
    except OSError as exc:
        _raise_fault(exc, out)
    summary = PrepareSummary(store=out, problems=list(problems))
    tasks = []
    seen: dict[str, int] = {}
    for i, row in enumerate(manifest.to_dict("records")):
        if not _id_ok(row, i, seen, summary):
            continue
        task = _task(row, out, spec, summary)
        if task is None:
            continue
        if not force:  # the worker skips it when complete and its checksums still match
            task["expect"] = {"source_hash": task["hash"], "spec": spec.to_dict()}
        tasks.append(task)
    fault: Problem | None = None
    for result in run_tasks(_dispatch, tasks, workers=workers, scheduler=scheduler):
        if result.get(SKIPPED):
            summary.skipped += 1
        elif "problem" in result:
            problem = Problem(**result["problem"])
            if problem.stage == OUTPUT_STAGE:
                fault = fault or problem
                continue
            summary.failed += 1
            summary.problems.append(problem)
        else:
            summary.prepared += 1
        if on_result is not None:
            on_result(result)
    if fault is not None:
        raise OutputWriteError(fault.file, None, fault.found or fault.error,
                               "free some space or fix the folder, then run the prepare again: "
                               "finished samples are kept")
    try:
        _finalise(out, manifest, spec, tracings, summary)
    except OSError as exc:  # store.json is written last: the store stays incomplete
        _raise_fault(exc, out)
    return summary


def _raise_fault(exc: OSError, out: Path) -> None:
    """Raise the OutputWriteError of an output fault (or `exc` itself)."""
    fault = output_fault(exc, out)
    if fault is None:
        raise exc
    raise fault from exc


def _id_ok(row: dict[str, Any], i: int, seen: dict[str, int],
           summary: PrepareSummary) -> bool:
    """A safe sample id not used by an earlier row; else a problem row (and False)."""
    sid = row.get("sample_id")
    bad = sample_id_error(sid)
    if bad is None and str(sid) in seen:
        bad = f"{sid!r} again (first in row {seen[str(sid)]})"
        expected = "a unique sample id"
    else:
        expected = "a safe sample id ([A-Za-z0-9][A-Za-z0-9._-]{0,127}, no '..')"
    if bad is not None:
        summary.problems.append(Problem(str(row.get("path")), "prepare",
                                        f"sample_id: expected {expected}, found {bad}",
                                        row=i, column="sample_id", expected=expected,
                                        found=bad))
        summary.failed += 1
        return False
    seen[str(sid)] = i
    return True


def _task(row: dict[str, Any], out: Path, spec: PrepSpec,
          summary: PrepareSummary) -> dict[str, Any] | None:
    path = Path(str(row["path"]))
    modality = str(row.get("modality") or "echo")
    if modality not in PREPARERS:
        summary.problems.append(Problem(str(path), "prepare",
                                        f"modality: expected one of {PREPARERS.names()}, "
                                        f"found {modality!r}"))
        summary.failed += 1
        return None
    try:
        digest = file_hash(path)  # refuses devices, FIFOs and sockets before opening them
    except (OSError, CinelabError) as exc:
        summary.problems.append(Problem.from_exception(path, "prepare", exc))
        summary.failed += 1
        return None
    return {"row": _plain(row), "root": str(out), "spec": spec.to_dict(), "hash": digest,
            "modality": modality}


def _dispatch(task: dict[str, Any]) -> dict[str, Any]:
    """Skip a complete sample (its checksums recomputed here, in the worker), else prepare."""
    sid = str(task["row"]["sample_id"])
    if "expect" in task and is_complete(task["root"], sid, task["expect"], verify=True):
        return {"sample_id": sid, SKIPPED: True}
    return PREPARERS.get(task["modality"])(task)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}


def _finalise(out: Path, manifest: pd.DataFrame, spec: PrepSpec,
              tracings: pd.DataFrame | None, summary: PrepareSummary) -> None:
    metas = {}
    for sid in manifest["sample_id"].astype(str):
        if sample_id_error(sid) is None and sid not in metas and \
                sample_files(out, sid)["meta"].exists() and is_complete(out, sid):
            metas[sid] = read_json(sample_files(out, sid)["meta"])
    ids = manifest["sample_id"].astype(str)
    usable = manifest[ids.isin(metas) & ~ids.duplicated(keep="first")].copy()
    usable["frames"] = [metas[s]["shape"][0] for s in usable["sample_id"].astype(str)]
    usable["fps"] = [metas[s]["fps"] for s in usable["sample_id"].astype(str)]
    write_manifest(usable, out / "manifest.csv")
    problems = pd.DataFrame([asdict(p) for p in summary.problems],
                            columns=list(Problem.__dataclass_fields__))
    write_csv(problems, out / "problems.csv")
    if tracings is not None:
        write_csv(_map_tracings(tracings, metas), out / "tracings.csv")
    train = usable.loc[usable["split"] == "train", "sample_id"].astype(str).tolist()
    stats_ids = train or list(metas)
    mean, std = combine_stats([metas[s]["stats"] for s in stats_ids]) if stats_ids else ([], [])
    _write_info(out, spec, status="complete" if metas else "empty", mean=mean, std=std,
                counts={"usable": len(metas), "problems": len(summary.problems)},
                stats_from="train" if train else "all")


def _map_tracings(tracings: pd.DataFrame, metas: dict[str, dict]) -> pd.DataFrame:
    parts = []
    for sid, group in tracings.groupby("sample_id", sort=False):
        if str(sid) not in metas:
            continue
        g = group.copy()
        transform = metas[str(sid)]["transform"]
        g["X1"], g["Y1"] = map_points(transform, g["X1"].to_numpy(), g["Y1"].to_numpy())
        g["X2"], g["Y2"] = map_points(transform, g["X2"].to_numpy(), g["Y2"].to_numpy())
        parts.append(g)
    cols = ["sample_id", "frame", "X1", "Y1", "X2", "Y2"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def _write_info(out: Path, spec: PrepSpec, status: str, **extra: Any) -> None:
    info_path = out / "store.json"
    info = read_json(info_path) if info_path.exists() else {}
    info.update({"format": STORE_FORMAT, "spec": spec.to_dict(), "status": status,
                 "versions": versions()}, **extra)
    write_json(info_path, info)
