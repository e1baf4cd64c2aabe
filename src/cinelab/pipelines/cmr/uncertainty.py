"""Prediction intervals of CMR volumes and EF (``edv``, ``esv``, ``ef``) by split conformal
prediction: residuals of a labelled split training never saw (`calibrate_cmr`) stored in the
checkpoint's ``extra``; `predict` then adds ``<output>_lo`` / ``<output>_hi`` (``coverage``
option, default the fitted 90 %). Volumes are in the unit the calibration measured
(``volume_unit``: mL with known spacing)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate.uncertainty import interval_coverage
from cinelab.infer.intervals import (
    DEFAULT_COVERAGE,
    IntervalModel,
    add_interval_columns,
    check_coverage,
)
from cinelab.infer.uncertainty import UncertaintyState

#: evaluation's volume columns (``<name>_pred`` / ``<name>_true``) -> contract output
OUTPUTS = {"EDV": "edv", "ESV": "esv", "EF": "ef"}
CLIP: dict[str, tuple[float | None, float | None]] = {"edv": (0.0, None), "esv": (0.0, None),
                                                      "ef": (0.0, 100.0)}


def fit_cmr_intervals(volumes: pd.DataFrame, coverage: float = DEFAULT_COVERAGE
                      ) -> dict[str, IntervalModel]:
    """One interval model per output with finite (prediction, truth) pairs in `volumes`
    (`evaluate_cmr`'s per-patient table)."""
    models = {}
    for name, output in OUTPUTS.items():
        pred, true = f"{name}_pred", f"{name}_true"
        if {pred, true} <= set(volumes.columns):
            ok = np.isfinite(volumes[pred].to_numpy(float)) & \
                np.isfinite(volumes[true].to_numpy(float))
            if ok.any():
                models[output] = IntervalModel.fit(volumes.loc[ok, true], volumes.loc[ok, pred],
                                                   output=output, coverage=coverage)
    if not models:
        raise InputError(None, "calibration volumes", "patients with EDV/ESV/EF in both the "
                         "predictions and the truth", "none")
    return models


def annotate_cmr(table: pd.DataFrame, extra: dict[str, Any] | None, coverage: Any = None
                 ) -> pd.DataFrame:
    """`table` with ``<output>_lo`` / ``<output>_hi`` for the outputs whose interval model
    the checkpoint's ``extra`` holds (unchanged without one)."""
    state = UncertaintyState.from_extra(extra)
    if not state.intervals:
        return table
    return add_interval_columns(table, state.intervals, coverage=check_coverage(coverage),
                                clip=CLIP)


def cmr_interval_metrics(predictions: pd.DataFrame, volumes: pd.DataFrame) -> dict[str, Any]:
    """``<output>_coverage`` / ``<output>_interval_width`` per output with intervals in the
    predictions, against the truth of `volumes` (one row per patient)."""
    out: dict[str, Any] = {}
    if "patient_id" not in volumes.columns:
        return out
    per_patient = predictions.drop_duplicates("patient_id").set_index(
        predictions.drop_duplicates("patient_id")["patient_id"].astype(str))
    truth = volumes.set_index(volumes["patient_id"].astype(str))
    for name, output in OUTPUTS.items():
        lo, hi = f"{output}_lo", f"{output}_hi"
        if {lo, hi} <= set(per_patient.columns) and f"{name}_true" in truth.columns:
            ids = truth.index.intersection(per_patient.index)
            found = interval_coverage(truth.loc[ids, f"{name}_true"],
                                      per_patient.loc[ids, lo], per_patient.loc[ids, hi])
            out[f"{output}_coverage"] = found["coverage"]
            out[f"{output}_interval_width"] = found["mean_width"]
            out[f"{output}_interval_n"] = found["n"]
    return out
