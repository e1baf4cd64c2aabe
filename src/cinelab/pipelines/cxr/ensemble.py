"""The ensemble matrix runner: train every member of a recipe's ensemble, resumably, then fit
the ensemble weights on the members' validation predictions.

Members come from the recipe's ``ensemble`` section (`cinelab.train.recipe.ensemble_members`:
architectures x sizes x crops, or an explicit list); member ``<model>-<size>-<crop>`` trains
with an ordinary `fit` on the prepared store of its (crop, size).

Layout of `out_dir`::

    members/<member>/model.pt, metrics.json, ...   each member's fit output
    members/<member>/val_predictions.csv            sample_id, truth, probability
    val_predictions.csv                              sample_id, truth, p_<member>..., probability
    members.csv                                      member, model, size, crop, weight, val_auc
    ensemble.json                                    weights (infer.ensemble) + threshold
    lung/model.pt                                    the lung U-Net used for crops (optional)

A member is *finished* by the one resume rule (`cinelab.utils.is_done`: its done.json lists
model.pt and metrics.json with their sizes, written after its fit) and is never trained
again; an interrupted member resumes from its Lightning ``last.ckpt``. Members can train
in separate processes (`processes` > 1: a spawn-based process pool, one member per task;
with several GPUs member k uses GPU k mod n), or one at a time from the command line
(``cinelab cxr train-ensemble RECIPE --member NAME``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cinelab.data.datasets import train_val_ids
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.evaluate.metrics import roc_auc, youden_threshold
from cinelab.infer.ensemble import (
    EnsembleWeights,
    fit_ensemble_weights,
    save_ensemble_weights,
)
from cinelab.pipelines.cxr.predict import load_member, predict_arrays
from cinelab.pipelines.cxr.prepare import store_name, stores_crop_source
from cinelab.train.fit import fit
from cinelab.train.recipe import Recipe, ensemble_members, load_recipe
from cinelab.utils import atomic_path, file_hash, is_done, mark_done, write_csv

MEMBERS_DIR = "members"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
VAL_PREDICTIONS = "val_predictions.csv"
MEMBERS_CSV = "members.csv"
ENSEMBLE_FILE = "ensemble.json"
LUNG_DIR = "lung"
MEMBER_PREFIX = "p_"
TARGET_DEFAULT = "label"
DEFAULT_METHOD = "bmc"

StoreKey = tuple[str, int]


@dataclass
class EnsembleRun:
    """What `train_ensemble` produced."""

    out_dir: Path
    members: list[str]
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    weights: EnsembleWeights | None = None
    val_predictions: pd.DataFrame | None = None


@dataclass(frozen=True)
class Member:
    """One ensemble member: its id, recipe and where its store and outputs live."""

    name: str
    recipe: Recipe
    store: Path
    out_dir: Path

    @property
    def key(self) -> StoreKey:
        """(crop, size) of its store."""
        return str(self.recipe.data.crop), int(_size(self.recipe))


def _size(recipe: Recipe) -> int:
    size = recipe.data.size
    return int(size[0] if isinstance(size, list) else size)


def member_dir(out_dir: str | Path, name: str) -> Path:
    """Where member `name` of an ensemble writes its fit."""
    return Path(out_dir) / MEMBERS_DIR / name


def is_finished(directory: str | Path) -> bool:
    """True when a member's fit completed (the one resume rule, `cinelab.utils.is_done`)."""
    return is_done(directory)


def resolve_stores(stores: Mapping[StoreKey, str | Path] | str | Path,
                   keys: list[StoreKey]) -> dict[StoreKey, Path]:
    """{(crop, size): store path} from a mapping or a folder of ``<crop>-<size>`` stores."""
    if isinstance(stores, Mapping):
        found = {(str(c), int(s)): Path(p) for (c, s), p in stores.items()}
    else:
        found = {k: Path(stores) / store_name(*k) for k in keys}
    missing = [k for k in keys if k not in found or not (found[k] / "store.json").is_file()]
    if missing:
        raise InputError(None, "stores", f"a prepared store for every member's (crop, size): "
                         f"{sorted(set(keys))}", f"none for {sorted(set(missing))}",
                         "run `cinelab cxr prepare` with the recipe's sizes")
    return found


