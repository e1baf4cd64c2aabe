"""Repeated patient-wise splits and their ensemble, as in the paper (Shad et al. 2021).

`train_ensemble` trains N models, member k on seeded split k: the test patients stay fixed
(the store's test split), the other patients are re-split into train/val per seed (patient-
wise, stratified by label: no patient in two sets; ``mode="folds"`` gives K disjoint val folds
instead). Each member trains on a view of the store (manifest with the member's split, frames
and flow shared by a link), so nothing is copied. The ensemble's threshold is Youden's J on
the pooled validation predictions of the members (each member on its own val videos).

An ensemble folder:

  ensemble.json        members, mode, seed, val_fraction, threshold, threshold_source
  members/<k>/store    the member's store view (manifest.csv, store.json, samples -> store)
  members/<k>/run      its training run (model.pt)
  members/<k>/val      its validation predictions

`predict_ensemble` (what `predict_rvf` does for an ensemble folder): every member predicts
the same videos with the same clips; the ensemble's probability (and each ``p_<stream>``) is
the mean of the members'. members.csv holds each member's per-video probability. With a
calibration (``"uncertainty"`` in ensemble.json, `cinelab calibrate`) the mean is calibrated
(``probability_raw`` kept, threshold mapped alike); ``disagreement`` is the SD of the
members' probabilities; members carrying OOD detectors give ``ood_score`` (their mean) and
``ood_flag`` (at least half of them flag).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.manifest import read_manifest, write_manifest
from cinelab.errors import InputError
from cinelab.evaluate.metrics import youden_threshold
from cinelab.infer.contract import read_predictions, read_problems, run_record, write_contract
from cinelab.infer.video_classify import DEFAULT_THRESHOLD
from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf.predict import (
    CLIPS_FILE,
    MODEL_FILE,
    PIPELINE,
    SCORE,
    STREAM_PREFIX,
    TASK,
    patient_probabilities,
    predict_rvf,
)
from cinelab.pipelines.rvf.uncertainty import annotate_rvf, member_matrix, read_rvf_state
from cinelab.train.fit import fit
from cinelab.train.recipe import Recipe
from cinelab.utils import is_done, mark_done, read_json, write_csv, write_json

ENSEMBLE_FILE = "ensemble.json"
PIPELINE_TAG = "rvf"  # written into ensemble.json: the folder is an RV-failure ensemble
MEMBERS_FILE = "members.csv"
MEMBERS_DIR = "members"
MODES = ("repeated", "folds")
DEFAULT_VAL_FRACTION = 0.2
STORE_LINKED = ("samples",)
STORE_SKIPPED = ("manifest.csv", "samples", "done.json")


def is_ensemble(path: str | Path) -> bool:
    """A folder written by `train_ensemble` (its ensemble.json names this pipeline; other
    pipelines' ensemble.json files are not claimed)."""
    file = Path(path) / ENSEMBLE_FILE
    if not file.is_file():
        return False
    try:
        info = read_json(file)
    except (InputError, OSError, ValueError):
        return False
    return isinstance(info, dict) and (info.get("pipeline") == PIPELINE_TAG
                                       or {"mode", "threshold_source"} <= info.keys())


def member_splits(manifest: pd.DataFrame, n: int, seed: int = 0, mode: str = "repeated",
                  val_fraction: float = DEFAULT_VAL_FRACTION) -> list[pd.Series]:
    """Split column (indexed like `manifest`) of each of `n` members: test rows kept, the
    other patients split train/val patient-wise and stratified by their label ("repeated":
    a seeded `val_fraction` per member; "folds": `n` disjoint val folds from one shuffle)."""
    if mode not in MODES:
        raise InputError(None, "mode", f"one of {list(MODES)}", repr(mode))
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (mode == "folds" and n < 2):
        raise InputError(None, "members", "a number of members >= 1 (>= 2 folds)", repr(n))
    split = manifest["split"].astype(str)
    pool = manifest[split != "test"]
    label = pool["label"] if "label" in pool.columns else pd.Series(0, index=pool.index)
    patients = pd.DataFrame({"patient": pool["patient_id"].astype(str),
                             "label": label}).groupby("patient")["label"].max()
    if len(patients) < 2:
        raise InputError(None, "split", "at least 2 non-test patients to re-split",
                         f"{len(patients)}")
    out = []
    for k in range(n):
        held: set[str] = set()
        for _, group in patients.groupby(patients.fillna(-1), sort=True):
            ids = np.array(sorted(group.index))
            rng = np.random.default_rng([seed, 0 if mode == "folds" else k, len(ids)])
            ids = rng.permutation(ids)
            if mode == "folds":
                held |= set(np.array_split(ids, n)[k].tolist())
            else:
                n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids)))) \
                    if len(ids) > 1 else 0
                held |= set(ids[:n_val].tolist())
        column = split.copy()
        non_test = split != "test"
        is_val = manifest["patient_id"].astype(str).isin(held)
        column[non_test] = np.where(is_val[non_test], "val", "train")
        out.append(column)
    return out


