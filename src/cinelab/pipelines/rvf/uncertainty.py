"""When not to trust an RV-failure probability: calibration, member disagreement and OOD.

The state (`UncertaintyState`) lives in a checkpoint's ``extra`` (one model) or under
``"uncertainty"`` in ensemble.json (an ensemble; each member checkpoint may carry its own
OOD detector). `calibrate` fits it; every `predict` then adds:

* ``probability`` calibrated (one temperature fitted on validation) with ``probability_raw``
  kept, and ``threshold`` mapped through the same calibration, so ``prediction`` is the one
  the stored (raw-scale) threshold gives;
* ``disagreement``: the SD of the members' probabilities (ensembles of two or more);
* ``ood_score`` / ``ood_flag``: Mahalanobis distance of the video's feature (the mean over
  its clips of the streams' penultimate features, concatenated) to the training videos',
  flagged above the threshold set on validation.

`calibration_metrics` gives ECE before/after and the reliability diagram for evaluate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.evaluate.classification import SCORE_COLUMN, TRUTH_COLUMN, join_labels
from cinelab.evaluate.uncertainty import expected_calibration_error, reliability_diagram
from cinelab.infer.calibration import TemperatureScaler
from cinelab.infer.ood import MahalanobisDetector, capture_features
from cinelab.infer.uncertainty import EXTRA_KEY, UncertaintyState
from cinelab.models.fusion import TwoStream
from cinelab.models.registry import output_layer
from cinelab.train.checkpoint import read_checkpoint, update_checkpoint_extra
from cinelab.utils import read_json, write_json

ENSEMBLE_FILE = "ensemble.json"
RAW = "probability_raw"
RELIABILITY_PNG = "reliability.png"


def read_rvf_state(model: Path) -> UncertaintyState:
    """The stored state of an ensemble folder (ensemble.json) or a checkpoint / run folder."""
    model = Path(model)
    if (model / ENSEMBLE_FILE).is_file():
        return UncertaintyState.from_dict(read_json(model / ENSEMBLE_FILE).get(EXTRA_KEY))
    path = model / "model.pt" if model.is_dir() else model
    return UncertaintyState.from_extra(read_checkpoint(path).get("extra"))


def write_rvf_state(model: Path, state: UncertaintyState) -> Path:
    """Store `state`: in ensemble.json of an ensemble folder, else the checkpoint's extra."""
    model = Path(model)
    if (model / ENSEMBLE_FILE).is_file():
        info = read_json(model / ENSEMBLE_FILE)
        info[EXTRA_KEY] = state.to_dict(json_safe=True)
        write_json(model / ENSEMBLE_FILE, info)
        return model / ENSEMBLE_FILE
    path = model / "model.pt" if model.is_dir() else model
    return update_checkpoint_extra(path, state.to_extra())


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The Linear layers whose inputs are the penultimate features: each stream's head of a
    two-stream model (its fusion layer with "features" fusion), else the model's head."""
    inner = getattr(model, "module", model)
    if isinstance(inner, TwoStream):
        if not inner.stream_logits:
            return [inner.fusion]
        return [output_layer(inner.streams[name]) for name in inner.active_streams]
    return [output_layer(inner)]


@contextmanager
def stream_features(model: nn.Module | None) -> Iterator[list[list[torch.Tensor]]]:
    """While open, every forward of `model` appends each feature module's (N, D) input to
    its list (one list per module); nothing without a model."""
    if model is None:
        yield []
        return
    with ExitStack() as stack:
        yield [stack.enter_context(capture_features(model, m, capture="input"))
               for m in feature_modules(model)]


def video_feature(found: list[list[torch.Tensor]]) -> np.ndarray | None:
    """One video's feature (D,): per module the mean over clips, concatenated (None when
    nothing was captured)."""
    if not found or not all(found):
        return None
    return np.concatenate([torch.cat(f, dim=0).double().mean(dim=0).numpy() for f in found])


def ood_detector(state: UncertaintyState) -> MahalanobisDetector | None:
    """The state's feature detector (None when it has none)."""
    return state.ood if isinstance(state.ood, MahalanobisDetector) else None


def annotate_rvf(videos: pd.DataFrame, state: UncertaintyState,
                 features: np.ndarray | None = None,
                 member_probs: np.ndarray | None = None) -> pd.DataFrame:
    """`videos` with what `state` and the inputs give: ``probability`` calibrated with
    ``probability_raw`` and ``threshold`` mapped alike, ``disagreement`` (2+ members),
    ``ood_score`` / ``ood_flag`` (a detector and one feature row per video)."""
    detector = ood_detector(state) if features is not None else None
    usable = UncertaintyState(calibrator=state.calibrator, ood=detector)
    if RAW in videos.columns:
        usable.calibrator = None
    members = member_probs if member_probs is not None and len(member_probs) >= 2 else None
    out = usable.annotate(videos, features=features, member_probs=members)
    if usable.calibrator is not None and "threshold" in out.columns:
        out["threshold"] = usable.calibrator.apply(out["threshold"].to_numpy(float))
    if "ood_flag" in out.columns:
        out["ood_flag"] = out["ood_flag"].astype(bool)
    return out


def fit_temperature(table: pd.DataFrame, labels: pd.DataFrame) -> TemperatureScaler:
    """One temperature on the raw probabilities of labelled video predictions."""
    joined = join_labels(table, labels).dropna(subset=[TRUTH_COLUMN])
    raw = joined[RAW] if RAW in joined.columns else joined[SCORE_COLUMN]
    return TemperatureScaler.fit(raw.to_numpy(float), joined[TRUTH_COLUMN].to_numpy(float))


def member_matrix(tables: list[pd.DataFrame], order: pd.Series) -> np.ndarray:
    """(members, videos) probabilities of member tables, videos in `order` (sample ids)."""
    ids = order.astype(str)
    return np.stack([t.set_index(t["sample_id"].astype(str))[SCORE_COLUMN]
                     .reindex(ids).to_numpy(float) for t in tables])


def calibration_metrics(labelled: pd.DataFrame, out: Path | None = None) -> dict[str, Any]:
    """``ece`` (of ``probability``), ``ece_raw`` (of ``probability_raw`` when present),
    ``disagreement_mean``, ``ood_flagged`` of labelled per-video predictions, and the
    reliability diagram written to `out` (``plots``)."""
    joined = labelled[np.isfinite(labelled[TRUTH_COLUMN].to_numpy(float))]
    truth = joined[TRUTH_COLUMN]
    found: dict[str, Any] = {"ece": expected_calibration_error(joined[SCORE_COLUMN], truth)}
    probs = {"calibrated" if RAW in joined else "model": joined[SCORE_COLUMN]}
    if RAW in joined.columns:
        found["ece_raw"] = expected_calibration_error(joined[RAW], truth)
        probs = {"raw": joined[RAW], **probs}
    if "disagreement" in joined.columns:
        found["disagreement_mean"] = float(pd.to_numeric(joined["disagreement"]).mean())
    if "ood_flag" in joined.columns:
        flags = joined["ood_flag"].astype(str).str.lower().map({"true": 1.0, "false": 0.0})
        found["ood_flagged"] = float(flags.mean())
    if out is not None:
        path = reliability_diagram(truth, probs, Path(out) / RELIABILITY_PNG)
        found["plots"] = {"reliability": Path(path).name}
    return found
