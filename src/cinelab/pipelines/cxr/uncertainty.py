"""When not to trust a chest X-ray probability: temperature calibration and member
disagreement.

* `calibrate_cxr` predicts a labelled split training never saw (default ``val``), fits one
  temperature on it (`TemperatureScaler`: the ranking, hence the AUC, is unchanged) and stores
  it: ``uncertainty.json`` in an ensemble folder, the ``extra`` of a single checkpoint.
* `annotate_cxr` (run by every `predict`) then writes ``probability`` calibrated with
  ``probability_raw`` kept, ``threshold`` mapped through the same calibration (so
  ``prediction`` is unchanged), and ``disagreement``: the SD of the members' probabilities.
* `calibration_metrics`: ECE before/after and a reliability diagram for evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.evaluate.classification import join_labels
from cinelab.evaluate.uncertainty import expected_calibration_error, reliability_diagram
from cinelab.infer.calibration import TemperatureScaler, member_disagreement
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.train.checkpoint import read_checkpoint, update_checkpoint_extra
from cinelab.utils import read_json, write_json

UNCERTAINTY_FILE = "uncertainty.json"
ENSEMBLE_FILE = "ensemble.json"
MEMBER_PREFIX = "probability_"
RAW = "probability_raw"
RELIABILITY_PNG = "reliability.png"


def _folder(model: Path) -> Path | None:
    """The ensemble folder of `model` (a folder or its ensemble.json), else None."""
    model = Path(model)
    if model.is_dir():
        return model
    return model.parent if model.name == ENSEMBLE_FILE else None


def read_cxr_state(model: Path) -> UncertaintyState:
    """The stored state of an ensemble folder or a checkpoint (empty when none)."""
    folder = _folder(model)
    if folder is not None:
        path = folder / UNCERTAINTY_FILE
        return UncertaintyState.from_dict(read_json(path)) if path.is_file() \
            else UncertaintyState()
    return UncertaintyState.from_extra(read_checkpoint(model).get("extra"))


def write_cxr_state(model: Path, state: UncertaintyState) -> Path:
    """Store `state`: uncertainty.json in an ensemble folder, else the checkpoint's extra."""
    folder = _folder(model)
    if folder is not None:
        write_json(folder / UNCERTAINTY_FILE, state.to_dict(json_safe=True))
        return folder / UNCERTAINTY_FILE
    return update_checkpoint_extra(model, state.to_extra())


def member_columns(table: pd.DataFrame) -> list[str]:
    """The per-member probability columns (``probability_<member>``, not the raw one)."""
    return [c for c in table.columns if str(c).startswith(MEMBER_PREFIX) and c != RAW]


def annotate_cxr(table: pd.DataFrame, state: UncertaintyState) -> pd.DataFrame:
    """`table` with ``disagreement`` (two or more members) and, with a calibrator,
    ``probability`` calibrated, ``probability_raw`` and the threshold mapped alike."""
    out = table.copy()
    members = member_columns(out)
    if len(members) >= 2:
        out["disagreement"] = member_disagreement(out[members].to_numpy(float).T)["std"]
    if state.calibrator is not None and "probability" in out.columns and RAW not in out:
        out = state.annotate(out)
        if "threshold" in out.columns:
            out["threshold"] = state.calibrator.apply(out["threshold"].to_numpy(float))
    return out


def fit_temperature(table: pd.DataFrame, labels: pd.DataFrame) -> TemperatureScaler:
    """One temperature on the raw probabilities of labelled predictions."""
    joined = join_labels(table, labels)
    raw = joined[RAW] if RAW in joined.columns else joined["probability"]
    return TemperatureScaler.fit(raw.to_numpy(float), joined["truth"].to_numpy(float))


def calibration_metrics(table: pd.DataFrame, labels: pd.DataFrame,
                        out: Path | None = None) -> dict[str, Any]:
    """``ece`` (of ``probability``) and ``ece_raw`` (of ``probability_raw`` when present),
    with the reliability diagram of both written to `out` (``plots``)."""
    joined = join_labels(table, labels)
    ok = np.isfinite(joined["truth"].to_numpy(float))
    joined = joined[ok]
    found: dict[str, Any] = {"ece": expected_calibration_error(joined["probability"],
                                                               joined["truth"])}
    probs = {"calibrated" if RAW in joined else "model": joined["probability"]}
    if RAW in joined.columns:
        found["ece_raw"] = expected_calibration_error(joined[RAW], joined["truth"])
        probs = {"raw": joined[RAW], **probs}
    if "disagreement" in joined.columns:
        found["disagreement_mean"] = float(joined["disagreement"].mean())
    if out is not None:
        path = reliability_diagram(joined["truth"], probs, Path(out) / RELIABILITY_PNG)
        found["plots"] = {"reliability": Path(path).name}
    return found
