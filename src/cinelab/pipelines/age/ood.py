"""Out-of-distribution flag of the age ensemble: one Mahalanobis detector per view/fold model.

For every unit of the nested cross-validation (arm = view, outer fold k, inner fold j)
`fit_unit_ood` fits a `MahalanobisDetector` on the model's penultimate features (the input
of its output Linear, averaged over the clips of a cine) of the unit's training samples,
with its threshold at the `OOD_QUANTILE` of its inner-validation samples' scores (the
quantile every pipeline uses: about 5 % of in-distribution cines above it). `ood_step`
writes it as `OOD_FILE` (JSON, like the ensemble's interval state) beside the unit's
model.pt, with the model's hash (a retrained model is refitted), and every sample's score
in the unit's `SCORES_FILE`.

Combining: a model's ratio = score / its threshold (1.0 = at its threshold); a subject's
``ood_score`` is the mean ratio over every (model, cine) pair that scored it (all the
ensemble's models of each view it has); ``ood_flag`` = ood_score > 1 (NaN flagged).
Out of fold (the run's predictions) a subject is scored only by its outer fold's models,
which never trained on it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.data.mri_augment import cine_tta_views
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.infer.ood import DEFAULT_QUANTILE, MahalanobisDetector, capture_features, ood_from_dict
from cinelab.infer.video_regress import DEFAULT_BATCH, predict_clip_means
from cinelab.models.registry import output_layer
from cinelab.train.checkpoint import LoadedCheckpoint, load_checkpoint
from cinelab.train.cv import RUN_DIR
from cinelab.train.fit import MODEL_FILE
from cinelab.utils import file_hash, is_done, read_json, write_csv, write_json

OOD_FILE, SCORES_FILE = "ood.json", "ood_scores.csv"
OOD_QUANTILE = DEFAULT_QUANTILE
COMBINE = "mean over the ensemble's models of score / threshold; flagged above 1"
FORMAT = "cinelab-age-ood/1"
ENGINE_FEATURES = "the engine's features output (one run per clip)"
EAGER_FEATURES = "an eager copy of each model"
#: (model.pt, sample ids) -> their (len(ids), D) features, or None where not at hand
FeatureSource = Callable[[Path, list[str]], np.ndarray | None]
LOG = logging.getLogger(__name__)


def sidecar(model: Path) -> Path:
    """Where a model's detector lives: `OOD_FILE` beside its model.pt."""
    return Path(model).parent / OOD_FILE


def feature_layer(model: nn.Module) -> str:
    """Name of the hooked features: ``input of <output Linear>``."""
    head = output_layer(model)
    name = next(n for n, m in model.named_modules() if m is head)
    return f"input of {name}"


