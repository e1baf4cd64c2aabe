"""`cinelab cv`: nested cross-validation of any recipe on a prepared store, resumably.

Subjects (the manifest's patient_id) get K outer folds and, within each outer training set,
J inner folds, stratified on bins of the recipe's target (`cinelab.data.splits`). For every
arm (one per value of the manifest column `by`, e.g. one per view; a single arm "all"
otherwise), outer fold k and inner fold j, one model is trained on the inner-training
subjects, its best epoch chosen on the inner-validation subjects (fit's best checkpoint), and
it predicts every sample of the arm's training, validation and test subjects, without and
with test-time augmentation.

Layout of `out`::

    cv.json, recipe.yaml, folds.csv        settings, the recipe that ran, the nested folds
    <arm>/outer_<k>/inner_<j>/store/       a view of the store: manifest with this unit's
                                           train/val/test split, mean/std of its training
                                           samples, samples/ linked to the original store
    <arm>/outer_<k>/inner_<j>/run/         the fit (checkpoints, logs, model.pt, metrics.json)
    <arm>/outer_<k>/inner_<j>/predictions.csv
                                           sample_id, subject, arm, outer, inner, role
                                           (train/val/test), target, pred, pred_aug
    <arm>/outer_<k>/inner_<j>/done.json    written last: the unit's files and sizes

Resuming: a unit is finished when done.json exists and the files it lists have the sizes it
records; finished units are never rerun. An interrupted unit resumes its fit from
run/checkpoints/last.ckpt (or skips training when run/model.pt and metrics.json exist).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.manifest import write_manifest
from cinelab.data.splits import NestedFolds, nested_folds, subject_table
from cinelab.data.store import PreparedStore, combine_stats
from cinelab.errors import InputError
from cinelab.plugins import Registry
from cinelab.train.fit import METRICS_FILE, MODEL_FILE, fit
from cinelab.train.recipe import Recipe, load_recipe, recipe_to_dict, recipe_to_yaml
from cinelab.utils import DONE_FILE, atomic_path, is_done, read_json, write_csv, write_json

CV_FILE, FOLDS_FILE, RECIPE_FILE = "cv.json", "folds.csv", "recipe.yaml"
PREDICTIONS_FILE = "predictions.csv"
STORE_DIR, RUN_DIR = "store", "run"
ALL_ARM = "all"
LINKED = ("samples", "tracings.csv")  # what a unit's store view links to in the original
SETTING_KEYS = ("outer", "inner", "seed", "bins", "by", "target", "group", "tta", "recipe")
PREDICTION_COLUMNS = ("sample_id", "subject", "arm", "outer", "inner", "role", "target",
                      "pred", "pred_aug")
DEFAULT_TTA = 5

NO_TARGET = "_no_target"  # the constant column folds are "stratified" on without a target

Predictor = Callable[..., pd.DataFrame]
PREDICTORS: Registry[Predictor] = Registry("cross-validation predictor")
UNSTRATIFIED: set[str] = set()  # tasks whose recipes need no data.target (segmentation)


def register_cv_predictor(*tasks: str, needs_target: bool = True
                          ) -> Callable[[Predictor], Predictor]:
    """Register fn(checkpoint, store, ids, tta, device) -> DataFrame(sample_id, pred,
    pred_aug) as the cross-validation predictor of `tasks`. With `needs_target` False a
    recipe without data.target is cross-validated on unstratified folds (target empty;
    pred/pred_aug are then the predictor's per-sample score, e.g. Dice)."""
    if not needs_target:
        UNSTRATIFIED.update(tasks)
    return PREDICTORS.register(*tasks)


@dataclass
class CvResult:
    """What a cross-validation run did."""

    out: Path
    arms: list[str]
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Unit:
    """One model of the nested cross-validation."""

    arm: str
    outer: int
    inner: int

    @property
    def name(self) -> str:
        """``<arm>/outer_<k>/inner_<j>``."""
        return f"{self.arm}/outer_{self.outer}/inner_{self.inner}"


def _settings(recipe: Recipe, store: PreparedStore, outer: int, inner: int, seed: int,
              bins: int, by: str | None, group: str, tta: int) -> dict[str, Any]:
    target = recipe.data.target
    if recipe.task in UNSTRATIFIED and not isinstance(target, str):
        target = None  # e.g. segmentation: no target column, folds unstratified
    elif not isinstance(target, str):
        raise InputError(None, "data.target", "one target column to stratify and score on",
                         repr(target))
    if recipe.task not in PREDICTORS:
        raise InputError(None, "task", f"a task with a cross-validation predictor "
                         f"({PREDICTORS.names()})", repr(recipe.task),
                         "register one with register_cv_predictor")
    return {"outer": int(outer), "inner": int(inner), "seed": int(seed), "bins": int(bins),
            "by": by, "target": target, "group": group, "tta": int(tta),
            "recipe": recipe_to_dict(recipe), "store": str(store.root.resolve())}


def _arms(store: PreparedStore, by: str | None) -> list[str]:
    if by is None:
        return [ALL_ARM]
    if by not in store.manifest.columns:
        raise InputError(store.root / "manifest.csv", by, "a column to split models by",
                         f"columns {list(store.manifest.columns)}")
    values = sorted(v for v in store.manifest[by].astype(str).unique() if v)
    if not values:
        raise InputError(store.root / "manifest.csv", by, "non-empty values", "none")
    return values


def _arm_manifest(store: PreparedStore, by: str | None, arm: str) -> pd.DataFrame:
    m = store.manifest
    return m if by is None else m[m[by].astype(str) == arm]


def prepare_cv(out: Path, settings: dict[str, Any], store: PreparedStore,
               recipe: Recipe) -> NestedFolds:
    """Write (or check, when resuming) cv.json, recipe.yaml and folds.csv; the folds."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / CV_FILE).exists():
        old = read_json(out / CV_FILE)
        changed = [k for k in SETTING_KEYS if old.get(k) != settings.get(k)]
        if changed:
            raise InputError(out / CV_FILE, changed[0], repr(old.get(changed[0])),
                             repr(settings.get(changed[0])),
                             "resume with the same settings or choose a new output folder")
        return NestedFolds.read(out / FOLDS_FILE)
    target = settings["target"] or NO_TARGET
    manifest = store.manifest if settings["target"] else store.manifest.assign(
        **{NO_TARGET: 0.0})
    table = subject_table(manifest, target, settings["group"])
    folds = nested_folds(table["subject"], table[target].to_numpy(),
                         settings["outer"], settings["inner"], settings["bins"],
                         settings["seed"])
    folds.write(out / FOLDS_FILE)
    with atomic_path(out / RECIPE_FILE) as tmp:
        tmp.write_text(recipe_to_yaml(recipe))
    write_json(out / CV_FILE, settings)  # last: its presence means the folds are fixed
    return folds


def unit_roles(folds: NestedFolds, unit: Unit) -> dict[str, list[str]]:
    """Subjects of each role (train/val/test) of a unit."""
    return {role: folds.subjects(unit.outer, role, unit.inner)
            for role in ("train", "val", "test")}


def write_store_view(store: PreparedStore, path: Path, manifest: pd.DataFrame,
                     roles: dict[str, list[str]], group: str) -> PreparedStore:
    """A store folder whose manifest has the unit's splits (other samples left out), whose
    mean/std come from its training samples, and whose arrays link to the original store."""
    path.mkdir(parents=True, exist_ok=True)
    split = {s: role for role, subjects in roles.items() for s in subjects}
    view = manifest.assign(split=manifest[group].astype(str).map(split)).dropna(
        subset=["split"])
    for name in LINKED:
        source, link = store.root.resolve() / name, path / name
        if source.exists() and not link.exists():
            os.symlink(source, link, target_is_directory=source.is_dir())
    write_manifest(view, path / "manifest.csv")
    train = view.loc[view["split"] == "train", "sample_id"].astype(str)
    stats = [store.meta(sid).get("stats") for sid in train]
    info = dict(store.info, status="complete", cv_view=str(path))
    if stats and all(stats):
        info["mean"], info["std"] = combine_stats(stats)
        info["stats_from"] = "train"
    write_json(path / "store.json", info)
    return PreparedStore(path)


def is_finished(unit_dir: Path) -> bool:
    """A unit is finished by the one resume rule (`cinelab.utils.is_done`)."""
    return is_done(unit_dir)


def _fit_unit(recipe: Recipe, view: PreparedStore, run: Path,
              fit_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) the unit's model; its metrics."""
    if not ((run / MODEL_FILE).exists() and (run / METRICS_FILE).exists()):
        fit(recipe, view, run, resume=True, **fit_kwargs)
    return read_json(run / METRICS_FILE)


def _predict_unit(settings: dict[str, Any], unit: Unit, view: PreparedStore, run: Path,
                  device: str) -> pd.DataFrame:
    """Predictions for every sample of the unit's store view, with role and target."""
    m = view.manifest
    ids = m["sample_id"].astype(str).tolist()
    task = settings["recipe"]["task"]
    preds = PREDICTORS.get(task)(run / MODEL_FILE, view, ids, settings["tta"], device)
    preds = preds.set_index("sample_id").reindex(ids)
    return pd.DataFrame({
        "sample_id": ids, "subject": m[settings["group"]].astype(str).to_numpy(),
        "arm": unit.arm, "outer": unit.outer, "inner": unit.inner,
        "role": m["split"].to_numpy(),
        "target": pd.to_numeric(m[settings["target"]], errors="coerce").to_numpy()
        if settings["target"] else np.full(len(m), np.nan),
        "pred": preds["pred"].to_numpy(), "pred_aug": preds["pred_aug"].to_numpy()})


def run_unit(recipe: Recipe, store: PreparedStore, out: Path, settings: dict[str, Any],
             folds: NestedFolds, unit: Unit, fit_kwargs: dict[str, Any],
             device: str = "cpu") -> dict[str, Any]:
    """Train, predict and mark one unit finished; its done.json contents."""
    unit_dir = out / unit.name
    started = time.time()
    manifest = _arm_manifest(store, settings["by"], unit.arm)
    view = write_store_view(store, unit_dir / STORE_DIR, manifest, unit_roles(folds, unit),
                            settings["group"])
    metrics = _fit_unit(recipe, view, unit_dir / RUN_DIR, fit_kwargs)
    write_csv(_predict_unit(settings, unit, view, unit_dir / RUN_DIR, device),
              unit_dir / PREDICTIONS_FILE)
    files = [PREDICTIONS_FILE, f"{RUN_DIR}/{MODEL_FILE}", f"{RUN_DIR}/{METRICS_FILE}"]
    done = {"unit": unit.name, "seconds": round(time.time() - started, 1),
            "best_score": metrics.get("best_score"), "best_epoch": metrics.get("best_epoch"),
            "monitor": metrics.get("monitor"),
            "files": {f: (unit_dir / f).stat().st_size for f in files}}
    write_json(unit_dir / DONE_FILE, done)
    return done


def run_cv(recipe: Recipe | str | Path, store: PreparedStore | str | Path, out: str | Path,
           outer: int = 5, inner: int = 2, seed: int = 0, bins: int = 5,
           by: str | None = None, group: str = "patient_id", tta: int = DEFAULT_TTA,
           device: str = "cpu", on_event: Callable[[str], None] | None = None,
           **fit_kwargs: Any) -> CvResult:
    """Nested cross-validation of `recipe` on `store` into `out` (see the module docstring).

    `fit_kwargs` go to `cinelab.train.fit.fit` (accelerator, devices, precision, max_epochs,
    num_workers, progress); `device` is where predictions run; `on_event` gets one line per
    unit (trained or skipped).
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    out = Path(out)
    settings = _settings(recipe, store, outer, inner, seed, bins, by, group, tta)
    folds = prepare_cv(out, settings, store, recipe)
    result = CvResult(out, _arms(store, by))
    fit_kwargs.setdefault("progress", False)
    for arm in result.arms:
        for k in range(folds.outer):
            for j in range(folds.inner):
                unit = Unit(arm, k, j)
                if is_finished(out / unit.name):
                    result.skipped.append(unit.name)
                    _say(on_event, f"{unit.name}: finished before, skipped")
                    continue
                done = run_unit(recipe, store, out, settings, folds, unit, fit_kwargs, device)
                result.trained.append(unit.name)
                _say(on_event, f"{unit.name}: {done['monitor']} {done['best_score']} "
                               f"(epoch {done['best_epoch']}, {done['seconds']} s)")
    return result


def _say(on_event: Callable[[str], None] | None, text: str) -> None:
    if on_event is not None:
        on_event(text)


def read_cv_predictions(out: str | Path) -> pd.DataFrame:
    """Every finished unit's predictions, concatenated (PREDICTION_COLUMNS)."""
    out = Path(out)
    if not (out / CV_FILE).exists():
        raise InputError(out, CV_FILE, "a cross-validation folder (cinelab cv)",
                         "no cv.json")
    parts = [pd.read_csv(p.parent / PREDICTIONS_FILE, dtype={"sample_id": str, "subject": str,
                                                             "arm": str})
             for p in sorted(out.glob(f"*/outer_*/inner_*/{DONE_FILE}"))
             if is_finished(p.parent)]
    if not parts:
        raise InputError(out, "predictions", "finished cross-validation units",
                         "none", "run `cinelab cv` first (it resumes)")
    table = pd.concat(parts, ignore_index=True)
    table["pred_aug"] = pd.to_numeric(table["pred_aug"], errors="coerce").astype(np.float64)
    return table


def cv_settings(out: str | Path) -> dict[str, Any]:
    """The settings a cross-validation folder was run with."""
    path = Path(out) / CV_FILE
    if not path.exists():
        raise InputError(out, CV_FILE, "a cross-validation folder (cinelab cv)", "no cv.json")
    return read_json(path)


__all__ = ["run_cv", "CvResult", "Unit", "register_cv_predictor", "read_cv_predictions",
           "cv_settings", "is_finished", "write_store_view"]
