"""Every prepared store a CXR ensemble needs, in one call, and the lung-mask step before it.

`prepare_cxr_stores` writes one prepared store per (crop, size) under one folder::

    <out>/crop-224/  crop-331/  uncrop-224/  uncrop-331/    (names: `store_name`)
    <out>/crops.csv      sample_id, mask_source, crop_applied, reason (why not cropped)
    <out>/stores.json    {stores: {name: {crop, size, channels, path, prepared, skipped,
                         failed}}, crop_source: unet | files | none, cropped, not_cropped}

"crop" stores hold the square lung crop when the sample's lung mask (manifest ``mask_path``)
is plausible and the whole image otherwise (the reason is recorded per sample, see
`cinelab.pipelines.cxr.crop.lung_crop_box`); "uncrop" stores always hold the whole image. Both keep
the lung mask beside the image when there is one, so an uncropped store with masks is also
the training set of the lung U-Net (task image_segmentation, recipe cxr-lungseg-cpu).

Lung-mask step for cohorts without masks: `train_lung_unet` fits the U-Net on the samples
that have masks; `predict_lung_masks` writes its predicted masks as PNGs for the others and
returns the manifest with their ``mask_path`` filled (``mask_source``: file | predicted |
none), ready for `prepare_cxr_stores`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError, Problem
from cinelab.evaluate.metrics import dice
from cinelab.io.cxr_dicom import read_cxr
from cinelab.pipelines.cxr.crop import (
    DEFAULT_SIZES,
    VARIANTS,
    fit_mask,
    read_lung_mask,
)
from cinelab.pipelines.cxr.predict import lung_mask
from cinelab.prep.prepare import PrepareSummary, PrepSpec, prepare
from cinelab.train.checkpoint import load_checkpoint
from cinelab.train.fit import fit
from cinelab.train.recipe import Recipe, apply_overrides, ensemble_members, load_recipe
from cinelab.utils import read_json, write_csv, write_json

CROPS_CSV = "crops.csv"
STORES_JSON = "stores.json"
STORE_INFO = "store.json"
CROP_SOURCE_KEY = "crop_source"
MASK_COLUMN = "mask_path"
SOURCE_COLUMN = "mask_source"
LUNG_CLASSES = {"lung": 1}  # image_segmentation classes of a store's 0/1 lung masks
LUNG_RECIPE = "cxr-lungseg-cpu"
DEFAULT_CHANNELS = 3
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
ID_HASH_CHARS = 8
STAGE = "lung-mask"


@dataclass
class CxrStores:
    """The stores of one cohort: (crop, size) -> folder, prepare summaries, crop decisions."""

    root: Path
    stores: dict[tuple[str, int], Path] = field(default_factory=dict)
    summaries: dict[tuple[str, int], PrepareSummary] = field(default_factory=dict)
    crops: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def problems(self) -> list[Problem]:
        """Every problem of every store (a bad file appears once per store)."""
        return [p for s in self.summaries.values() for p in s.problems]


def store_name(crop: str, size: int) -> str:
    """Folder name of the (crop, size) store, e.g. "crop-224"."""
    if crop not in VARIANTS:
        raise InputError(None, "crop", f"one of {list(VARIANTS)}", repr(crop))
    return f"{crop}-{int(size)}"


def prepare_cxr_stores(manifest: pd.DataFrame, out: str | Path,
                       sizes: Sequence[int] = DEFAULT_SIZES,
                       crops: Sequence[str] = VARIANTS, channels: int = DEFAULT_CHANNELS,
                       workers: int | None = None, scheduler: Any = None,
                       force: bool = False) -> CxrStores:
    """Prepare every (crop, size) store of a CXR manifest under `out` (resumable)."""
    out = Path(out)
    result = CxrStores(out)
    source = crop_source(manifest)
    for crop in _unique(crops):
        for size in _unique(int(s) for s in sizes):
            path = out / store_name(crop, size)
            spec = PrepSpec(size=size, channels=int(channels), crop=crop, blank=False)
            result.summaries[(crop, size)] = prepare(manifest, path, spec, workers=workers,
                                                     scheduler=scheduler, force=force)
            result.stores[(crop, size)] = path
            _record_crop_source(path, source)
    result.crops = crop_decisions(result.stores, manifest)
    write_csv(result.crops, out / CROPS_CSV)
    write_json(out / STORES_JSON, {**_index(result, int(channels)), "crop_source": source})
    return result


def _record_crop_source(store: Path, source: str) -> None:
    """Add the crop source to a store's store.json (a member's checkpoint copies it)."""
    info_path = store / STORE_INFO
    if info_path.is_file():
        write_json(info_path, {**read_json(info_path), CROP_SOURCE_KEY: source})


def crop_source(manifest: pd.DataFrame) -> str:
    """The cohort's one crop source: "unet" when its masks were predicted (the U-Net masks
    every image, `predict_lung_masks`), "files" for mask files, "none" without masks."""
    sources = set(_mask_sources(manifest).values())
    if "predicted" in sources:
        return "unet"
    return "files" if "file" in sources else "none"


def stores_crop_source(stores: Any) -> str | None:
    """The crop source recorded in a stores folder's stores.json, or in the store.json of
    the first store of a {(crop, size): store} mapping (None: not recorded)."""
    if isinstance(stores, str | Path):
        path = Path(stores) / STORES_JSON
    else:
        path = Path(next(iter(stores.values()), ".")) / STORE_INFO
    return read_json(path).get(CROP_SOURCE_KEY) if path.is_file() else None


def stores_for_recipe(recipe: Any, manifest: pd.DataFrame, out: str | Path,
                      **kwargs: Any) -> CxrStores:
    """The stores an ensemble recipe's members need: its sizes and crops, and the channels
    of its model (``model.kwargs.in_channels``, default 3)."""
    members = [r for _, r in ensemble_members(recipe)] or [recipe]
    sizes = sorted({int(r.data.size) for r in members})
    crops = [c for c in VARIANTS if c in {r.data.crop or "uncrop" for r in members}]
    channels = int(recipe.model.kwargs.get("in_channels", DEFAULT_CHANNELS))
    return prepare_cxr_stores(manifest, out, sizes, crops, channels, **kwargs)


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def crop_decisions(stores: dict[tuple[str, int], Path], manifest: pd.DataFrame) -> pd.DataFrame:
    """sample_id, mask_source, crop_applied, reason: from the first crop store's samples."""
    columns = ["sample_id", SOURCE_COLUMN, "crop_applied", "reason"]
    crop_stores = [p for (crop, _), p in stores.items() if crop == "crop"]
    if not crop_stores:
        return pd.DataFrame(columns=columns)
    store = PreparedStore(crop_stores[0])
    sources = _mask_sources(manifest)
    rows = []
    for sid in store.ids:
        decision = store.meta(sid).get("crop", {})
        rows.append({"sample_id": sid, SOURCE_COLUMN: sources.get(sid, ""),
                     "crop_applied": bool(decision.get("applied")),
                     "reason": str(decision.get("reason", ""))})
    return pd.DataFrame(rows, columns=columns)


