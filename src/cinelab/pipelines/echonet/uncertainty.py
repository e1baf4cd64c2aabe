"""When not to trust an EchoNet EF: its interval, its OOD flag and its beat-to-beat spread.

The EF checkpoint may carry an `UncertaintyState` in its ``extra`` (`calibrate`): a
split-conformal `IntervalModel` for ``ef`` (the beat-by-beat headline) and a
`MahalanobisDetector` on the model's penultimate features. Prediction then adds:

* ``ef_lo`` / ``ef_hi``: the interval at ``coverage`` (default 90 %), clipped to 0-100;
* ``ood_score`` / ``ood_flag``: Mahalanobis distance of the video's feature (the mean of the
  penultimate features of every clip the EF model saw) to the training videos', flagged
  above the threshold set on the calibration split;
* ``ef_beat_sd`` / ``ef_beat_sd_flag``: the SD (EF points) of the EF of the beats averaged
  (NaN with fewer than two), flagged above `BEAT_SD_THRESHOLD`. A large spread says the
  beats disagree (arrhythmia, a beat badly placed, a foreshortened or moving view), which
  the interval, fitted on typical videos, does not know.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.errors import InputError
from cinelab.evaluate.uncertainty import uncertainty_metrics
from cinelab.infer.intervals import DEFAULT_COVERAGE, add_interval_columns
from cinelab.infer.ood import MahalanobisDetector, capture_features
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.train.checkpoint import LoadedCheckpoint

#: EF points; beat-to-beat SD above it flags the video (about the EF model's own MAE on
#: EchoNet-Dynamic, ~4-5 points: beats that disagree by more than the model errs)
BEAT_SD_THRESHOLD = 5.0
EF_RANGE = (0.0, 100.0)
UNCERTAINTY_COLUMNS = ["ef_lo", "ef_hi", "ef_beat_sd", "ef_beat_sd_flag", "ood_score",
                       "ood_flag"]

__all__ = ["BEAT_SD_THRESHOLD", "DEFAULT_COVERAGE", "EF_RANGE", "UNCERTAINTY_COLUMNS",
           "annotate_predictions", "beat_sd", "checkpoint_state", "detector_of",
           "evaluate_uncertainty", "mean_feature", "ood_unavailable", "usable_state",
           "video_features", "video_ood_score"]


def checkpoint_state(loaded: LoadedCheckpoint | None) -> UncertaintyState:
    """The uncertainty state stored in an EF checkpoint (empty when none or no checkpoint)."""
    if loaded is None:
        return UncertaintyState()
    return UncertaintyState.from_extra(loaded.info.get("extra"))


def detector_of(state: UncertaintyState) -> MahalanobisDetector | None:
    """The state's feature-space OOD detector (None when it has none)."""
    return state.ood if isinstance(state.ood, MahalanobisDetector) else None


def usable_state(state: UncertaintyState, loaded: LoadedCheckpoint | None
                 ) -> UncertaintyState:
    """`state` without its feature detector when the EF model gives no features where the
    detector was fitted (an engine exported without them, e.g. an older ONNX file):
    intervals and beat-to-beat flags still apply."""
    model = None if loaded is None else loaded.model
    detector = detector_of(state)
    if detector is None or isinstance(model, nn.Module) or (
            hasattr(model, "has_features") and
            model.has_features(detector.module or None, None, detector.pool)):  # type: ignore[union-attr]
        return state
    return UncertaintyState(intervals=state.intervals, calibrator=state.calibrator)


def ood_unavailable(stored: UncertaintyState, usable: UncertaintyState) -> dict[str, str]:
    """run.json's ``ood_unavailable`` (why) when `usable_state` dropped the detector."""
    if detector_of(stored) is None or detector_of(usable) is not None:
        return {}
    return {"ood_unavailable": "the engine's model gives no features where the OOD "
                               "detector was fitted (export it again: `cinelab export`)"}


@contextmanager
def video_features(model: nn.Module | None, detector: MahalanobisDetector | None
                   ) -> Iterator[list[torch.Tensor]]:
    """While open, every forward of `model` appends its (N, D) features, taken where
    `detector` was fitted, to the yielded list (nothing without a model or detector)."""
    if model is None or detector is None:
        with nullcontext([]) as found:
            yield found
        return
    with capture_features(model, detector.module or None, pool=detector.pool) as found:
        yield found


