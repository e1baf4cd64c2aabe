"""Age predictions in the one prediction contract, from a cv ensemble or a single checkpoint.

The model is either a `cinelab cv` folder (or its ``ensemble/`` folder) or one cinelab
checkpoint of the ``cine_regression`` task. The input is a prepared store, an ingest folder
(manifest.csv of long-axis series lists) or a raw long-axis cohort (DICOM series, optionally
with ``ages.csv``): ingest and prepare then run into ``<out>/ingest`` and ``<out>/store`` at
the model's input size.

A cv ensemble predicts like its out-of-fold evaluation (`cinelab.pipelines.age.evaluate`):
for each outer fold k and view, the J inner models' clip-averaged predictions are averaged,
averaged over the subject's samples of that view, mapped through fold k's calibration line
and combined over the views with fold k's view weights (both from ``ensemble/metrics.json``;
identity lines and equal weights when the ensemble was not run); the K fold predictions are
then averaged. A single checkpoint predicts each sample, averaged per subject and view.

Written (`cinelab.infer.contract`): predictions.csv (sample_id = the subject, patient_id,
``age``, ``age_<view>`` per view), problems.csv (ingest and prepare problems) and run.json
(pipeline "age", task, model, views, and ``labels``: a labels.csv of the input's ages when the
input has any, for `cinelab evaluate`). With an interval state (`uncertainty`: the cv's
ensemble/uncertainty.json, or a checkpoint's ``extra``) also ``age_lo`` / ``age_hi`` at the
``coverage`` option (default the fitted 90 %). When the models carry OOD detectors
(`cinelab.pipelines.age.ood`: ood.json beside each model.pt, fitted by `run`) also
``ood_score`` (mean over the models of score / threshold) and ``ood_flag`` (score > 1);
run.json's ``ood`` records the detector (feature layer, threshold quantile, models) and
``features_from``: with a non-eager ``engine`` each model is run with the features its
detector scores as a second output (`infer.engine_outputs`), so one run per clip gives both
the prediction and the OOD features; else (or for a model whose engine lacks them, e.g. an
older ``model.onnx`` beside it) an eager copy of the model computes the features.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError, Problem
from cinelab.formats.ingest import load_ingested
from cinelab.infer.contract import run_record, write_contract
from cinelab.infer.engine_outputs import FeatureSpec
from cinelab.infer.engines import AUTO, EngineCache
from cinelab.infer.ensemble import weighted_average
from cinelab.infer.video_regress import predict_store
from cinelab.pipelines.age.evaluate import ENSEMBLE_DIR
from cinelab.pipelines.age.layout import AGES_FILE, DEFAULT_VIEWS, dicom_root, ingest_lax
from cinelab.pipelines.age.ood import (
    add_ood_columns,
    cine_outputs,
    ensemble_ood_scores,
    read_unit_ood,
)
from cinelab.pipelines.age.uncertainty import annotate_age, read_age_state
from cinelab.pipelines.registry import Options
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.train.checkpoint import load_checkpoint, read_checkpoint
from cinelab.train.cv import ALL_ARM, CV_FILE, RUN_DIR, cv_settings, is_finished
from cinelab.train.fit import MODEL_FILE
from cinelab.utils import read_json, write_csv

PIPELINE = "age"
TASK = "cine_regression"
TARGET = "age"
LABELS_FILE = "labels.csv"
VIEW_COLUMN = "view"


def cv_folder(model: str | Path) -> Path | None:
    """The cv folder of `model` (a cv folder or its ensemble folder), else None."""
    model = Path(model)
    for folder in (model, model.parent):
        if model.is_dir() and (folder / CV_FILE).is_file():
            return folder
    return None


def owns_model(model: Path) -> bool:
    """Whether `model` is an age cv folder or ensemble folder (checkpoints go by task)."""
    folder = cv_folder(model)
    if folder is None:
        return False
    try:
        return cv_settings(folder).get("recipe", {}).get("task") == TASK
    except (InputError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------- the input


def _spec_of(model: Path) -> dict[str, Any]:
    """The input spec (size, channels) of a checkpoint or of a cv folder's first model."""
    folder = cv_folder(model)
    if folder is None:
        return dict(read_checkpoint(model)["input_spec"])
    units = cv_units(folder)
    if not units:
        raise InputError(folder, "models", "finished cross-validation units", "none",
                         "run `cinelab cv` first (it resumes)")
    return dict(read_checkpoint(units[0][3])["input_spec"])