def _mask_sources(manifest: pd.DataFrame) -> dict[str, str]:
    ids = manifest["sample_id"].astype(str)
    if SOURCE_COLUMN in manifest.columns:
        return dict(zip(ids, manifest[SOURCE_COLUMN].fillna("").astype(str), strict=True))
    paths = manifest.get(MASK_COLUMN, pd.Series("", index=manifest.index)).fillna("")
    return {i: "file" if str(p) else "none" for i, p in zip(ids, paths, strict=True)}


def _index(result: CxrStores, channels: int) -> dict[str, Any]:
    index = {}
    for (crop, size), path in result.stores.items():
        summary = result.summaries[(crop, size)]
        index[store_name(crop, size)] = {
            "crop": crop, "size": size, "channels": channels, "path": str(path),
            "prepared": summary.prepared, "skipped": summary.skipped, "failed": summary.failed}
    applied = int(result.crops["crop_applied"].sum()) if len(result.crops) else 0
    return {"stores": index, "cropped": applied,
            "not_cropped": int(len(result.crops) - applied)}


def read_store_index(out: str | Path) -> dict[tuple[str, int], Path]:
    """(crop, size) -> store folder, from a folder written by `prepare_cxr_stores`."""
    info = read_json(Path(out) / STORES_JSON)
    return {(v["crop"], int(v["size"])): Path(v["path"]) for v in info["stores"].values()}


# -- lung masks ----------------------------------------------------------------------------------