def member_store(store: Path, split: pd.Series, out: Path) -> Path:
    """A view of `store` with another split column (its samples folder linked)."""
    store, out = Path(store), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for item in store.iterdir():
        if item.name in STORE_SKIPPED:
            continue
        target = out / item.name
        if item.is_file() and not target.exists():
            shutil.copy2(item, target)
    link = out / "samples"
    if not link.exists():
        link.symlink_to((store / "samples").resolve(), target_is_directory=True)
    manifest = read_manifest(store / "manifest.csv")
    manifest["split"] = split.to_numpy()
    write_manifest(manifest, out / "manifest.csv")
    return out


def train_ensemble(recipe: Recipe, store: str | Path, out: str | Path, n: int,
                   seed: int = 0, mode: str = "repeated",
                   val_fraction: float = DEFAULT_VAL_FRACTION,
                   options: Options | None = None,
                   train: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Train `n` members on seeded patient-wise splits (resumable per member); choose the
    ensemble threshold on the pooled validation predictions; write ensemble.json."""
    store, out, options = Path(store), Path(out), options or Options()
    train = train or fit
    splits = member_splits(read_manifest(store / "manifest.csv"), n, seed, mode, val_fraction)
    members, pooled = [], []
    for k, split in enumerate(splits):
        base = out / MEMBERS_DIR / str(k)
        view = member_store(store, split, base / "store")
        run = base / "run"
        if not is_done(run):
            member_recipe = replace(recipe, trainer=replace(recipe.trainer,
                                                            seed=recipe.trainer.seed + k))
            train(member_recipe, view, run, resume=True, progress=False,
                  accelerator=options.get("accelerator"))
            mark_done(run, [MODEL_FILE])
        if (split == "val").any():
            if not is_done(base / "val"):
                predict_rvf(run / MODEL_FILE, view, base / "val",
                            replace(options, split="val", extra={**options.extra,
                                                                 "threshold": 0.5}))
                mark_done(base / "val", ["predictions.csv"])
            pooled.append(read_predictions(base / "val"))
        members.append(str(Path(MEMBERS_DIR) / str(k) / "run" / MODEL_FILE))
    threshold, source = _pooled_threshold(pooled, read_manifest(store / "manifest.csv"))
    info = {"pipeline": PIPELINE_TAG, "members": members, "mode": mode, "seed": seed,
            "val_fraction": val_fraction,
            "store": str(store), "threshold": threshold, "threshold_source": source,
            "recipe": recipe.name}
    previous = read_json(out / ENSEMBLE_FILE) if (out / ENSEMBLE_FILE).is_file() else {}
    if previous.get("members") == members and "uncertainty" in previous:
        info["uncertainty"] = previous["uncertainty"]  # a resumed run keeps its calibration
    write_json(out / ENSEMBLE_FILE, info)
    return info


def _pooled_threshold(pooled: list[pd.DataFrame], manifest: pd.DataFrame
                      ) -> tuple[float, str]:
    fallback = DEFAULT_THRESHOLD, "default (validation lacks a class)"
    if not pooled or "label" not in manifest.columns:
        return fallback
    labels = manifest.set_index(manifest["sample_id"].astype(str))["label"]
    table = pd.concat(pooled, ignore_index=True)
    y = labels.reindex(table["sample_id"].astype(str)).to_numpy()
    keep = ~pd.isna(y)
    if len(set(y[keep].tolist())) < 2:
        return fallback
    return float(youden_threshold(y[keep].astype(int), table[SCORE].to_numpy()[keep])), \
        "Youden's J on the members' pooled validation videos"


def read_ensemble(path: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """(ensemble.json, member checkpoint paths) of an ensemble folder."""
    path = Path(path)
    if not is_ensemble(path):
        found = "another kind of ensemble.json" if (path / ENSEMBLE_FILE).is_file() \
            else "no ensemble.json"
        raise InputError(path, ENSEMBLE_FILE, "an ensemble folder (`cinelab rvf ensemble`)",
                         found)
    info = read_json(path / ENSEMBLE_FILE)
    models = [path / m for m in info.get("members", [])]
    missing = [str(m) for m in models if not m.is_file()]
    if not models or missing:
        raise InputError(path / ENSEMBLE_FILE, "members", "every member's model.pt",
                         f"missing {missing[:3]}" if missing else "no member")
    return info, models


def average_members(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Per video: the mean over members of the probability and each ``p_<stream>``."""
    scores = [c for c in tables[0].columns if c == SCORE or c.startswith(STREAM_PREFIX)]
    keys = ["sample_id", "patient_id", "split"]
    long = pd.concat(tables, ignore_index=True)
    out = long.groupby(keys, sort=False)[scores].mean().reset_index()
    out["n_clips"] = long.groupby(keys, sort=False)["n_clips"].sum().to_numpy()
    out["n_members"] = len(tables)
    return out


def predict_ensemble(folder: Path, input_path: Path, out: Path, options: Options) -> Path:
    """Each member predicts `input_path` (same clips); the contract with their mean."""
    started, folder, out = time.time(), Path(folder), Path(out)
    info, models = read_ensemble(folder)
    tables, clip_tables, source_input = [], [], Path(input_path)
    for k, model in enumerate(models):
        member_out = out / MEMBERS_DIR / str(k)
        predict_rvf(model, source_input, member_out,
                    replace(options, extra={**options.extra, "threshold": 0.5}))
        source_input = Path(read_json(member_out / "run.json")["store"])  # prepared once
        table = read_predictions(member_out)
        tables.append(table.drop(columns=["prediction", "threshold"]))
        clip_tables.append(pd.read_csv(member_out / CLIPS_FILE, dtype={"sample_id": str})
                           .assign(member=k))
    videos = average_members(tables)
    ood = member_ood(tables, videos["sample_id"])
    given = options.get("threshold")
    threshold, source = (float(given), "given") if given is not None else \
        (float(info.get("threshold", DEFAULT_THRESHOLD)),
         str(info.get("threshold_source", "default")))
    videos.insert(4, "prediction", (videos[SCORE] >= threshold).astype(int))
    videos.insert(5, "threshold", threshold)
    videos = annotate_rvf(videos, read_rvf_state(folder),
                          member_probs=member_matrix(tables, videos["sample_id"]))
    videos = videos.assign(**ood) if ood else videos
    out.mkdir(parents=True, exist_ok=True)
    write_csv(pd.concat([t.assign(member=k) for k, t in enumerate(tables)],
                        ignore_index=True), out / MEMBERS_FILE)
    write_csv(patient_probabilities(videos.drop(columns=["n_members"])),
              out / "patients.csv")
    write_csv(pd.concat(clip_tables, ignore_index=True), out / CLIPS_FILE)
    member_run = read_json(out / MEMBERS_DIR / "0" / "run.json")
    problems = read_problems(out / MEMBERS_DIR / "0")
    run = run_record(PIPELINE, TASK, folder, input_path, started, ensemble=str(folder),
                     members=[str(m) for m in models], split=options.split,
                     clips=member_run.get("clips"), seed=options.seed, threshold=threshold,
                     threshold_source=source, store=member_run.get("store"),
                     input_spec=member_run.get("input_spec"),
                     class_names=member_run.get("class_names"),
                     engine=member_run.get("engine", {"name": "eager"}))
    return write_contract(out, videos, problems, run)


def _member_column(table: pd.DataFrame, name: str, ids: pd.Series) -> np.ndarray:
    """One member's column in the order of `ids` (flags as 1.0 / 0.0)."""
    values = table.set_index(table["sample_id"].astype(str))[name].reindex(ids)
    if name == "ood_flag":
        values = values.astype(str).str.lower().map({"true": 1.0, "false": 0.0})
    return values.to_numpy(float)


def member_ood(tables: list[pd.DataFrame], order: pd.Series) -> dict[str, np.ndarray]:
    """``ood_score`` (the members' mean) and ``ood_flag`` (flagged by at least half the
    members) when every member has an OOD detector (its own ``ood_score``/``ood_flag``)."""
    if not tables or not all("ood_flag" in t.columns for t in tables):
        return {}
    ids = order.astype(str)
    scores = np.stack([_member_column(t, "ood_score", ids) for t in tables])
    flags = np.stack([_member_column(t, "ood_flag", ids) for t in tables])
    return {"ood_score": scores.mean(axis=0), "ood_flag": flags.mean(axis=0) >= 0.5}


def predict_any(model: Path, input_path: Path, out: Path, options: Options) -> Path:
    """The pipeline's predict: an ensemble folder (`predict_ensemble`) or one model."""
    if is_ensemble(model):
        return predict_ensemble(model, input_path, out, options)
    return predict_rvf(model, input_path, out, options)