def plan_members(recipe: Recipe, stores: Mapping[StoreKey, str | Path] | str | Path,
                 out_dir: str | Path, only: list[str] | None = None) -> list[Member]:
    """The recipe's members (or those named in `only`) with their stores and folders."""
    pairs = ensemble_members(recipe)
    if not pairs:
        raise InputError(None, "ensemble", "archs x sizes x crops or a members list",
                         "an empty ensemble section")
    names = [n for n, _ in pairs]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise InputError(None, "member", f"one of {names}", str(unknown))
    chosen = [(n, r) for n, r in pairs if only is None or n in only]
    keys = [(str(r.data.crop), _size(r)) for _, r in chosen]
    found = resolve_stores(stores, keys)
    return [Member(n, r, found[k], member_dir(out_dir, n))
            for (n, r), k in zip(chosen, keys, strict=True)]


# --------------------------------------------------------------------------- training


def train_member(member: Member, progress: bool = False, devices: Any = None,
                 max_epochs: int | None = None, threads: int | None = None) -> bool:
    """Fit one member unless finished; True when it trained now."""
    if is_finished(member.out_dir):
        return False
    if threads:
        torch.set_num_threads(threads)
    fit(member.recipe, member.store, member.out_dir, resume=True, devices=devices,
        max_epochs=max_epochs, progress=progress)
    mark_done(member.out_dir, (MODEL_FILE, METRICS_FILE), member=member.name)
    return True


def _worker(args: tuple[Member, Any, int | None, int]) -> tuple[str, bool]:
    """Process-pool task: (member, devices, max_epochs, threads) -> (name, trained now)."""
    member, devices, max_epochs, threads = args
    return member.name, train_member(member, False, devices, max_epochs, threads)


def _gpu_devices(k: int, processes: int, recipe: Recipe) -> Any:
    count = torch.cuda.device_count()
    if processes <= 1 or count == 0 or recipe.trainer.accelerator == "cpu":
        return None
    return [k % count]


def train_members(members: list[Member], processes: int = 1, progress: bool = False,
                  max_epochs: int | None = None,
                  worker: Callable[[tuple], tuple[str, bool]] = _worker,
                  start_method: str = "spawn") -> tuple[list[str], list[str]]:
    """(trained now, already finished): members one by one, or in a pool of `processes`
    processes running `worker` (a picklable, module-level function) per member. "spawn"
    gives each member a fresh interpreter (safe with CUDA and threads)."""
    todo = [m for m in members if not is_finished(m.out_dir)]
    skipped = [m.name for m in members if is_finished(m.out_dir)]
    if processes <= 1 or len(todo) <= 1:
        return [m.name for m in todo if train_member(m, progress, None, max_epochs)], skipped
    threads = max(1, (os.cpu_count() or 1) // processes)
    jobs = [(m, _gpu_devices(k, processes, m.recipe), max_epochs, threads)
            for k, m in enumerate(todo)]
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context(start_method)) as pool:
        done = list(pool.map(worker, jobs))
    return [name for name, trained in done if trained], skipped


# --------------------------------------------------------------------------- validation


def member_val_predictions(member: Member, seed: int | None = None,
                           batch_size: int = 32) -> pd.DataFrame:
    """sample_id, truth, probability of a finished member on its store's validation split
    (cached as val_predictions.csv beside its model)."""
    cache = member.out_dir / VAL_PREDICTIONS
    if cache.is_file() and cache.stat().st_mtime >= (member.out_dir / MODEL_FILE).stat().st_mtime:
        return pd.read_csv(cache, dtype={"sample_id": str})
    store = PreparedStore(member.store)
    seed = member.recipe.trainer.seed if seed is None else seed
    _, val_ids = train_val_ids(store, seed)
    target = _target(member.recipe)
    loaded = load_member(member.out_dir / MODEL_FILE)
    images = np.stack([np.asarray(store.frames(i)[0]) for i in val_ids])
    probs = predict_arrays(loaded, images, batch_size=batch_size)
    truth = store.manifest.set_index(store.manifest["sample_id"].astype(str)).loc[val_ids, target]
    df = pd.DataFrame({"sample_id": val_ids, "truth": pd.to_numeric(truth).to_numpy(float),
                       "probability": probs})
    write_csv(df, cache)
    return df


def _target(recipe: Recipe) -> str:
    target = recipe.data.target
    return target if isinstance(target, str) and target else TARGET_DEFAULT


