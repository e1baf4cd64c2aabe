"""Torch datasets over a prepared store: uint8 clips and traced frames, read lazily.

Items are uint8 tensors; normalisation and augmentation run on whole batches on the model's
device (see `cinelab.data.transforms`). Each dataset opens the store lazily in the process
that reads it: what travels to DataLoader workers is the store path and small id/label
arrays, never frames (memory maps are opened per item in the worker).

Random clips are deterministic per sample: the start of a sample's clip is drawn from a
generator keyed on ``(seed, epoch, sample id)``, so it does not depend on which worker reads
the sample, on the number of workers, or on the order of ids (no worker shares a random
stream with another). Call `ClipDataset.set_epoch` each epoch (fit does, via a callback).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cinelab.data.sampling import DEFAULT_PAD, all_clip_starts, clip_indices, random_clip_start
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.measure.ef import LINE_COLUMNS, tracing_area, tracing_mask

DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.1
PHASES = ("ED", "ES")


def _as_thwc(video: np.ndarray) -> np.ndarray:
    return video[..., None] if video.ndim == 3 else video


def _sample_key(sample_id: str) -> int:
    """A stable 32-bit key of a sample id (same in every process and run)."""
    return zlib.crc32(str(sample_id).encode("utf-8"))


class StoreDataset(Dataset):
    """Base: holds the store path and opens the store lazily in each process."""

    def __init__(self, store_root: str | Path | PreparedStore, ids: Sequence[str]) -> None:
        root = store_root.root if isinstance(store_root, PreparedStore) else store_root
        self.store_root = Path(root)
        self._store: PreparedStore | None = None
        self.ids = [str(i) for i in ids]
        if not self.ids:
            raise InputError(self.store_root, "ids", "at least one sample id", "none",
                             "check the split column and labels of the store manifest")
        unknown = sorted(set(self.ids) - set(self.store.ids))
        if unknown:
            raise InputError(self.store_root / "manifest.csv", "sample_id",
                             "ids present in the prepared store",
                             f"{len(unknown)} unknown id(s), e.g. {unknown[:5]}")

    @property
    def store(self) -> PreparedStore:
        """The store, opened on first use in this process."""
        if self._store is None:
            self._store = PreparedStore(self.store_root)
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None  # workers reopen the store; no cached tables travel
        return state


class ClipDataset(StoreDataset):
    """(clip uint8 (C, T, H, W), target float32 ()) for each sample id.

    `frames` frames every `period` frames; short videos are padded as `pad_mode` says
    ("loop" or "edge", see `cinelab.data.sampling`; the recipe's ``data.pad`` is the random
    translation, applied on the batch). With `random_clip`, the start is drawn per sample and
    epoch (see the module docstring); otherwise it is the middle of the possible starts.
    """

    def __init__(self, store_root: str | Path | PreparedStore, ids: Sequence[str], frames: int,
                 period: int, target: str = "EF", random_clip: bool = True,
                 seed: int = DEFAULT_SEED, pad_mode: str = DEFAULT_PAD) -> None:
        super().__init__(store_root, ids)
        self.frames, self.period, self.pad_mode = int(frames), int(period), pad_mode
        self.target, self.random_clip, self.seed = target, random_clip, int(seed)
        self.targets = target_values(self.store, self.ids, target)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Draw the clips of epoch `epoch` from now on."""
        self.epoch = int(epoch)

    def clip_start(self, sample_id: str, n_total: int) -> int:
        """Start frame of this sample's clip for the current epoch."""
        if self.random_clip:
            rng = np.random.default_rng([self.seed, self.epoch, _sample_key(sample_id)])
            return random_clip_start(rng, n_total, self.frames, self.period)
        starts = all_clip_starts(n_total, self.frames, self.period)
        return int(starts[(len(starts) - 1) // 2])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample_id = self.ids[index]
        video = _as_thwc(self.store.frames(sample_id))
        start = self.clip_start(sample_id, len(video))
        idx = clip_indices(start, self.frames, self.period, len(video), self.pad_mode)
        clip = torch.from_numpy(np.ascontiguousarray(video[idx])).permute(3, 0, 1, 2)
        return clip, torch.tensor(self.targets[index], dtype=torch.float32)


def target_values(store: PreparedStore, ids: Sequence[str], target: str) -> np.ndarray:
    """float32 labels of `ids` from the store manifest; missing or NaN values raise."""
    m = store.manifest
    if target not in m.columns:
        raise InputError(store.root / "manifest.csv", target, f"a label column {target!r}",
                         f"columns {list(m.columns)}")
    values = pd.to_numeric(m.set_index(m["sample_id"].astype(str))[target], errors="coerce")
    out = values.reindex(list(ids)).to_numpy(np.float32)
    bad = [i for i, v in zip(ids, out, strict=True) if not np.isfinite(v)]
    if bad:
        raise InputError(store.root / "manifest.csv", target, "a finite number for every sample",
                         f"{len(bad)} missing or non-numeric value(s), e.g. {bad[:5]}",
                         "leave unlabelled samples out (see labelled_ids)")
    return out


def labelled_ids(store: PreparedStore, ids: Sequence[str], target: str) -> list[str]:
    """The ids among `ids` whose `target` label is a finite number."""
    m = store.manifest
    if target not in m.columns:
        return []
    values = pd.to_numeric(m.set_index(m["sample_id"].astype(str))[target], errors="coerce")
    finite = values.reindex(list(ids)).to_numpy(np.float64)
    return [i for i, v in zip(ids, finite, strict=True) if np.isfinite(v)]


@dataclass(frozen=True)
class TracedFrame:
    """One annotated frame: its sample, frame index, phase (ED/ES) and tracing lines."""

    sample_id: str
    frame: int
    phase: str
    lines: np.ndarray | None = None  # (N, 4) tracing lines, or None: mask from the store


class TracedFrameDataset(StoreDataset):
    """(frame uint8 (C, H, W), mask uint8 (1, H, W)) for every traced ED/ES frame.

    Masks come from the tracing polygons (`measure.ef.tracing_mask`) of the sample's traced
    frames; for a sample without tracings, from its store mask (> 0) at the largest (ED) and
    smallest non-empty (ES) LV-area frames. Samples with neither are listed in `skipped`.
    """

    def __init__(self, store_root: str | Path | PreparedStore, ids: Sequence[str]) -> None:
        super().__init__(store_root, ids)
        self.skipped: list[tuple[str, str]] = []
        self.items: list[TracedFrame] = self._collect()
        if not self.items:
            raise InputError(self.store_root, "tracings", "traced frames (tracings.csv) or "
                             "masks (samples/<id>.mask.npy) for the requested samples",
                             f"none usable among {len(self.ids)} sample(s)",
                             "prepare the store with tracings or masks")

    def __len__(self) -> int:
        return len(self.items)

    def _collect(self) -> list[TracedFrame]:
        tracings = self.store.tracings
        if tracings is not None and len(tracings):
            return self._from_tracings(tracings)
        items: list[TracedFrame] = []
        for sid in self.ids:
            items += self._from_masks(sid)
        return items

    def _n_frames(self, sample_id: str) -> int:
        return int(self.store.frames(sample_id).shape[0])

    def _from_tracings(self, tracings: pd.DataFrame) -> list[TracedFrame]:
        groups = {str(k): g for k, g in tracings.groupby(tracings["sample_id"].astype(str))}
        items: list[TracedFrame] = []
        for sid in self.ids:
            group = groups.get(sid)
            items += self._from_masks(sid) if group is None else \
                self._sample_tracings(sid, group)
        return items

    def _sample_tracings(self, sample_id: str, group: pd.DataFrame) -> list[TracedFrame]:
        n_total = self._n_frames(sample_id)
        frames: list[tuple[int, np.ndarray, float]] = []
        for frame, lines_df in group.groupby("frame", sort=False):
            lines = lines_df.loc[:, list(LINE_COLUMNS)].to_numpy(np.float64)
            if not 0 <= int(frame) < n_total or len(lines) < 2:
                self.skipped.append((sample_id, f"frame {frame}: outside the video "
                                                f"({n_total} frames) or fewer than 2 lines"))
                continue
            frames.append((int(frame), lines, tracing_area(lines)))
        ed = max(frames, key=lambda t: t[2])[0] if frames else None
        return [TracedFrame(sample_id, f, PHASES[0] if f == ed else PHASES[1], lines)
                for f, lines, _ in frames]

    def _from_masks(self, sample_id: str) -> list[TracedFrame]:
        mask = self.store.mask(sample_id)
        if mask is None:
            self.skipped.append((sample_id, "no tracings and no mask"))
            return []
        areas = (np.asarray(mask).reshape(len(mask), -1) > 0).sum(axis=1)
        labelled = np.flatnonzero(areas)
        if len(labelled) == 0:
            self.skipped.append((sample_id, "mask is empty in every frame"))
            return []
        ed = int(labelled[np.argmax(areas[labelled])])
        es = int(labelled[np.argmin(areas[labelled])])
        return [TracedFrame(sample_id, ed, PHASES[0]), TracedFrame(sample_id, es, PHASES[1])]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.items[index]
        frame = _as_thwc(self.store.frames(item.sample_id))[item.frame]
        if item.lines is not None:
            mask = tracing_mask(item.lines, frame.shape[:2])
        else:
            mask = np.asarray(self.store.mask(item.sample_id)[item.frame]) > 0
        image = torch.from_numpy(np.array(frame)).permute(2, 0, 1)  # a writable copy
        return image, torch.from_numpy(mask.astype(np.uint8))[None]


def train_val_ids(store: PreparedStore, seed: int = DEFAULT_SEED,
                  val_fraction: float = DEFAULT_VAL_FRACTION) -> tuple[list[str], list[str]]:
    """Train and val ids from the manifest's split column.

    Without val rows, a seeded `val_fraction` of the training patients (at least one) is
    held out, so that no patient is in both.
    """
    train, val = store.split_ids("train"), store.split_ids("val")
    if not train:
        raise InputError(store.root / "manifest.csv", "split", "rows with split 'train'",
                         f"splits {sorted(store.manifest['split'].astype(str).unique())}")
    if val:
        return train, val
    m = store.manifest.set_index(store.manifest["sample_id"].astype(str))
    patients = m.loc[train, "patient_id"].astype(str)
    unique = np.array(sorted(patients.unique()))
    if len(unique) < 2:
        raise InputError(store.root / "manifest.csv", "split",
                         "val rows, or at least 2 training patients to hold some out",
                         f"{len(unique)} training patient(s) and no val rows")
    n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    held = set(np.random.default_rng(seed).choice(unique, n_val, replace=False).tolist())
    held_mask = patients.isin(held).to_numpy()
    return ([i for i, h in zip(train, held_mask, strict=True) if not h],
            [i for i, h in zip(train, held_mask, strict=True) if h])
