"""What prediction reads: checkpoints, and a prepared store, a folder of videos/DICOMs, one
video or one DICOM.

Checkpoints: a cinelab checkpoint file, a run folder with model.pt, or a run folder with
ef/model.pt and/or seg/model.pt; whether a checkpoint is EF or segmentation comes from its
model's registry task.

Every input is listed as `SourceItem`s (cheap: nothing is decoded) and loaded one at a time
as a `Sample`: frames uint8 (T, size, size, channels) at the model's input size, the frame
rate and the known labels. A store whose size and channels match hands out its memory maps
as they are; everything else is preprocessed on the fly like `cinelab prepare` does:
ultrasound DICOMs are cropped to the scan sector and blanked outside it, videos (EchoNet AVIs
are already cropped) are only padded square and resized. A file that cannot be read becomes a
`Problem` and is skipped, never a crash of the whole run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cinelab.data.manifest import REQUIRED
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError, Problem
from cinelab.io.table import read_table
from cinelab.io.video import VIDEO_SUFFIXES
from cinelab.models.registry import UnknownModelError, model_task
from cinelab.prep.echo import preprocess_echo
from cinelab.prep.prepare import is_dicom_path, load_echo_source
from cinelab.train.checkpoint import LoadedCheckpoint, load_checkpoint, read_checkpoint

STAGE = "load"
KIND_STORE = "store"
KIND_VIDEO = "video"
KIND_DICOM = "dicom"
KIND_FOLDER = "folder"
STORE_INFO = "store.json"
ID_SEPARATOR = "__"
LABEL_ID_COLUMNS = ("sample_id", "FileName", "file_name", "file", "filename", "video", "name",
                    "id")
STORE_META_COLUMNS = ("frames", "fps")  # manifest columns the store adds that are not labels
MODEL_FILE = "model.pt"
EF_DIR, SEG_DIR = "ef", "seg"
SEG_TASK, EF_TASK = "segmentation", "video"


@dataclass(eq=False)
class SourceItem:
    """One input sample, not yet decoded."""

    sample_id: str
    path: Path
    kind: str  # KIND_STORE, KIND_VIDEO or KIND_DICOM
    labels: dict[str, Any] = field(default_factory=dict)
    store: PreparedStore | None = None


@dataclass(eq=False)
class Sample:
    """One decoded sample at the model's input size."""

    sample_id: str
    path: Path
    frames: np.ndarray  # uint8 (T, size, size, channels), possibly a np.memmap
    fps: float | None
    labels: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, float] | None = None  # (dy, dx) mm of `frames`' pixels, if known


# -- checkpoints -----------------------------------------------------------------------------


def resolve_checkpoints(path: str | Path) -> tuple[Path | None, Path | None]:
    """(EF checkpoint, segmentation checkpoint) from a checkpoint file, a run folder with
    model.pt, or a run folder with ef/model.pt and/or seg/model.pt."""
    path = Path(path)
    ef, seg = path / EF_DIR / MODEL_FILE, path / SEG_DIR / MODEL_FILE
    if path.is_dir() and (ef.is_file() or seg.is_file()):
        return (ef if ef.is_file() else None), (seg if seg.is_file() else None)
    file = model_file(path)
    return (None, file) if checkpoint_task(read_checkpoint(file)) == SEG_TASK else (file, None)


def resolve_pair(ef_checkpoint: str | Path | None,
                 seg_checkpoint: str | Path | None) -> tuple[Path | None, Path | None]:
    """Checkpoint files of predict's two arguments; the first alone may hold both."""
    if ef_checkpoint is None and seg_checkpoint is None:
        raise InputError(None, "checkpoint", "an EF and/or a segmentation checkpoint", "none")
    if seg_checkpoint is None:
        return resolve_checkpoints(ef_checkpoint)  # type: ignore[arg-type]
    ef = None if ef_checkpoint is None else model_file(ef_checkpoint)
    return ef, model_file(seg_checkpoint)