def cine_outputs(loaded: LoadedCheckpoint, store: PreparedStore, ids: Sequence[str],
                 tta: int = 1, batch_size: int = DEFAULT_BATCH, device: str = "cpu"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """((len(ids), tta) clip-mean predictions under each `cine_tta_views` view, (len(ids), D)
    penultimate features of the identity view averaged over the cine's clips), from one pass
    of `predict_clip_means`. `loaded.model` may be an execution engine whose ``features``
    output is the penultimate features (`infer.ood.capture_features`)."""
    views = cine_tta_views(max(1, int(tta)))
    preds, rows = [], []
    for sid in ids:
        with capture_features(loaded.model, None) as found:
            preds.append(predict_clip_means(loaded.model, loaded.input_spec, store, [sid],
                                            views, batch_size, device)[0])
        # each batch runs every view in turn, the identity first
        rows.append(torch.cat(found[::len(views)], dim=0).double().mean(dim=0).numpy())
    if not rows:
        return np.zeros((0, len(views))), np.zeros((0, 0))
    return np.stack(preds), np.stack(rows)


def cine_features(loaded: LoadedCheckpoint, store: PreparedStore, ids: Sequence[str],
                  batch_size: int = DEFAULT_BATCH, device: str = "cpu") -> np.ndarray:
    """(len(ids), D) penultimate features, each the mean over the cine's clips (the clips
    and normalisation of `predict_clip_means`, no test-time augmentation)."""
    return cine_outputs(loaded, store, ids, 1, batch_size, device)[1]


def fit_unit_ood(model: Path, store: PreparedStore, quantile: float = OOD_QUANTILE,
                 batch_size: int = DEFAULT_BATCH, device: str = "cpu",
                 calibration: str = "val") -> tuple[MahalanobisDetector, pd.DataFrame] | None:
    """(detector, scores) of one unit: fitted on the store view's ``train`` samples, the
    threshold from its `calibration` split's samples; scores = sample_id, subject, role,
    score, ratio of every sample. None with fewer than 2 training or no calibration
    samples."""
    m = store.manifest
    roles = m["split"].astype(str).to_numpy()
    if (roles == "train").sum() < 2 or calibration == "train" or \
            not (roles == calibration).any():
        return None
    loaded = load_checkpoint(model)
    feats = cine_features(loaded, store, m["sample_id"].astype(str).tolist(), batch_size,
                          device)
    fitted = MahalanobisDetector.fit(feats[roles == "train"])
    # the precision as stored (float32, `to_dict`), so a reloaded detector scores the same
    detector = dataclasses.replace(fitted, precision=fitted.precision.astype(np.float32)
                                   .astype(float))
    scores = detector.score(feats)
    detector.set_threshold(scores[roles == calibration], quantile)
    detector.info.update(feature_layer=feature_layer(loaded.model), model_hash=file_hash(model))
    table = pd.DataFrame({"sample_id": m["sample_id"].astype(str).to_numpy(),
                          "subject": m["patient_id"].astype(str).to_numpy(), "role": roles,
                          "score": scores, "ratio": scores / detector.threshold})
    return detector, table


def write_unit_ood(model: Path, detector: MahalanobisDetector) -> Path:
    """The detector as JSON beside `model` (`sidecar`)."""
    path = sidecar(model)
    write_json(path, {"format": FORMAT, "detector": detector.to_dict(json_safe=True)})
    return path


def read_unit_ood(model: Path) -> MahalanobisDetector | None:
    """The detector stored beside `model`; None when there is none or it was fitted on
    another version of the model (its hash differs)."""
    path = sidecar(model)
    if not path.is_file():
        return None
    state = read_json(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise InputError(path, "format", FORMAT, repr(found))
    detector = ood_from_dict(state["detector"])
    if not isinstance(detector, MahalanobisDetector) or \
            detector.info.get("model_hash") != file_hash(model):
        return None
    return detector


def _unit_dirs(cv_dir: Path) -> list[Path]:
    """The finished units of a cv folder."""
    return sorted(p.parent for p in Path(cv_dir).glob("*/outer_*/inner_*/done.json")
                  if is_done(p.parent))


def ood_step(cv_dir: Path, quantile: float = OOD_QUANTILE, batch_size: int = DEFAULT_BATCH,
             device: str = "cpu", refit: bool = False) -> int:
    """Fit and store the detector of every unit of `cv_dir` that has none for its current
    model (resumable; every unit with `refit`); the number fitted."""
    fitted = 0
    for unit in _unit_dirs(cv_dir):
        model = unit / RUN_DIR / MODEL_FILE
        if not model.is_file() or (not refit and read_unit_ood(model) is not None
                                   and (unit / SCORES_FILE).is_file()):
            continue
        try:
            found = fit_unit_ood(model, PreparedStore(unit / "store"), quantile, batch_size,
                                 device)
        except InputError as exc:  # e.g. a model without a recorded output layer
            LOG.warning("%s: no OOD detector (%s)", unit, exc)
            continue
        if found is None:
            continue
        write_csv(found[1], unit / SCORES_FILE)
        write_unit_ood(model, found[0])
        fitted += 1
    return fitted


def oof_ood_scores(cv_dir: Path) -> tuple[pd.Series, dict[str, Any]] | None:
    """Out-of-fold ``ood_score`` per subject (the mean ratio of its test cines under its
    outer fold's models) and the run.json record; None when no unit has a detector."""
    parts, detectors = [], []
    for unit in _unit_dirs(cv_dir):
        model = unit / RUN_DIR / MODEL_FILE
        detector = read_unit_ood(model) if (unit / SCORES_FILE).is_file() else None
        if detector is None:
            continue
        table = pd.read_csv(unit / SCORES_FILE, dtype={"sample_id": str, "subject": str})
        parts.append(table[table["role"] == "test"])
        detectors.append(detector)
    if not detectors:
        return None
    ratios = pd.concat(parts, ignore_index=True)
    return ratios.groupby("subject")["ratio"].mean(), ood_record(detectors)


def ood_record(detectors: Sequence[MahalanobisDetector]) -> dict[str, Any]:
    """What run.json says about the detector of an ensemble."""
    first = detectors[0]
    return {"kind": "mahalanobis", "feature_layer": first.info.get("feature_layer"),
            "pool": first.pool, "threshold_quantile": first.info.get("threshold_quantile"),
            "n_models": len(detectors), "combine": COMBINE, "threshold": 1.0,
            "stored": f"{OOD_FILE} beside each model.pt"}


def ensemble_ood_scores(models: Sequence[tuple[Path, pd.DataFrame]], store: PreparedStore,
                        batch_size: int = DEFAULT_BATCH, device: str = "cpu",
                        features: FeatureSource | None = None
                        ) -> tuple[pd.Series, dict[str, Any]] | None:
    """Per subject the mean ratio over the (model, samples) pairs given (samples: sample_id,
    subject of the cines that model predicts) and the run.json record; models without a
    detector are left out; None when none has one. `features(model, ids)` gives the
    features already computed (e.g. by an engine while predicting) or None; the others
    come from the eager model (`cine_features`); the record's ``features_from`` says which."""
    sums: dict[str, list[float]] = {}
    detectors, from_engine = [], 0
    for model, samples in models:
        detector = read_unit_ood(model)
        if detector is None or samples.empty:
            continue
        ids = samples["sample_id"].astype(str).tolist()
        feats = None if features is None else features(model, ids)
        from_engine += feats is not None
        if feats is None:
            feats = cine_features(load_checkpoint(model), store, ids, batch_size, device)
        ratios = detector.score(feats) / detector.threshold
        for subject, ratio in zip(samples["subject"].astype(str), ratios, strict=True):
            sums.setdefault(subject, []).append(float(ratio))
        detectors.append(detector)
    if not detectors:
        return None
    record = {**ood_record(detectors), "features_from": _features_from(from_engine,
                                                                       len(detectors))}
    return pd.Series({s: float(np.mean(v)) for s, v in sums.items()}), record


def _features_from(from_engine: int, n: int) -> str:
    """run.json's ``features_from``: the engine's features output, the eager models, or
    how many of each."""
    if from_engine == n:
        return ENGINE_FEATURES
    return EAGER_FEATURES if not from_engine else \
        f"{from_engine} of {n} models: {ENGINE_FEATURES}; the others: {EAGER_FEATURES}"


def add_ood_columns(table: pd.DataFrame, scores: pd.Series) -> pd.DataFrame:
    """`table` (one row per subject in ``patient_id``) with ``ood_score`` / ``ood_flag``
    (score > 1; a subject without a score is flagged)."""
    score = table["patient_id"].astype(str).map(scores).astype(float).to_numpy()
    return table.assign(ood_score=score, ood_flag=~(score <= 1.0))


def ood_flag_metrics(table: pd.DataFrame) -> dict[str, float | int]:
    """``ood_flagged`` (fraction of rows) and ``ood_n`` of a table with ``ood_flag``."""
    flags = table["ood_flag"].astype(str).str.lower().map({"true": 1.0, "false": 0.0})
    flags = flags.dropna()
    return {"ood_flagged": float(flags.mean()) if len(flags) else float("nan"),
            "ood_n": int(len(flags))}


def oof_flag_metrics(cv_dir: Path) -> dict[str, Any] | None:
    """The out-of-fold flag rate of a cv folder's subjects (`oof_ood_scores` above 1):
    ``ood_flagged``, ``ood_n``, ``ood_threshold_quantile``; None when no unit has a
    detector."""
    found = oof_ood_scores(cv_dir)
    if found is None:
        return None
    flags = pd.DataFrame({"ood_flag": ~(found[0].to_numpy(float) <= 1.0)})
    return {**ood_flag_metrics(flags), "ood_threshold_quantile":
            found[1].get("threshold_quantile")}
