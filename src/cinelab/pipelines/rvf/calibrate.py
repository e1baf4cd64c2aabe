"""`cinelab calibrate` for RVF: a temperature fitted on validation videos and a Mahalanobis
OOD detector on the streams' penultimate features, stored where `predict` finds them.

* One model (a checkpoint or run folder): its ``val`` videos of `data` give the raw
  probabilities (temperature) and features (OOD threshold at `OOD_QUANTILE` of their
  scores); its ``train`` videos fit the detector. Both go into the checkpoint's ``extra``.
* An ensemble folder: the temperature is fitted on the members' pooled validation
  predictions (``members/<k>/val``, each member on its own val videos, as for the Youden
  threshold) and stored in ensemble.json; each member's detector is fitted on its own
  train videos, thresholded on its own val videos, and stored in the member's checkpoint.

`out` holds calibration.json (what was fitted, on what, ECE before and after).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.manifest import read_manifest
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.evaluate.classification import TRUTH_COLUMN, join_labels
from cinelab.evaluate.uncertainty import expected_calibration_error
from cinelab.infer.calibration import TemperatureScaler
from cinelab.infer.calibration_state import kept_state, state_digest
from cinelab.infer.contract import read_predictions
from cinelab.infer.ood import DEFAULT_QUANTILE, MahalanobisDetector
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.infer.video_classify import recipe_clips, select_ids
from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf.ensemble import ENSEMBLE_FILE, MEMBERS_DIR, is_ensemble, read_ensemble
from cinelab.pipelines.rvf.predict import (
    PREPARED_DIR,
    checkpoint_path,
    predict_store,
    stacked_features,
)
from cinelab.pipelines.rvf.prepare import store_for
from cinelab.pipelines.rvf.uncertainty import (
    RAW,
    fit_temperature,
    read_rvf_state,
    write_rvf_state,
)
from cinelab.train.checkpoint import load_checkpoint
from cinelab.utils import write_json

CALIBRATION_SPLIT, FIT_SPLIT = "val", "train"
OOD_QUANTILE = DEFAULT_QUANTILE
CALIBRATION_JSON = "calibration.json"


def split_outputs(model: Path, store: PreparedStore, split: str, options: Options
                  ) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(per-video raw predictions, (videos, D) features) of `model` on a store split."""
    loaded = load_checkpoint(model)
    ids = select_ids(store, split or None)
    if not ids:
        raise InputError(store.root, "split", f"videos in the '{split}' split", "none")
    found: list[np.ndarray | None] = []
    videos, _ = predict_store(loaded, store, ids, options.get("clips") or recipe_clips(loaded),
                              options.seed, options.batch_size, options.device, found)
    return videos, stacked_features(found)


def fit_detector(model: Path, store: PreparedStore, split: str, fit_split: str,
                 options: Options) -> tuple[MahalanobisDetector, pd.DataFrame]:
    """A detector fitted on `fit_split` videos, thresholded on `split` videos; returns it
    with the `split` predictions (raw probabilities)."""
    _, train = split_outputs(model, store, fit_split, options)
    if train is None:
        raise InputError(model, "model", "a model with penultimate features", "none captured")
    detector = MahalanobisDetector.fit(train)
    videos, val = split_outputs(model, store, split, options)
    detector.set_threshold(detector.score(val),
                           float(options.get("ood_quantile", OOD_QUANTILE)))
    return detector, videos


def _ece(scaler: TemperatureScaler, table: pd.DataFrame, labels: pd.DataFrame
         ) -> dict[str, Any]:
    joined = join_labels(table, labels).dropna(subset=[TRUTH_COLUMN])
    raw = (joined[RAW] if RAW in joined.columns else joined["probability"]).to_numpy(float)
    truth = joined[TRUTH_COLUMN].to_numpy(float)
    return {"n_calibration": len(joined), "temperature": scaler.temperature,
            "ece_before": expected_calibration_error(raw, truth),
            "ece_after": expected_calibration_error(scaler.apply(raw), truth)}


