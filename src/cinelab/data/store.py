"""The prepared store: every sample decoded once into uint8 arrays that memory-map.

Layout of a store folder:
  store.json             format, preprocessing spec, dataset mean/std, counts, versions
  manifest.csv           the usable samples (the input manifest's columns + array metadata)
  problems.csv           file, stage, error for every skipped input
  tracings.csv           optional: sample_id, frame, X1, Y1, X2, Y2 in store pixel coordinates
  samples/<id>.npy       uint8 (T, H, W, C) frames
  samples/<id>.mask.npy  optional uint8 (T, H, W) label masks
  samples/<id>.json      per-sample metadata, written last: its presence marks completion;
                         it records a checksum of each array file ("checksums"), recomputed
                         by the next prepare, so a damaged entry is found and rewritten
Sample ids are checked (`validate_sample_id`) before they become file names, and every path
written is checked to lie inside the store folder.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.manifest import read_manifest, validate_sample_id
from cinelab.errors import InputError, output_fault
from cinelab.utils import atomic_path, file_hash, read_json, safe_child, write_json

STORE_FORMAT = "cinelab-store/1"
OPEN_ARRAYS = 4096  # memory maps kept open per store reader (parsing .npy headers is slow)


CHECKSUMS = "checksums"  # meta key: {"frames": sha256[:16], "mask": ...} of the array files


def sample_files(root: str | Path, sample_id: str) -> dict[str, Path]:
    """Paths of one sample's frames, mask and metadata files (the id is checked first:
    InputError for an id that is not a safe file name)."""
    sample_id = validate_sample_id(sample_id)
    base = Path(root) / "samples"
    return {"frames": base / f"{sample_id}.npy", "mask": base / f"{sample_id}.mask.npy",
            "meta": base / f"{sample_id}.json"}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))


def write_sample(root: str | Path, sample_id: str, frames: np.ndarray, meta: dict[str, Any],
                 mask: np.ndarray | None = None) -> dict[str, Any]:
    """Write frames (and mask) atomically, then the metadata that marks the sample complete.

    InputError for an unsafe sample id (or a path that would leave `root`); OutputWriteError
    (stage "output" in a problem row) when the store folder cannot be written (disk full,
    read-only, ...): a run must stop on it rather than skip the sample.
    """
    if frames.dtype != np.uint8:
        raise ValueError(f"{sample_id}: frames must be uint8, found {frames.dtype}")
    files = sample_files(root, sample_id)
    for path in files.values():
        safe_child(root, path.relative_to(root))
    try:
        _save_npy(files["frames"], frames)
        checksums = {"frames": file_hash(files["frames"])}
        if mask is not None:
            _save_npy(files["mask"], mask.astype(np.uint8))
            checksums["mask"] = file_hash(files["mask"])
        meta = dict(meta, sample_id=sample_id, shape=list(frames.shape),
                    has_mask=mask is not None, **{CHECKSUMS: checksums})
        write_json(files["meta"], meta)
    except OSError as exc:
        fault = output_fault(exc, files["meta"].parent)
        if fault is None:
            raise
        raise fault from exc
    return meta


def is_complete(root: str | Path, sample_id: str, expect: dict[str, Any] | None = None,
                verify: bool = False) -> bool:
    """True when the sample's files exist, its arrays load with the recorded shape, and the
    recorded metadata matches `expect` (e.g. source hash and preprocessing spec).

    With `verify`, the array files' checksums are recomputed and must match those recorded at
    write time (a damaged entry is then incomplete, and prepare writes it again).
    """
    try:
        files = sample_files(root, sample_id)
    except InputError:
        return False
    if not files["meta"].exists() or not files["frames"].exists():
        return False
    try:
        meta = read_json(files["meta"])
        frames = np.load(files["frames"], mmap_mode="r")
        if list(frames.shape) != meta["shape"]:
            return False
        if meta.get("has_mask") and np.load(files["mask"], mmap_mode="r").shape[0] != \
                frames.shape[0]:
            return False
        if verify and not _checksums_match(files, meta):
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError):
        return False
    return all(meta.get(k) == v for k, v in (expect or {}).items())


def _checksums_match(files: dict[str, Path], meta: dict[str, Any]) -> bool:
    """Recorded checksums match the files (a meta written before checksums passes)."""
    recorded = meta.get(CHECKSUMS)
    if recorded is None:
        return True
    return all(file_hash(files[name]) == value for name, value in recorded.items())


def channel_stats(frames: np.ndarray) -> dict[str, list[float]]:
    """Per-channel sum, sum of squares and count, to combine into a dataset mean/std."""
    flat = frames.reshape(-1, frames.shape[-1]).astype(np.float64)
    return {"sum": flat.sum(0).tolist(), "sumsq": (flat**2).sum(0).tolist(),
            "count": [float(flat.shape[0])] * flat.shape[1]}


def combine_stats(stats: list[dict[str, list[float]]]) -> tuple[list[float], list[float]]:
    """Dataset mean and std (0-255 units) from per-sample channel stats."""
    total = np.sum([s["sum"] for s in stats], axis=0)
    sumsq = np.sum([s["sumsq"] for s in stats], axis=0)
    count = np.sum([s["count"] for s in stats], axis=0)
    mean = total / count
    std = np.sqrt(np.maximum(sumsq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


class PreparedStore:
    """Read access to a prepared store: manifest, memory-mapped frames, masks, tracings."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path = self.root / "store.json"
        if not info_path.exists():
            raise InputError(self.root, "store.json", "a prepared store (run `cinelab prepare`)",
                             "no store.json in that folder")
        self.info: dict[str, Any] = read_json(info_path)
        if self.info.get("format") != STORE_FORMAT:
            raise InputError(info_path, "format", STORE_FORMAT, repr(self.info.get("format")))
        if self.info.get("status") != "complete":
            raise InputError(info_path, "status", "complete",
                             repr(self.info.get("status")),
                             "the prepare run was interrupted: run `cinelab prepare` again")

    @cached_property
    def manifest(self) -> pd.DataFrame:
        """Usable samples, one row each."""
        return read_manifest(self.root / "manifest.csv")

    @property
    def ids(self) -> list[str]:
        """Sample ids in manifest order."""
        return self.manifest["sample_id"].astype(str).tolist()

    @property
    def mean(self) -> np.ndarray:
        """Per-channel dataset mean, 0-255 units."""
        return np.asarray(self.info["mean"], dtype=np.float32)

    @property
    def std(self) -> np.ndarray:
        """Per-channel dataset standard deviation, 0-255 units."""
        return np.asarray(self.info["std"], dtype=np.float32)

    @property
    def spec(self) -> dict[str, Any]:
        """The preprocessing spec that produced the store."""
        return dict(self.info["spec"])

    def split_ids(self, split: str) -> list[str]:
        """Sample ids of one split (train/val/test)."""
        m = self.manifest
        return m.loc[m["split"] == split, "sample_id"].astype(str).tolist()

    def frames(self, sample_id: str) -> np.ndarray:
        """uint8 (T, H, W, C) frames, memory-mapped (nothing is read until indexed)."""
        return self._open(sample_files(self.root, sample_id)["frames"])

    def mask(self, sample_id: str) -> np.ndarray | None:
        """uint8 (T, H, W) masks, memory-mapped, or None when the sample has none."""
        path = sample_files(self.root, sample_id)["mask"]
        return self._open(path) if path.exists() else None

    def _open(self, path: Path) -> np.ndarray:
        """A memory map of an .npy file, reused while it stays among the recent ones."""
        cache: OrderedDict[Path, np.ndarray] = self.__dict__.setdefault("_maps", OrderedDict())
        if path in cache:
            cache.move_to_end(path)
            return cache[path]
        array = np.load(path, mmap_mode="r")
        cache[path] = array
        if len(cache) > OPEN_ARRAYS:
            cache.popitem(last=False)
        return array

    def meta(self, sample_id: str) -> dict[str, Any]:
        """Per-sample metadata (fps, original shape, pixel size, source hash, transform)."""
        return read_json(sample_files(self.root, sample_id)["meta"])

    @cached_property
    def tracings(self) -> pd.DataFrame | None:
        """Tracing lines in store pixel coordinates, or None."""
        path = self.root / "tracings.csv"
        if not path.exists():
            return None
        return pd.read_csv(path, dtype={"sample_id": str})

    @cached_property
    def problems(self) -> pd.DataFrame:
        """Inputs skipped while preparing (file, stage, error)."""
        path = self.root / "problems.csv"
        return pd.read_csv(path) if path.exists() else pd.DataFrame(
            columns=["file", "stage", "error"])