def masked_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows whose ``mask_path`` names a lung mask file."""
    if MASK_COLUMN not in manifest.columns:
        return manifest.iloc[:0]
    paths = manifest[MASK_COLUMN].fillna("").astype(str)
    return manifest[paths.str.len() > 0]


def train_lung_unet(manifest: pd.DataFrame, out_dir: str | Path,
                    recipe: Any = LUNG_RECIPE, overrides: Sequence[str] = (),
                    **fit_kwargs: Any) -> Path:
    """Fit the lung U-Net (task image_segmentation) on the manifest rows with lung masks;
    returns its model.pt. The training store is out_dir/store (uncropped, with masks)."""
    recipe = apply_overrides(recipe, overrides) if isinstance(recipe, Recipe) \
        else load_recipe(recipe, overrides)
    rows = masked_rows(manifest)
    if rows.empty:
        raise InputError(None, MASK_COLUMN, "rows with a lung mask file to train the U-Net",
                         "none", "give masks for some images (masks/<stem>.png)")
    out = Path(out_dir)
    channels = int(recipe.model.kwargs.get("in_channels", 1))
    spec = PrepSpec(size=int(recipe.data.size), channels=channels, crop="uncrop", blank=False)
    prepare(rows, out / "store", spec, workers=fit_kwargs.pop("workers", None))
    result = fit(recipe, out / "store", out / "run", resume=True,
                 **{"progress": False, **fit_kwargs})
    return result.best_checkpoint


def mask_file_name(sample_id: str) -> str:
    """A file-system-safe, collision-free PNG name for a sample's predicted mask."""
    digest = hashlib.sha1(sample_id.encode()).hexdigest()[:ID_HASH_CHARS]
    return f"{SAFE_NAME.sub('_', sample_id)[:80]}-{digest}.png"


def predict_lung_masks(manifest: pd.DataFrame, checkpoint: str | Path, out_dir: str | Path,
                       only_missing: bool = False) -> tuple[pd.DataFrame, list[Problem]]:
    """Predict lung masks (PNG, 0/255) for every row (one crop source, as predict will use
    the U-Net on every image), or only for rows without one (`only_missing`); returns the
    manifest with ``mask_path``/``mask_source`` filled and the problems (unreadable images
    keep no mask; `prepare` reports them again)."""
    lung = load_checkpoint(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = manifest.copy()
    paths = result.get(MASK_COLUMN, pd.Series("", index=result.index)).fillna("").astype(str)
    result[MASK_COLUMN] = paths
    result[SOURCE_COLUMN] = np.where(paths.str.len() > 0, "file", "none")
    problems: list[Problem] = []
    for index, row in result.iterrows():
        if only_missing and row[MASK_COLUMN]:
            continue
        try:
            mask = lung_mask(lung, read_cxr(Path(str(row["path"]))))
        except Exception as exc:  # one bad image is reported, the rest go on
            problems.append(Problem.from_exception(str(row["path"]), STAGE, exc))
            continue
        target = out / mask_file_name(str(row["sample_id"]))
        cv2.imwrite(str(target), mask.astype(np.uint8) * 255)
        result.at[index, MASK_COLUMN] = str(target)
        result.at[index, SOURCE_COLUMN] = "predicted"
    return result, problems


def lung_dice(checkpoint: str | Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """sample_id, dice of the U-Net's mask against each row's mask file (full resolution),
    problem: why a row has no dice (NaN: unreadable image or mask, a mask of another shape);
    one bad row is reported there and the others go on."""
    lung = load_checkpoint(checkpoint)
    rows = []
    for row in masked_rows(manifest).to_dict("records"):
        try:
            image = read_cxr(Path(str(row["path"])))
            truth = fit_mask(read_lung_mask(row[MASK_COLUMN]), image.shape)
            found = {"dice": float(dice(lung_mask(lung, image), truth)), "problem": ""}
        except Exception as exc:  # one bad row is reported, the rest go on
            problem = Problem.from_exception(str(row[MASK_COLUMN]), STAGE, exc)
            found = {"dice": float("nan"), "problem": f"{problem.file}: {problem.error}"}
        rows.append({"sample_id": row["sample_id"], **found})
    return pd.DataFrame(rows, columns=["sample_id", "dice", "problem"])


__all__ = ["CxrStores", "LUNG_CLASSES", "crop_decisions", "lung_dice", "mask_file_name",
           "masked_rows", "predict_lung_masks", "prepare_cxr_stores", "read_store_index",
           "store_name", "stores_for_recipe", "train_lung_unet"]