def calibrate_model(model: Path, data: Path, out: Path, options: Options) -> dict[str, Any]:
    """Temperature and OOD detector of one model (module docstring)."""
    ckpt = checkpoint_path(model)
    size = load_checkpoint(ckpt).input_spec.size
    size = size if isinstance(size, int) else int(size[0])
    store = PreparedStore(store_for(data, out / PREPARED_DIR, size, options.extra))
    split = CALIBRATION_SPLIT if options.split is None else options.split  # "": every video
    fit_split = str(options.get("fit_split", FIT_SPLIT))
    detector, videos = fit_detector(ckpt, store, split, fit_split, options)
    scaler = fit_temperature(videos, store.manifest)
    write_rvf_state(ckpt, UncertaintyState(calibrator=scaler, ood=detector))
    return {"checkpoint": str(ckpt), "store": str(store.root), "split": split or "all",
            "fit_split": fit_split, "ood": "mahalanobis", "ood_threshold": detector.threshold,
            "feature_dim": int(detector.info["dim"]), "n_fit": int(detector.info["n_train"]),
            **_ece(scaler, videos, store.manifest)}


def calibrate_ensemble(folder: Path, options: Options) -> dict[str, Any]:
    """Pooled-validation temperature (ensemble.json) and a detector per member."""
    info, models = read_ensemble(folder)
    pooled, detectors = [], []
    for k, model in enumerate(models):
        view = PreparedStore(Path(folder) / MEMBERS_DIR / str(k) / "store")
        detector, videos = fit_detector(model, view, CALIBRATION_SPLIT,
                                        str(options.get("fit_split", FIT_SPLIT)), options)
        detectors.append(detector)
        val_dir = Path(folder) / MEMBERS_DIR / str(k) / "val"
        pooled.append(read_predictions(val_dir) if (val_dir / "predictions.csv").is_file()
                      else videos)
    table = pd.concat(pooled, ignore_index=True)
    labels = read_manifest(Path(info["store"]) / "manifest.csv")
    scaler = fit_temperature(table, labels)
    found = {"model": str(folder), "store": str(info["store"]), "split": "members' val",
             "ood": "mahalanobis per member",
             "ood_thresholds": [d.threshold for d in detectors],
             **_ece(scaler, table, labels)}
    for model, detector in zip(models, detectors, strict=True):  # everything fitted: store
        write_rvf_state(model, UncertaintyState(ood=detector))
    write_rvf_state(folder, UncertaintyState(calibrator=scaler))
    return found


def calibrate_rvf(model: Path, data: Path, out: Path, options: Options) -> dict[str, Any]:
    """The pipeline's calibrate: `calibrate_ensemble` for an ensemble folder (its members'
    own splits; `data` unused), else `calibrate_model` on `data`; writes and returns
    calibration.json's content. Everything is fitted before anything is stored: when a part
    fails nothing is, and the error says the earlier state is unchanged."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        found = calibrate_ensemble(Path(model), options) if is_ensemble(model) \
            else calibrate_model(Path(model), Path(data), out, options)
    except InputError as exc:
        raise kept_state(exc) from exc
    summary = {"pipeline": "rvf", "data": str(data), **found}
    write_json(out / CALIBRATION_JSON, summary)
    return summary


def state_files(model: Path) -> list[Path]:
    """The files holding the state `predict` applies: ensemble.json and the members'
    checkpoints of an ensemble folder, else the checkpoint."""
    if is_ensemble(model):
        return [Path(model) / ENSEMBLE_FILE, *read_ensemble(model)[1]]
    return [checkpoint_path(model)]


def rvf_state_digest(model: Path) -> str | None:
    """Digest of the calibration state files of `model` (None when it carries none)."""
    files = state_files(model)
    if all(read_rvf_state(f.parent if f.name == ENSEMBLE_FILE else f).empty for f in files):
        return None
    return state_digest(files)


def clear_rvf_calibration(model: Path) -> None:
    """Remove the stored temperature and OOD detectors of `model` (and its members)."""
    for f in state_files(model):
        target = f.parent if f.name == ENSEMBLE_FILE else f
        if not read_rvf_state(target).empty:
            write_rvf_state(target, UncertaintyState())