def input_store(source: Path, out: Path, size: int, channels: int,
                options: Options) -> tuple[PreparedStore, list[Problem], Path | None]:
    """(store, problems, ages CSV or None) for a store, an ingest folder or a raw cohort."""
    source = Path(source)
    if (source / "store.json").is_file():
        return PreparedStore(source), [], None
    if not source.is_dir():
        raise InputError(source, "input", "a prepared store, an ingest folder or a folder of "
                         "long-axis cine DICOM series", "no such folder")
    if (source / "manifest.csv").is_file():
        ingested, ages = load_ingested(source), None
    else:
        ages = options.labels or (source / AGES_FILE if (source / AGES_FILE).is_file()
                                  else None)
        ingested = ingest_lax(dicom_root(source), ages, out / "ingest",
                              views=option_views(options), target=TARGET)
    if ingested.manifest.empty:
        raise InputError(source, "series", "long-axis cine series (3ch/4ch)", "none",
                         "check the SeriesDescriptions or give a mapping")
    spec = PrepSpec(size=size, channels=channels, crop=str(options.get("crop", "auto")))
    summary = prepare(ingested.manifest, out / "store", spec,
                      workers=options.get("workers", 1))
    return PreparedStore(out / "store"), [*ingested.problems, *summary.problems], ages


def option_views(options: Options) -> list[str]:
    """The views to read (option "views": "3ch,4ch" or a list)."""
    views = options.get("views", ",".join(DEFAULT_VIEWS))
    return [v.strip() for v in views.split(",") if v.strip()] if isinstance(views, str) \
        else [str(v) for v in views]


def _samples(store: PreparedStore, split: str | None) -> pd.DataFrame:
    """sample_id, subject, view (ALL_ARM without a view column) of the samples to predict."""
    m = store.manifest
    if split:
        m = m[m["split"].astype(str) == split]
        if m.empty:
            raise InputError(store.root / "manifest.csv", "split", f"samples of split {split!r}",
                             "none")
    views = m[VIEW_COLUMN].astype(str) if VIEW_COLUMN in m.columns else ALL_ARM
    return pd.DataFrame({"sample_id": m["sample_id"].astype(str).to_numpy(),
                         "subject": m["patient_id"].astype(str).to_numpy(),
                         "view": views}).reset_index(drop=True)


def _labels(store: PreparedStore, samples: pd.DataFrame) -> pd.DataFrame | None:
    """subject, age of the predicted subjects when the store's manifest has ages."""
    m = store.manifest
    if TARGET not in m.columns:
        return None
    ages = pd.to_numeric(m[TARGET], errors="coerce")
    table = pd.DataFrame({"subject": m["patient_id"].astype(str), TARGET: ages})
    table = table[table["subject"].isin(samples["subject"])].dropna()
    return table.groupby("subject", sort=True)[TARGET].first().reset_index() \
        if len(table) else None


# ----------------------------------------------------------------------------- the models


def cv_units(folder: Path) -> list[tuple[str, int, int, Path]]:
    """(arm, outer, inner, model.pt) of every finished unit of a cv folder."""
    out = []
    for done in sorted(folder.glob("*/outer_*/inner_*/done.json")):
        unit = done.parent
        if is_finished(unit):
            out.append((unit.parent.parent.name, int(unit.parent.name.split("_")[1]),
                        int(unit.name.split("_")[1]), unit / RUN_DIR / MODEL_FILE))
    return out


def _ensemble_settings(folder: Path) -> dict[str, Any]:
    """Calibration lines, view weights and variant of the cv's ensemble ({} if not run)."""
    path = folder / ENSEMBLE_DIR / "metrics.json"
    return read_json(path) if path.is_file() else {}


def _subject_means(samples: pd.DataFrame, values: np.ndarray) -> pd.Series:
    return pd.Series(values, index=samples["subject"].to_numpy()).groupby(level=0).mean()


