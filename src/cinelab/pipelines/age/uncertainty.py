"""Age prediction intervals by split-conformal prediction on out-of-fold residuals.

Nested cross-validation leaves one held-out prediction per subject (the outer fold's test
set, never seen by that fold's models): their residuals calibrate the interval.

* the run's out-of-fold predictions get ``age_lo`` / ``age_hi`` by *cross-conformal*
  calibration: the rows of outer fold k from the residuals of the other folds only, so the
  coverage measured on them is honest;
* the ensemble's state (`UNCERTAINTY_FILE` beside its metrics.json, JSON) holds every
  out-of-fold residual and gives ``age_lo`` / ``age_hi`` to every later `predict` of the cv
  folder (``coverage`` option, default 90 %); a single checkpoint uses the state in its
  ``extra`` when `cinelab calibrate` stored one there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.evaluate.uncertainty import interval_coverage
from cinelab.infer.intervals import (
    DEFAULT_COVERAGE,
    IntervalModel,
    add_interval_columns,
    check_coverage,
)
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.age.layout import AGE_RANGE
from cinelab.utils import read_json, write_json

TARGET = "age"
UNCERTAINTY_FILE = "uncertainty.json"


def fit_age_intervals(truth: Any, pred: Any, coverage: float = DEFAULT_COVERAGE
                      ) -> IntervalModel:
    """Split-conformal interval model of ``age`` from held-out (truth, prediction) pairs."""
    return IntervalModel.fit(truth, pred, output=TARGET, coverage=coverage)


def cross_conformal(table: pd.DataFrame, coverage: float = DEFAULT_COVERAGE,
                    truth: str = TARGET, pred: str = "pred", fold: str = "outer"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per row: each outer fold's rows from the residuals of the other folds."""
    lo, hi = np.full(len(table), np.nan), np.full(len(table), np.nan)
    folds = table[fold].to_numpy()
    for k in np.unique(folds):
        here = folds == k
        others = table.loc[~here]
        if others.empty:
            continue
        model = fit_age_intervals(others[truth], others[pred], coverage)
        lo[here], hi[here] = model.apply(table.loc[here, pred], clip=AGE_RANGE)
    return lo, hi


def write_age_state(folder: Path, model: IntervalModel) -> Path:
    """`UNCERTAINTY_FILE` in `folder` (the cv's ensemble folder)."""
    path = Path(folder) / UNCERTAINTY_FILE
    write_json(path, UncertaintyState(intervals={TARGET: model}).to_dict(json_safe=True))
    return path


def read_age_state(folder: Path | None, extra: dict[str, Any] | None = None
                   ) -> UncertaintyState:
    """The state of a cv ensemble folder (its `UNCERTAINTY_FILE`), else of a checkpoint's
    ``extra``; empty when there is none."""
    if folder is not None and (Path(folder) / UNCERTAINTY_FILE).is_file():
        return UncertaintyState.from_dict(read_json(Path(folder) / UNCERTAINTY_FILE))
    return UncertaintyState.from_extra(extra)


def annotate_age(table: pd.DataFrame, state: UncertaintyState, coverage: Any = None
                 ) -> pd.DataFrame:
    """`table` with ``age_lo`` / ``age_hi`` when `state` has an age interval model."""
    if not state.intervals:
        return table
    return add_interval_columns(table, state.intervals, coverage=check_coverage(coverage),
                                clip={TARGET: AGE_RANGE})


def interval_metrics(truth: Any, lo: Any, hi: Any) -> dict[str, float | int]:
    """``age_coverage``, ``age_interval_width``, ``age_interval_n`` of known ages."""
    found = interval_coverage(truth, lo, hi)
    return {"age_coverage": found["coverage"], "age_interval_width": found["mean_width"],
            "age_interval_n": found["n"]}