def collect_val_predictions(members: list[Member]) -> pd.DataFrame:
    """One row per validation sample: truth and ``p_<member>`` (NaN where a member lacks it)."""
    table: pd.DataFrame | None = None
    for m in members:
        df = member_val_predictions(m).rename(columns={"probability": MEMBER_PREFIX + m.name})
        table = df if table is None else table.merge(df, on=["sample_id", "truth"], how="outer")
    if table is None or table.empty:
        raise InputError(None, "val_predictions", "validation samples", "none")
    return table.sort_values("sample_id").reset_index(drop=True)


def fit_weights(val: pd.DataFrame, names: list[str], method: str = DEFAULT_METHOD,
                seed: int = 0, **opts: Any) -> EnsembleWeights:
    """Ensemble weights on validation predictions, with the Youden threshold of the
    weighted ensemble and members' validation AUCs in `details`."""
    preds = val[[MEMBER_PREFIX + n for n in names]].to_numpy(float)
    y = val["truth"].to_numpy(float)
    ens = fit_ensemble_weights(preds, y, method=method, task="binary", seed=seed,
                               members=names, **opts)
    combined = ens.predict(preds)
    ens.details.update(threshold=_finite(youden_threshold(y, combined)),
                       val_auc=_finite(roc_auc(y, combined)),
                       val_auc_mean=_finite(roc_auc(y, np.nanmean(preds, axis=1))),
                       val_auc_members=[_finite(roc_auc(y, preds[:, j]))
                                        for j in range(len(names))])
    return ens


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# --------------------------------------------------------------------------- runner


def train_ensemble(recipe: Recipe | str | Path,
                   stores: Mapping[StoreKey, str | Path] | str | Path,
                   out_dir: str | Path, processes: int = 1, members: list[str] | None = None,
                   method: str = DEFAULT_METHOD, lung_model: str | Path | None = None,
                   max_epochs: int | None = None, progress: bool = False,
                   **weight_opts: Any) -> EnsembleRun:
    """Train the recipe's ensemble (or the members named) and, once every member of the
    recipe is finished, fit and save the ensemble weights (module docstring)."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    out = Path(out_dir)
    chosen = plan_members(recipe, stores, out, members)
    trained, skipped = train_members(chosen, processes, progress, max_epochs)
    run = EnsembleRun(out, [m.name for m in chosen], trained, skipped)
    if lung_model is not None:
        _copy_lung_model(lung_model, out)
    every = plan_members(recipe, stores, out) if members else chosen
    if all(is_finished(m.out_dir) for m in every):
        run.val_predictions, run.weights = finish_ensemble(
            every, out, method, recipe.trainer.seed, crop_source=stores_crop_source(stores),
            **weight_opts)
    return run


def finish_ensemble(members: list[Member], out: Path, method: str = DEFAULT_METHOD,
                    seed: int = 0, crop_source: str | None = None,
                    **weight_opts: Any) -> tuple[pd.DataFrame, EnsembleWeights]:
    """Validation predictions -> weights -> ensemble.json, members.csv, val_predictions.csv
    (`crop_source`: the stores' lung-mask source, which predict then uses)."""
    names = [m.name for m in members]
    val = collect_val_predictions(members)
    ens = fit_weights(val, names, method, seed, **weight_opts)
    val["probability"] = ens.predict(val[[MEMBER_PREFIX + n for n in names]].to_numpy(float))
    ens.details["member_info"] = {m.name: {"model": m.recipe.model.name, "size": m.key[1],
                                           "crop": m.key[0], "checkpoint":
                                           str(Path(MEMBERS_DIR) / m.name / MODEL_FILE)}
                                  for m in members}
    if (out / LUNG_DIR / MODEL_FILE).is_file():
        ens.details["lung_model"] = str(Path(LUNG_DIR) / MODEL_FILE)
    if crop_source is not None:
        ens.details["crop_source"] = crop_source
    save_ensemble_weights(out / ENSEMBLE_FILE, ens)
    write_csv(val, out / VAL_PREDICTIONS)
    table = pd.DataFrame([{"member": m.name, "model": m.recipe.model.name, "size": m.key[1],
                           "crop": m.key[0], "weight": float(w), "val_auc": auc}
                          for m, w, auc in zip(members, ens.weights,
                                               ens.details["val_auc_members"], strict=True)])
    write_csv(table, out / MEMBERS_CSV)
    return val, ens


def _copy_lung_model(path: str | Path, out: Path) -> None:
    src = Path(path)
    if not src.is_file():
        raise InputError(src, "lung_model", "a lung U-Net checkpoint (model.pt)", "no such file")
    dest = out / LUNG_DIR / MODEL_FILE
    if not dest.exists() or file_hash(dest) != file_hash(src):
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