def mean_feature(found: list[torch.Tensor]) -> np.ndarray | None:
    """The mean feature row (D,) over every captured clip; None when nothing was captured."""
    if not found:
        return None
    return torch.cat(found, dim=0).double().mean(dim=0).numpy()


def video_ood_score(detector: MahalanobisDetector | None, found: list[torch.Tensor]) -> float:
    """The detector's score of a video's mean feature (NaN without detector or features)."""
    feature = mean_feature(found)
    if detector is None or feature is None:
        return math.nan
    return float(detector.score(feature[None, :])[0])


def beat_sd(beats: pd.DataFrame) -> pd.Series:
    """Per sample_id: the SD (ddof 1) of the EF of the beats averaged (``used`` with a
    finite ``ef``); NaN with fewer than two such beats."""
    if beats.empty or "ef" not in beats.columns:
        return pd.Series(dtype=float)
    used = pd.to_numeric(beats.get("used", 1), errors="coerce").fillna(0).astype(bool)
    ef = pd.to_numeric(beats["ef"], errors="coerce")
    keep = used & np.isfinite(ef)
    return ef[keep].groupby(beats.loc[keep, "sample_id"].astype(str)).std(ddof=1)


def _check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InputError(None, "beat_sd_threshold", "a number of EF points > 0", repr(value))
    return float(value)


def annotate_predictions(table: pd.DataFrame, beats: pd.DataFrame, state: UncertaintyState,
                         coverage: float | None = None,
                         beat_sd_threshold: float = BEAT_SD_THRESHOLD) -> pd.DataFrame:
    """predictions.csv with ``ef_beat_sd``/``ef_beat_sd_flag`` always, and what `state`
    gives: ``ef_lo``/``ef_hi`` at `coverage` (the fitted one when None) and ``ood_flag``
    from an ``ood_score`` column."""
    threshold = _check_threshold(beat_sd_threshold)
    out = table.copy()
    sd = out["sample_id"].astype(str).map(beat_sd(beats)).astype(float)
    out["ef_beat_sd"] = sd
    out["ef_beat_sd_flag"] = (sd > threshold).astype(bool)
    if state.intervals:
        out = add_interval_columns(out, state.intervals, coverage=coverage,
                                   clip={"ef": EF_RANGE})
    if state.ood is not None and "ood_score" in out.columns:
        out["ood_flag"] = state.ood.flag(out["ood_score"].to_numpy(float)).astype(bool)
    return out


def _flag_rate(values: pd.Series) -> float:
    flags = values.map({True: 1.0, False: 0.0, "True": 1.0, "False": 0.0}).astype(float)
    return float(flags.mean()) if flags.notna().any() else math.nan


def evaluate_uncertainty(preds: pd.DataFrame, labels: pd.DataFrame,
                         nominal: float | None = None) -> dict[str, Any]:
    """Flat metrics of the uncertainty columns present in predictions joined with labels
    (sample_id, EF): ``ef_coverage`` / ``ef_interval_width`` / ``ef_interval_n`` (and
    ``ef_coverage_nominal`` when known), ``ood_flagged`` and ``ef_beat_sd_flagged`` (fractions
    of predictions), ``ef_beat_sd_median``."""
    joined = preds.merge(labels[["sample_id", "EF"]], on="sample_id", how="left")
    if "ood_flag" in joined.columns:
        joined["ood_flag"] = joined["ood_flag"].map(
            {True: True, False: False, "True": True, "False": False})
    found = uncertainty_metrics(joined.drop(columns=["ood_flag"], errors="ignore"),
                                truth={"ef": "EF"})
    out: dict[str, Any] = {}
    if "coverage/ef" in found:
        out.update(ef_coverage=found["coverage/ef"], ef_interval_width=found["width/ef"],
                   ef_interval_n=found["n/ef"])
        if nominal is not None:
            out["ef_coverage_nominal"] = float(nominal)
    if "ood_flag" in joined.columns:
        out["ood_flagged"] = _flag_rate(joined["ood_flag"])
    if "ef_beat_sd_flag" in joined.columns:
        out["ef_beat_sd_flagged"] = _flag_rate(joined["ef_beat_sd_flag"])
        out["ef_beat_sd_median"] = float(pd.to_numeric(joined["ef_beat_sd"]).median())
    return out