def model_file(path: str | Path) -> Path:
    """A checkpoint file, or the model.pt of a run folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / MODEL_FILE).is_file():
        raise InputError(path, "checkpoint", f"a checkpoint file or a run folder with "
                         f"{MODEL_FILE}, {EF_DIR}/{MODEL_FILE} or {SEG_DIR}/{MODEL_FILE}",
                         "a folder without any")
    return path / MODEL_FILE


def checkpoint_task(payload: dict[str, Any]) -> str:
    """The registry task of a raw checkpoint's model (else its input spec's task)."""
    try:
        return model_task(str(payload["recipe"]["model"]["name"]))
    except (KeyError, TypeError, UnknownModelError):
        return str((payload.get("input_spec") or {}).get("task", ""))


def load_for_task(path: Path | None, task: str) -> LoadedCheckpoint | None:
    """Load a checkpoint (None for None), checking that its model does `task`."""
    if path is None:
        return None
    loaded = load_checkpoint(path)
    found = checkpoint_task({"recipe": loaded.recipe, "input_spec": loaded.input_spec.to_dict()})
    if (found == SEG_TASK) != (task == SEG_TASK):
        raise InputError(path, "task", f"a {task} checkpoint", f"a {found or 'unknown'} one",
                         "pass EF and segmentation checkpoints in their own arguments")
    return loaded


# -- samples ---------------------------------------------------------------------------------


def input_kind(path: str | Path) -> str:
    """KIND_STORE, KIND_FOLDER, KIND_VIDEO or KIND_DICOM; InputError for anything else."""
    path = Path(path)
    if path.is_dir():
        return KIND_STORE if (path / STORE_INFO).exists() else KIND_FOLDER
    if not path.is_file():
        raise InputError(path, "input", "a prepared store, a folder, a video or a DICOM",
                         "nothing at that path")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return KIND_VIDEO
    if is_dicom_path(path):
        return KIND_DICOM
    raise InputError(path, "input", f"a video ({', '.join(VIDEO_SUFFIXES)}) or a DICOM file",
                     f"a file with suffix {path.suffix!r} and no DICM preamble")


def list_items(path: str | Path, labels: str | Path | None = None,
               exclude: str | Path | None = None, split: str | None = None) -> list[SourceItem]:
    """Every sample of the input, in a stable order; `labels` is an optional CSV keyed by
    sample id or file name (e.g. EchoNet's FileList.csv) whose columns become labels.
    Files under `exclude` (e.g. the output folder inside an input folder) are left out;
    `split` keeps one split of a prepared store (train/val/test)."""
    path = Path(path)
    kind = input_kind(path)
    if kind == KIND_STORE:
        items = _store_items(PreparedStore(path), split)
    elif kind == KIND_FOLDER:
        items = _folder_items(path, None if exclude is None else Path(exclude).resolve())
    else:
        items = [SourceItem(path.stem, path, kind)]
    if labels is not None:
        _attach_labels(items, read_labels(labels))
    return items


def load_item(item: SourceItem, size: int, channels: int) -> Sample:
    """Decode one item at `size` x `size` with `channels` channels (raises on a bad file)."""
    if item.kind == KIND_STORE and item.store is not None:
        frames = conform(item.store.frames(item.sample_id), size, channels)
        meta = item.store.meta(item.sample_id)
        stored = item.store.frames(item.sample_id)
        spacing = _spacing(meta.get("pixel_spacing_mm"), stored.shape[1] / size)
        return Sample(item.sample_id, item.path, frames, _valid_fps(meta.get("fps")),
                      dict(item.labels), spacing)
    src = load_echo_source(item.path)
    dicom = bool(src["dicom"])
    frames, transform = preprocess_echo(src["frames"], region=src["region"], size=size,
                                        channels=channels, blank=dicom, crop=dicom)
    spacing = _spacing(src.get("pixel_spacing_mm"), 1.0 / float(transform.get("scale", 1.0)))
    return Sample(item.sample_id, item.path, frames, _valid_fps(src["fps"]), dict(item.labels),
                  spacing)


def _spacing(value: Any, scale: float) -> tuple[float, float] | None:
    """(dy, dx) mm times `scale` (source pixels per output pixel), None when unknown."""
    if value is None:
        return None
    try:
        dy, dx = (float(v) * scale for v in value)
    except (TypeError, ValueError):
        return None
    return (dy, dx) if dy > 0 and dx > 0 and math.isfinite(dy + dx) else None


def iter_samples(
    items: Iterable[SourceItem],
    size: int,
    channels: int,
    problems: list[Problem] | None = None,
    skip: Iterable[str] = (),
) -> Iterator[Sample]:
    """Load items one by one; ids in `skip` are passed over, unreadable ones are appended to
    `problems` (stage "load") and skipped."""
    skip = set(skip)
    for item in items:
        if item.sample_id in skip:
            continue
        try:
            sample = load_item(item, size, channels)
        except Exception as exc:  # one bad file is reported and skipped
            if problems is not None:
                problems.append(Problem.from_exception(item.path, STAGE, exc))
            continue
        yield sample


def conform(frames: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Frames (T, H, W, C) as they are when already size x size x channels, else padded
    square, resized and converted to `channels` (no sector crop)."""
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.shape[1:] == (size, size, channels):
        return frames
    return preprocess_echo(np.asarray(frames), size=size, channels=channels, blank=False,
                           crop=False)[0]


def check_frames(frames: np.ndarray, size: int, channels: int) -> None:
    """Raise ValueError unless frames are uint8 (T, size, size, channels) with T >= 1."""
    expected = (size, size, channels)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != expected \
            or len(frames) == 0:
        raise ValueError(f"frames: expected uint8 (T, {size}, {size}, {channels}) with T >= 1 "
                         f"to match the checkpoint's input spec, found {frames.dtype} "
                         f"{frames.shape} (use cinelab.pipelines.echonet.sources.conform)")


def read_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """Label rows keyed by sample id (file names lose their suffix)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "labels", "a CSV file of labels", "nothing at that path")
    table = read_table(path, text_columns=LABEL_ID_COLUMNS)
    key = next((c for c in LABEL_ID_COLUMNS if c in table.columns), None)
    if key is None:
        raise InputError(path, "columns", f"one id column of {', '.join(LABEL_ID_COLUMNS)}",
                         ", ".join(map(str, table.columns)) or "no columns")
    ids = [_strip_suffix(str(v)) for v in table[key]]
    rows = table.drop(columns=[key]).to_dict("records")
    return {i: _clean(row) for i, row in zip(ids, rows, strict=True)}


def _store_items(store: PreparedStore, split: str | None = None) -> list[SourceItem]:
    manifest = store.manifest
    if split is not None:
        manifest = manifest[manifest["split"] == split]
    label_cols = [c for c in manifest.columns
                  if c not in REQUIRED and c not in STORE_META_COLUMNS]
    items = []
    for row in manifest.to_dict("records"):
        labels = _clean({c: row[c] for c in label_cols})
        items.append(SourceItem(str(row["sample_id"]), Path(str(row["path"])), KIND_STORE,
                                labels, store))
    return items


def _folder_items(root: Path, exclude: Path | None) -> list[SourceItem]:
    if exclude is not None and root.resolve().is_relative_to(exclude):
        exclude = None  # the input lies inside the output (de-identified copies): keep it
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root)
                   and not (exclude is not None and p.resolve().is_relative_to(exclude))
                   and (p.suffix.lower() in VIDEO_SUFFIXES or is_dicom_path(p)))
    if not files:
        raise InputError(root, "folder", "at least one video or DICOM file", "none found")
    rels = [p.relative_to(root) for p in files]
    return [SourceItem(i, p, KIND_VIDEO if p.suffix.lower() in VIDEO_SUFFIXES else KIND_DICOM)
            for i, p in zip(_unique_ids(rels), files, strict=True)]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _unique_ids(rels: list[Path]) -> list[str]:
    """File stems; stems that collide use the relative path, then with its suffix."""
    ids = [r.stem for r in rels]
    counts = Counter(ids)
    ids = [i if counts[i] == 1 else ID_SEPARATOR.join(r.with_suffix("").parts)
           for i, r in zip(ids, rels, strict=True)]
    counts = Counter(ids)
    return [i if counts[i] == 1 else ID_SEPARATOR.join(r.parts)
            for i, r in zip(ids, rels, strict=True)]


def _attach_labels(items: list[SourceItem], table: dict[str, dict[str, Any]]) -> None:
    for item in items:
        row = table.get(item.sample_id) or table.get(item.path.stem)
        if row:
            item.labels.update(row)


def _strip_suffix(name: str) -> str:
    path = Path(name)
    known = path.suffix.lower() in VIDEO_SUFFIXES or path.suffix.lower() in (".dcm", ".dicom")
    return path.stem if known else path.name


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """Labels without missing values, as plain Python scalars."""
    out = {}
    for key, value in row.items():
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
            continue
        out[str(key)] = value.item() if isinstance(value, np.generic) else value
    return out


def _valid_fps(fps: Any) -> float | None:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None