class EngineFeatures:
    """OOD features an engine output while predicting, per (model.pt, sample id); called
    as `ood.FeatureSource` by the OOD scores."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str], np.ndarray] = {}

    def add(self, model: Path, ids: list[str], features: np.ndarray) -> None:
        """Keep each sample's (D,) features."""
        self.found.update({(str(model), i): f for i, f in zip(ids, features, strict=True)})

    def __call__(self, model: Path, ids: list[str]) -> np.ndarray | None:
        """(len(ids), D) features of `model`, or None unless every sample has them."""
        keys = [(str(model), i) for i in ids]
        if not keys or any(k not in self.found for k in keys):
            return None
        return np.stack([self.found[k] for k in keys])


def _ood_spec(model: Path, engines: EngineCache | None,
              features: EngineFeatures | None) -> FeatureSpec | None:
    """Where `model`'s OOD detector takes its features, when they are to be collected
    from a non-eager engine; else None."""
    if engines is None or features is None or engines.engine == "eager":
        return None
    detector = read_unit_ood(model)
    return None if detector is None else FeatureSpec.of_detector(detector)


def _predict_ids(model: Path, store: PreparedStore, ids: list[str], tta: int,
                 options: Options, engines: EngineCache | None = None,
                 features: EngineFeatures | None = None) -> np.ndarray:
    """Each sample's prediction by `model` (behind the cached engine when given); with
    `features`, the OOD features of an engine that outputs them are kept there."""
    spec = _ood_spec(model, engines, features)
    loaded = model if engines is None else engines.load(model, AUTO if spec is None else spec)
    if spec is not None and features is not None and loaded.model.has_features(spec):
        values, found = cine_outputs(loaded, store, ids, tta, options.batch_size,
                                     options.device)
        features.add(model, ids, found)
        return values.mean(axis=1) if tta > 1 else values[:, 0]
    preds = predict_store(loaded, store, ids, tta=tta, batch_size=options.batch_size,
                          device=options.device)
    return preds["pred_aug" if tta > 1 else "pred"].to_numpy(dtype=float)


