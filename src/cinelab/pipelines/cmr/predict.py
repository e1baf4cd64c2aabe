"""Segment short-axis stacks and cines with an image_segmentation checkpoint.

`segment_stack` labels the slices of one stack (uint8, at the checkpoint's size, as the
prepared store holds them); `predict_cmr` runs a checkpoint over a prepared store, or over a
folder of raw data (ACDC NIfTI, ACDC HDF5, cleaned DSB NIfTI cines, PNG image/mask
folders), which is first prepared into ``out_dir/store`` at the checkpoint's size. It writes
one label file per sample (a (patient, phase) stack; a cine's labels are (T, Z, H, W)) and
``out_dir/predictions.csv``, one row per file with patient, phase, group, spacing and the
voxel volume, so that volumes follow from label counts.

Returned labels use the store's label values (ACDC: 1 RV, 2 myocardium, 3 LV cavity) when a
class mapping (the recipe's ``data.classes``, kept in the checkpoint) is given.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.io.nifti import is_nifti, write_volume
from cinelab.pipelines.cmr.layout import read_cmr_source
from cinelab.pipelines.cmr.prepare import (
    KIND_CINE,
    ML_PER_MM3,
    cine_frames,
    prepare_cmr,
    restore_labels,
)
from cinelab.train.checkpoint import (
    InputSpec,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from cinelab.train.cv import register_cv_predictor
from cinelab.train.tasks.image_segmentation import DEFAULT_CLASSES, class_labels
from cinelab.utils import atomic_path, write_csv

DEFAULT_BATCH = 16
FORMATS = {"nifti": ".nii.gz", "npz": ".npz"}
INDEX_FILE = "predictions.csv"
STORE_DIR = "store"
MASK_DIR = "masks"
UNIT_SPACING = 1.0  # written into NIfTI headers when the source keeps no spacing
POSTPROCESS_KEY = "postprocess"  # checkpoint extra: {"largest_component": {...}}
LCC_AUTO, LCC_ALL, LCC_NONE = "auto", "all", "none"

LargestComponent = bool | str | Collection[int] | None
MIRROR_FLIPS = ((), (3,), (2,), (2, 3))  # none, left-right, up-down, both (N, C, H, W)


@torch.inference_mode()
def segment_stack(model: nn.Module, slices: np.ndarray, spec: InputSpec,
                  classes: Mapping[str, Any] | None = None, batch_size: int = DEFAULT_BATCH,
                  device: str | torch.device = "cpu",
                  largest_component: bool | Collection[int] = False,
                  mirror: bool = False,
                  ensemble: Sequence[tuple[nn.Module, InputSpec]] = ()) -> np.ndarray:
    """Labels uint8 (Z, H, W) of uint8 slices (Z, H, W) or (Z, H, W, C) at the model's size:
    class indices (0 background), or store label values with `classes` (name -> label).
    `largest_component` keeps only the largest 3D connected region of each label (True) or
    of the given output label values (the slices must be one stack, not a flattened
    cine). `mirror`: test-time augmentation, the softmax averaged over the slices as given
    and flipped left-right, up-down and both (nnU-Net's mirroring in 2D). `ensemble`: more
    (model, spec) members (e.g. the other folds' models), their softmax averaged with this
    one's, each normalised with its own spec."""
    slices = _as_zhwc(np.asarray(slices), spec)
    members = [(model, spec), *ensemble]
    for _, other in members[1:]:
        _as_zhwc(slices, other)  # every member takes the same size and channels
    out = np.zeros(slices.shape[:3], np.uint8)
    for first in range(0, len(slices), batch_size):
        batch = torch.from_numpy(np.array(slices[first:first + batch_size]))  # a copy
        prob = sum(_probabilities(m, batch, s, device, mirror) for m, s in members)
        out[first:first + len(batch)] = prob.argmax(1).to(torch.uint8).cpu().numpy()
    out = out if classes is None else to_store_labels(out, classes)
    if largest_component is True:
        out = keep_largest_components(out)
    elif largest_component:
        out = keep_largest_components(out, largest_component)
    return out


def _probabilities(model: nn.Module, batch: torch.Tensor, spec: InputSpec,
                   device: str | torch.device, mirror: bool) -> torch.Tensor:
    """Softmax (N, K, H, W) of one member on a uint8 (N, H, W, C) batch (mirrored: summed)."""
    model = model.eval().to(device)
    mean = torch.as_tensor(spec.mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    std = torch.as_tensor(spec.std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    x = (batch.to(device).permute(0, 3, 1, 2).float() - mean) / std
    return sum(_mirrored(model, x, f) for f in (MIRROR_FLIPS if mirror else ((),)))


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return logits["out"] if isinstance(logits, Mapping) else logits


def _mirrored(model: nn.Module, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Softmax of the model on `x` flipped along `dims`, flipped back."""
    if not dims:
        return _forward(model, x).softmax(1)
    return _forward(model, x.flip(dims)).softmax(1).flip(dims)


def keep_largest_components(labels: np.ndarray,
                            only: Iterable[int] | None = None) -> np.ndarray:
    """A copy of a label volume (Z, H, W) keeping, for each non-zero label (or each label in
    `only`), only its largest connected region (face connectivity); the rest becomes
    background."""
    out = np.array(labels)
    values = np.unique(out[out > 0])
    if only is not None:
        values = [v for v in values if int(v) in {int(o) for o in only}]
    for value in values:
        regions, n = ndimage.label(out == value)
        if n > 1:
            sizes = np.bincount(regions.ravel())[1:]
            out[(regions > 0) & (regions != 1 + int(np.argmax(sizes)))] = 0
    return out


def _as_zhwc(slices: np.ndarray, spec: InputSpec) -> np.ndarray:
    if slices.ndim == 3:
        slices = slices[..., None]
    expected = (spec.size, spec.size, spec.channels)
    if slices.dtype != np.uint8 or slices.ndim != 4 or slices.shape[1:] != expected \
            or not len(slices):
        raise InputError(None, "slices", f"uint8 (Z, {spec.size}, {spec.size}"
                         f"{', ' + str(spec.channels) if spec.channels > 1 else '[, 1]'}) "
                         "slices as the prepared store holds them",
                         f"{slices.dtype} {slices.shape}", "prepare the data with "
                         "cinelab.pipelines.cmr.prepare at the checkpoint's size")
    return slices


def to_store_labels(indices: np.ndarray, classes: Mapping[str, Any]) -> np.ndarray:
    """Class indices -> store label values (class k -> the k-th class's first label)."""
    table = class_labels(classes)
    if int(indices.max(initial=0)) >= len(table):
        raise InputError(None, "classes", f"a mapping for {int(indices.max()) + 1} classes "
                         "(background included)", f"{len(table)} ({dict(classes)})")
    return table[indices]


def checkpoint_classes(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """The class mapping (name -> store label) a checkpoint was trained with."""
    classes = loaded.info.get("extra", {}).get("classes") or \
        loaded.recipe.get("data", {}).get("classes")
    return dict(classes or DEFAULT_CLASSES)


# -- largest-component post-processing, validated ---------------------------------------------


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    den = int(a.sum()) + int(b.sum())
    return float("nan") if den == 0 else 2.0 * int((a & b).sum()) / den


def choose_largest_component(pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                             values: Iterable[int]) -> dict[str, Any]:
    """nnU-Net's rule on validation volumes [(predicted labels, true labels)]: for each
    label value, the mean Dice with and without keeping its largest connected region; it is
    kept for the labels where it does not lower the mean Dice. Returns {"labels": [kept],
    "dice": {label: {"raw": mean, "largest": mean, "n": volumes}}, "rule": ...}."""
    pairs = list(pairs)
    dice: dict[str, dict[str, float]] = {}
    kept = []
    for value in (int(v) for v in values):
        raw, largest = [], []
        for pred, true in pairs:
            t = np.asarray(true) == value
            raw.append(_dice(np.asarray(pred) == value, t))
            largest.append(_dice(keep_largest_components(pred, [value]) == value, t))
        raw_a, largest_a = np.asarray(raw, float), np.asarray(largest, float)
        scored = ~np.isnan(raw_a)
        mean_raw = float(raw_a[scored].mean()) if scored.any() else float("nan")
        mean_lcc = float(np.nan_to_num(largest_a[scored]).mean()) if scored.any() \
            else float("nan")
        dice[str(value)] = {"raw": mean_raw, "largest": mean_lcc, "n": int(scored.sum())}
        if scored.any() and mean_lcc >= mean_raw:
            kept.append(value)
    return {"labels": kept, "dice": dice,
            "rule": "largest component kept where it does not lower the validation Dice"}


def validate_largest_component(checkpoint: str | Path | LoadedCheckpoint,
                               store: str | Path | PreparedStore, split: str = "val",
                               batch_size: int = DEFAULT_BATCH,
                               device: str = "cpu") -> dict[str, Any]:
    """`choose_largest_component` on the labelled stacks of one split of a store (the
    validation fold), at the store's size; adds ``split`` and ``samples``."""
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else \
        load_checkpoint(checkpoint)
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    classes = checkpoint_classes(loaded)
    ids = [sid for sid in store.split_ids(split) if store.mask(sid) is not None
           and store.meta(sid).get("kind") != KIND_CINE]
    if not ids:
        raise InputError(store.root, "split", f"labelled stacks in split {split!r} to "
                         "validate the post-processing on", "none")
    pairs = [(segment_stack(loaded.model, store.frames(sid), loaded.input_spec, classes,
                            batch_size, device), np.asarray(store.mask(sid)))
             for sid in ids]
    values = sorted({int(v) for v in class_labels(classes)[1:].ravel()})
    return {**choose_largest_component(pairs, values), "split": split, "samples": len(ids)}


def record_postprocess(checkpoint: str | Path, decision: Mapping[str, Any]) -> Path:
    """Store a `validate_largest_component` decision in the checkpoint (extra.postprocess),
    where `predict_cmr(largest_component="auto")` finds it."""
    loaded = load_checkpoint(checkpoint)
    extra = dict(loaded.info.get("extra") or {})
    extra[POSTPROCESS_KEY] = {**dict(extra.get(POSTPROCESS_KEY) or {}),
                              "largest_component": dict(decision)}
    return save_checkpoint(checkpoint, loaded.model, loaded.recipe, loaded.input_spec, extra)


def resolve_largest_component(loaded: LoadedCheckpoint,
                              choice: LargestComponent) -> list[int] | bool:
    """The label values to post-process: "auto" (default) = those the checkpoint's recorded
    validation kept (none when it has no decision: never applied blindly); True/"all" =
    every label; False/None/"none" = none; or an explicit collection of label values."""
    if choice is None or choice is False or choice == LCC_NONE:
        return False
    if choice is True or choice == LCC_ALL:
        return True
    if choice == LCC_AUTO:
        decision = ((loaded.info.get("extra") or {}).get(POSTPROCESS_KEY) or {}) \
            .get("largest_component") or {}
        return [int(v) for v in decision.get("labels", [])]
    if isinstance(choice, str):
        raise InputError(None, "largest_component", f"{LCC_AUTO}, {LCC_ALL}, {LCC_NONE} or "
                         "label values", repr(choice))
    return [int(v) for v in choice]


# -- cohorts ------------------------------------------------------------------------------------


def predict_cmr(checkpoint: str | Path | LoadedCheckpoint, source: str | Path | PreparedStore,
                out_dir: str | Path, fmt: str = "nifti", native: bool = False,
                batch_size: int = DEFAULT_BATCH, device: str = "cpu",
                split: str | None = None,
                largest_component: LargestComponent = LCC_AUTO, mirror: bool = False,
                ensemble: Sequence[str | Path | LoadedCheckpoint] = ()) -> pd.DataFrame:
    """Label every sample of a store (or a raw folder, prepared first) and index the files.

    `native` writes labels on each source's own grid (and spacing) instead of the store's;
    `split` keeps one split of the store; `largest_component` keeps the largest region of
    each label per volume (per time frame for cines): "auto" (default) for the labels the
    checkpoint's recorded validation kept (`record_postprocess`; none without one), True
    for all, False for none, or label values (`resolve_largest_component`). Returns the
    index (also
    out_dir/predictions.csv). `mirror`: mirror test-time augmentation; `ensemble`: more
    checkpoints (e.g. the other folds') whose softmax is averaged with this one's (same
    size, channels and classes).
    """
    if fmt not in FORMATS:
        raise InputError(None, "fmt", f"one of {sorted(FORMATS)}", repr(fmt))
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else \
        load_checkpoint(checkpoint)
    out = Path(out_dir)
    store = _as_store(source, loaded, out)
    classes = checkpoint_classes(loaded)
    ids = store.split_ids(split) if split else store.ids
    members = [m if isinstance(m, LoadedCheckpoint) else load_checkpoint(m) for m in ensemble]
    for member in members:
        if checkpoint_classes(member) != classes:
            raise InputError(None, "ensemble", f"checkpoints with the classes {classes}",
                             f"{checkpoint_classes(member)}")
    options = {"fmt": fmt, "native": native, "batch_size": batch_size, "device": device,
               "largest_component": resolve_largest_component(loaded, largest_component),
               "mirror": mirror,
               "ensemble": [(m.model, m.input_spec) for m in members]}
    rows = [_predict_sample(loaded, store, sid, classes, out, **options) for sid in ids]
    index = pd.DataFrame(rows)
    write_csv(index, out / INDEX_FILE)
    return index


def _as_store(source: str | Path | PreparedStore, loaded: LoadedCheckpoint,
              out: Path) -> PreparedStore:
    """The source as a store at the checkpoint's size (raw folders are prepared first, as
    the training store was: same size, channels and crop)."""
    spec = loaded.input_spec
    if isinstance(source, PreparedStore):
        store = source
    elif (Path(source) / "store.json").exists():
        store = PreparedStore(source)
    else:
        crop = (loaded.info.get("extra", {}).get("prep") or {}).get("crop") or "none"
        store = _prepare_folder(Path(source), spec, str(crop), out / STORE_DIR)
    side = int(store.frames(store.ids[0]).shape[1])
    if side != spec.size:
        raise InputError(store.root, "size", f"a store of {spec.size} px (the checkpoint's)",
                         f"{side} px", f"prepare the data again at size {spec.size}")
    return store


def _prepare_folder(folder: Path, spec: InputSpec, crop: str, out: Path) -> PreparedStore:
    """Read a raw CMR folder (layout detected) and prepare it at the checkpoint's size."""
    manifest, problems = read_cmr_source(folder)  # kept in out/problems.csv
    summary = prepare_cmr(manifest, out, size=spec.size, channels=spec.channels, crop=crop,
                          workers=1, problems=problems)
    if not summary.usable:
        raise InputError(folder, "images", "at least one readable CMR stack",
                         f"none ({len(summary.problems)} problem(s))")
    return PreparedStore(out)


def _predict_sample(loaded: LoadedCheckpoint, store: PreparedStore, sid: str,
                    classes: Mapping[str, Any], out: Path, fmt: str, native: bool,
                    batch_size: int, device: str,
                    largest_component: bool | list[int], mirror: bool = False,
                    ensemble: Sequence[tuple[nn.Module, InputSpec]] = ()) -> dict[str, Any]:
    meta = store.meta(sid)
    cine = meta.get("kind") == KIND_CINE
    labels = segment_stack(loaded.model, store.frames(sid), loaded.input_spec, classes,
                           batch_size, device, largest_component and not cine, mirror,
                           ensemble)
    if cine and largest_component:
        t, z = meta["cine_shape"]
        volumes = labels.reshape(t, z, *labels.shape[1:])
        only = None if largest_component is True else largest_component
        labels = np.concatenate([keep_largest_components(v, only) for v in volumes])
    pixel, slice_mm = meta.get("pixel_spacing_mm"), meta.get("slice_spacing_mm")
    if native:
        labels = restore_labels(labels, meta["transform"])
        pixel = None if pixel is None else [p * s for p, s in
                                            zip(pixel, meta["transform"]["scale"], strict=True)]
    spacing = [slice_mm or UNIT_SPACING, *(pixel or [UNIT_SPACING] * 2)]
    if cine:
        labels = cine_frames(labels[..., None], meta)[..., 0]
        spacing = [1.0 / meta["fps"] if meta.get("fps") else UNIT_SPACING, *spacing]
    geometry = source_geometry(meta.get("source"), labels.shape) if native else None
    if geometry is not None and all(v > 0 for v in geometry[1]):
        spacing = geometry[1]
    path = _write_labels(out / MASK_DIR / f"{sid}{FORMATS[fmt]}", labels, spacing, fmt,
                         None if geometry is None else geometry[0])
    return {"sample_id": sid, **_manifest_fields(store, sid), "kind": meta.get("kind"),
            "mask_path": str(path), "shape": list(labels.shape), "native": native,
            "pixel_spacing_y": None if pixel is None else pixel[0],
            "pixel_spacing_x": None if pixel is None else pixel[1],
            "slice_spacing": slice_mm,
            "voxel_ml": None if pixel is None or slice_mm is None
            else pixel[0] * pixel[1] * slice_mm * ML_PER_MM3,
            "source": meta.get("source")}


def _manifest_fields(store: PreparedStore, sid: str) -> dict[str, Any]:
    m = store.manifest.set_index(store.manifest["sample_id"].astype(str))
    row = m.loc[sid]
    out = {k: (None if pd.isna(row[k]) else row[k]) for k in
           ("patient_id", "phase", "group", "split") if k in m.columns}
    for column, name in (("Height", "height_cm"), ("Weight", "weight_kg")):  # ACDC Info.cfg
        if column in m.columns:
            value = pd.to_numeric(row[column], errors="coerce")
            out[name] = None if pd.isna(value) else float(value)
    return out


def source_geometry(source: object, shape: tuple[int, ...]
                    ) -> tuple[np.ndarray, list[float]] | None:
    """(voxel-to-world affine, slices-first spacing) of a NIfTI source whose grid has
    `shape` (slices first), so that native labels overlay their image exactly (oblique
    orientations included); None for other sources or another grid."""
    if not source or not is_nifti(str(source)) or not Path(str(source)).is_file():
        return None
    image = nib.load(str(source))
    if tuple(image.shape) != tuple(shape)[::-1]:
        return None
    zooms = [float(z) for z in image.header.get_zooms()[: len(shape)]]
    return np.asarray(image.affine, dtype=float), zooms[::-1]


def _write_labels(path: Path, labels: np.ndarray, spacing: list[float], fmt: str,
                  affine: np.ndarray | None = None) -> Path:
    """NIfTI (slices-first array, spacing in the same order; `affine`: the source's
    voxel-to-world matrix) or compressed npz."""
    if fmt == "nifti":
        return write_volume(path, labels.astype(np.uint8), spacing, affine)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, labels=labels.astype(np.uint8),
                                spacing=np.asarray(spacing, np.float64))
    return path


# -- cross-validation ----------------------------------------------------------------------------


@register_cv_predictor("image_segmentation", needs_target=False)
def cv_segmentation_scores(checkpoint: str | Path, store: PreparedStore, ids: list[str],
                           tta: int = 0, device: str = "cpu") -> pd.DataFrame:
    """`cinelab cv` for segmentation recipes: per sample the mean Dice over the foreground
    classes present in its store mask or prediction (`pred`), and with mirror TTA
    (`pred_aug`, when tta > 0); NaN for samples without a mask."""
    loaded = load_checkpoint(checkpoint)
    classes = checkpoint_classes(loaded)
    values = [int(v) for v in class_labels(classes)[1:].ravel()]
    rows = []
    for sid in ids:
        mask = store.mask(sid)
        if mask is None:
            rows.append({"sample_id": sid, "pred": np.nan, "pred_aug": np.nan})
            continue
        scores = {}
        for key, mirror in (("pred", False), ("pred_aug", tta > 0)):
            if key == "pred_aug" and not mirror:
                scores[key] = np.nan
                continue
            labels = segment_stack(loaded.model, store.frames(sid), loaded.input_spec,
                                   classes, device=device, mirror=mirror)
            dice = [_dice(labels == v, np.asarray(mask) == v) for v in values]
            scores[key] = float(np.nanmean(dice)) if not np.isnan(dice).all() else np.nan
        rows.append({"sample_id": sid, **scores})
    return pd.DataFrame(rows, columns=["sample_id", "pred", "pred_aug"])