def predict_cv(folder: Path, store: PreparedStore, samples: pd.DataFrame,
               options: Options, engines: EngineCache | None = None,
               features: EngineFeatures | None = None
               ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-subject ensemble and per-view predictions of a cv folder (module docstring)."""
    settings, ensemble = cv_settings(folder), _ensemble_settings(folder)
    tta = int(settings.get("tta", 1)) if ensemble.get("variant") == "tta" else 1
    by = settings.get("by")
    units = cv_units(folder)
    arms = sorted({u[0] for u in units})
    per_fold: dict[int, dict[str, pd.Series]] = {}
    for arm in arms:
        chosen = samples if by is None else samples[samples["view"] == arm]
        if chosen.empty:
            continue
        ids = chosen["sample_id"].tolist()
        for k in sorted({u[1] for u in units if u[0] == arm}):
            models = [u[3] for u in units if u[0] == arm and u[1] == k]
            mean = np.mean([_predict_ids(m, store, ids, tta, options, engines, features)
                            for m in models], axis=0)
            slope, intercept = _line(ensemble, k, arm)
            per_fold.setdefault(k, {})[arm] = slope * _subject_means(chosen, mean) + intercept
    subjects = sorted(samples["subject"].unique())
    folds, views = [], {a: [] for a in arms}
    for k, by_arm in per_fold.items():
        matrix = pd.DataFrame(by_arm).reindex(index=subjects, columns=arms)
        folds.append(weighted_average(matrix.to_numpy(), _weights(ensemble, k, arms)))
        for arm in arms:
            views[arm].append(matrix[arm].to_numpy())
    table = pd.DataFrame({"sample_id": subjects, "patient_id": subjects,
                          TARGET: _nanmean(folds)})
    for arm in arms if by is not None else []:
        table[f"{TARGET}_{arm}"] = _nanmean(views[arm])
    return table, {"model_kind": "cv ensemble", "cv": str(folder), "views": arms,
                   "outer_folds": sorted(per_fold), "tta": tta,
                   "calibrated": bool(ensemble.get("calibrate", False)),
                   "recipe": settings.get("recipe", {}).get("name")}


def _nanmean(rows: list[np.ndarray]) -> np.ndarray:
    """Column means over the finite values (NaN where a column has none)."""
    return pd.DataFrame(np.vstack(rows)).mean(axis=0, skipna=True).to_numpy()


def _line(ensemble: dict[str, Any], k: int, arm: str) -> tuple[float, float]:
    line = ensemble.get("calibration", {}).get(str(k), {}).get(arm)
    return (1.0, 0.0) if not line else (float(line["slope"]), float(line["intercept"]))


def _weights(ensemble: dict[str, Any], k: int, arms: list[str]) -> np.ndarray:
    found = ensemble.get("weights", {}).get(str(k), {})
    return np.array([float(found.get(a, 1.0)) for a in arms]) if found else np.ones(len(arms))


def model_samples(model: Path, store: PreparedStore, samples: pd.DataFrame
                  ) -> list[tuple[Path, pd.DataFrame]]:
    """(model.pt, the samples it predicts) of every model of a cv folder (its view's
    samples), or of one checkpoint (every sample)."""
    folder = cv_folder(model)
    if folder is None:
        return [(model, samples)]
    by = cv_settings(folder).get("by")
    return [(path, samples if by is None else samples[samples["view"] == arm])
            for arm, _, _, path in cv_units(folder)]


def add_ood(table: pd.DataFrame, model: Path, store: PreparedStore, samples: pd.DataFrame,
            options: Options, features: EngineFeatures | None = None
            ) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """`table` with ``ood_score`` / ``ood_flag`` and run.json's ``ood`` record when the
    models carry detectors (their features from `features` where it has them); else
    unchanged and None."""
    found = ensemble_ood_scores(model_samples(model, store, samples), store,
                                options.batch_size, options.device, features)
    if found is None:
        return table, None
    return add_ood_columns(table, found[0]), found[1]


def predict_checkpoint(checkpoint: Path, store: PreparedStore, samples: pd.DataFrame,
                       options: Options, engines: EngineCache | None = None,
                       features: EngineFeatures | None = None
                       ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-subject predictions of one checkpoint (mean of the subject's samples)."""
    tta = int(options.get("tta", 1))
    values = _predict_ids(checkpoint, store, samples["sample_id"].tolist(), tta, options,
                          engines, features)
    subjects = sorted(samples["subject"].unique())
    table = pd.DataFrame({"sample_id": subjects, "patient_id": subjects,
                          TARGET: _subject_means(samples, values).reindex(subjects).to_numpy()})
    views = sorted(samples["view"].unique())
    if views != [ALL_ARM]:
        for view in views:
            part = samples["view"] == view
            table[f"{TARGET}_{view}"] = _subject_means(samples[part], values[part.to_numpy()]
                                                       ).reindex(subjects).to_numpy()
    recipe = load_checkpoint(checkpoint).recipe
    return table, {"model_kind": "checkpoint", "views": views, "tta": tta,
                   "recipe": recipe.get("name")}


def predict_age(model: Path, source: Path, out: Path, options: Options) -> Path:
    """The pipeline's predict: the contract in `out` (see the module docstring)."""
    started, model, out = time.time(), Path(model), Path(out)
    if not model.exists():
        raise InputError(model, "model", "an age cv folder or a cine_regression checkpoint",
                         "no such path")
    spec = _spec_of(model)
    store, problems, ages = input_store(Path(source), out, int(spec["size"]),
                                        int(spec.get("channels") or 1), options)
    samples = _samples(store, options.split)
    folder = cv_folder(model)
    engines = EngineCache(str(options.get("engine", "eager")), options.device)
    features = EngineFeatures()
    if folder is not None:
        table, info = predict_cv(folder, store, samples, options, engines, features)
    else:
        table, info = predict_checkpoint(model, store, samples, options, engines, features)
    info["engine"] = engines.record()
    state = read_age_state(None if folder is None else folder / ENSEMBLE_DIR,
                           None if folder is not None else read_checkpoint(model).get("extra"))
    table = annotate_age(table, state, options.get("coverage"))
    table, info["ood"] = add_ood(table, model, store, samples, options, features)
    info["uncertainty"] = {"intervals": sorted(state.intervals),
                           "coverage": options.get("coverage") or next(
                               (m.coverage for m in state.intervals.values()), None)}
    labels = options.labels or ages
    if labels is None and (found := _labels(store, samples)) is not None:
        labels = write_csv(found, out / LABELS_FILE)
    run = run_record(PIPELINE, TASK, None if folder is not None else model, source, started,
                     model=str(model), store=str(store.root), split=options.split,
                     labels=None if labels is None else str(Path(labels).resolve()),
                     target=TARGET, **info)
    return write_contract(out, table, problems, run)
