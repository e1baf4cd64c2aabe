"""Prediction intervals for regression outputs by split conformal prediction.

Fit on a calibration split that training never saw (predictions vs truth), store the state
in the checkpoint's ``extra`` dict, and turn any later prediction into ``<output>_lo`` /
``<output>_hi`` at a coverage chosen at prediction time (the calibration scores are stored,
not one quantile).

Methods:

* ``absolute``   |y - ŷ| scores; interval ŷ ± q  (crepes ``ConformalRegressor``)
* ``normalized`` |y - ŷ| / σ scores with a per-sample difficulty σ (e.g. ensemble or
                 beat-to-beat SD); interval ŷ ± q·σ  (crepes, normalised)
* ``cqr``        conformalised quantile regression for models that predict a lower and an
                 upper quantile: scores max(q_lo - y, y - q_hi); interval
                 [q_lo - q, q_hi + q]. crepes takes |scores|, which is wrong for CQR's
                 signed scores, so the one conformal quantile is taken here.

The coverage guarantee is marginal (over exchangeable calibration/test samples); with n
calibration scores a coverage above n/(n+1) gives an infinite interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from crepes import ConformalRegressor

from cinelab.errors import InputError

INTERVAL_FORMAT = "cinelab-intervals/1"
METHODS = ("absolute", "normalized", "cqr")
DEFAULT_COVERAGE = 0.9
#: a σ below this is raised to it (a zero σ would give a zero-width interval)
MIN_SIGMA = 1e-8


def _vector(name: str, values: Any) -> np.ndarray:
    if values is None:
        raise InputError(None, name, "an array of numbers", "None")
    return np.asarray(values, dtype=float).reshape(-1)


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(None, "/".join(lengths), "arrays of equal length", str(lengths))


def _check_coverage(coverage: float) -> float:
    coverage = float(coverage)
    if not 0.0 < coverage < 1.0:
        raise InputError(None, "coverage", "a number between 0 and 1 (e.g. 0.9)",
                         repr(coverage))
    return coverage


def check_coverage(value: Any) -> float | None:
    """A user-given interval coverage: None passes (the model's own), else a number strictly
    between 0 and 1 (InputError naming the option otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise InputError(None, "coverage", "a number between 0 and 1 (e.g. 0.9)", repr(value))
    return float(value)


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile: the ceil((n+1)·coverage)-th smallest score (inf when
    there are too few scores for that coverage)."""
    scores = np.sort(np.asarray(scores, dtype=float))
    k = math.ceil((len(scores) + 1) * coverage - 1e-9)
    return float(scores[k - 1]) if 1 <= k <= len(scores) else math.inf


@dataclass
class IntervalModel:
    """Stored calibration scores of one regression output; `apply` gives (lo, hi)."""

    method: str
    scores: np.ndarray
    output: str = "value"
    coverage: float = DEFAULT_COVERAGE
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(None, "interval method", f"one of {', '.join(METHODS)}",
                             repr(self.method))
        self.scores = np.sort(np.asarray(self.scores, dtype=float).reshape(-1))
        if len(self.scores) == 0:
            raise InputError(None, f"{self.output} calibration",
                             "at least one finite (prediction, truth) pair", "none")
        self.coverage = _check_coverage(self.coverage)
        self._crepes: ConformalRegressor | None = None

    # ---- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(cls, y_true: Any, y_pred: Any, sigmas: Any | None = None, *, output: str = "value",
            coverage: float = DEFAULT_COVERAGE) -> IntervalModel:
        """Split conformal on residuals of a model trained elsewhere (``normalized`` when a
        per-sample σ is given). Rows with a non-finite value are left out."""
        y, p = _vector("y_true", y_true), _vector("y_pred", y_pred)
        arrays = {"y_true": y, "y_pred": p}
        if sigmas is not None:
            arrays["sigmas"] = np.maximum(_vector("sigmas", sigmas), MIN_SIGMA)
        _same_length(**arrays)
        keep = np.logical_and.reduce([np.isfinite(a) for a in arrays.values()])
        residuals = y[keep] - p[keep]
        if sigmas is None:
            method, scores = "absolute", np.abs(residuals)
        else:
            method, scores = "normalized", np.abs(residuals) / arrays["sigmas"][keep]
        model = cls(method, scores, output=output, coverage=coverage,
                    info={"n_calibration": int(keep.sum()), "n_dropped": int((~keep).sum())})
        return model

    @classmethod
    def fit_quantiles(cls, y_true: Any, q_lo: Any, q_hi: Any, *, output: str = "value",
                      coverage: float = DEFAULT_COVERAGE) -> IntervalModel:
        """Conformalised quantile regression from a model's lower/upper quantile outputs."""
        y, lo, hi = _vector("y_true", y_true), _vector("q_lo", q_lo), _vector("q_hi", q_hi)
        _same_length(y_true=y, q_lo=lo, q_hi=hi)
        keep = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
        scores = np.maximum(lo[keep] - y[keep], y[keep] - hi[keep])
        return cls("cqr", scores, output=output, coverage=coverage,
                   info={"n_calibration": int(keep.sum()), "n_dropped": int((~keep).sum())})

    # ---- prediction -----------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of calibration scores."""
        return len(self.scores)

    def _regressor(self) -> ConformalRegressor:
        if self._crepes is None:
            reg = ConformalRegressor()
            if self.method == "normalized":
                reg.fit(residuals=self.scores, sigmas=np.ones_like(self.scores))
            else:
                reg.fit(residuals=self.scores)
            self._crepes = reg
        return self._crepes

    def apply(self, predictions: Any, coverage: float | None = None, *, sigmas: Any = None,
              q_lo: Any = None, q_hi: Any = None,
              clip: tuple[float | None, float | None] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) arrays at `coverage` (the fitted default when None). ``normalized`` needs
        `sigmas`, ``cqr`` needs `q_lo`/`q_hi` (then `predictions` may be None). NaN in,
        NaN out. `clip` bounds the interval (e.g. (0, 100) for EF)."""
        coverage = _check_coverage(self.coverage if coverage is None else coverage)
        if self.method == "cqr":
            if q_lo is None or q_hi is None:
                raise InputError(None, f"{self.output} interval", "q_lo and q_hi (cqr)",
                                 "no quantile predictions")
            lo_q, hi_q = _vector("q_lo", q_lo), _vector("q_hi", q_hi)
            _same_length(q_lo=lo_q, q_hi=hi_q)
            q = conformal_quantile(self.scores, coverage)
            lo, hi = lo_q - q, hi_q + q
        else:
            y_hat = _vector("predictions", predictions)
            sig = None
            if self.method == "normalized":
                if sigmas is None:
                    raise InputError(None, f"{self.output} interval",
                                     "per-sample sigmas (normalized intervals)", "none")
                sig = np.maximum(_vector("sigmas", sigmas), MIN_SIGMA)
                _same_length(predictions=y_hat, sigmas=sig)
            lo, hi = self._crepes_interval(y_hat, sig, coverage)
        if clip is not None:
            lo = np.clip(lo, clip[0], clip[1])
            hi = np.clip(hi, clip[0], clip[1])
        return lo, hi

    def _crepes_interval(self, y_hat: np.ndarray, sig: np.ndarray | None,
                         coverage: float) -> tuple[np.ndarray, np.ndarray]:
        lo = np.full(len(y_hat), np.nan)
        hi = np.full(len(y_hat), np.nan)
        ok = np.isfinite(y_hat) if sig is None else np.isfinite(y_hat) & np.isfinite(sig)
        if ok.any():
            out = self._regressor().predict_int(
                y_hat=y_hat[ok], sigmas=None if sig is None else sig[ok], confidence=coverage)
            lo[ok], hi[ok] = out[:, 0], out[:, 1]
        return lo, hi

    def half_width(self, coverage: float | None = None) -> float:
        """The conformal quantile q at `coverage` (interval ŷ ± q, or ± q·σ, or widened by q)."""
        return conformal_quantile(self.scores,
                                  _check_coverage(self.coverage if coverage is None
                                                  else coverage))

    # ---- storage --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON- and weights-only-torch-safe) dict for a checkpoint's ``extra``."""
        return {"format": INTERVAL_FORMAT, "method": self.method, "output": self.output,
                "coverage": self.coverage, "scores": [float(s) for s in self.scores],
                "info": dict(self.info)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> IntervalModel:
        """Rebuild from `to_dict` output (InputError when it is something else)."""
        if not isinstance(state, dict) or state.get("format") != INTERVAL_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise InputError(None, "interval state", INTERVAL_FORMAT, repr(found))
        return cls(state["method"], np.asarray(state["scores"], dtype=float),
                   output=str(state.get("output", "value")),
                   coverage=float(state.get("coverage", DEFAULT_COVERAGE)),
                   info=dict(state.get("info", {})))


def add_interval_columns(table: pd.DataFrame, models: dict[str, IntervalModel] | Sequence[
        IntervalModel], coverage: float | None = None,
        clip: dict[str, tuple[float | None, float | None]] | None = None,
        sigma_columns: dict[str, str] | None = None) -> pd.DataFrame:
    """A copy of `table` with ``<output>_lo`` / ``<output>_hi`` beside each output column
    that has an interval model (models keyed by output, or a list of them). ``normalized``
    models read σ from ``sigma_columns[output]``; ``cqr`` models read ``<output>_q_lo`` /
    ``<output>_q_hi``. Outputs the table lacks are skipped."""
    items = models.items() if isinstance(models, dict) else ((m.output, m) for m in models)
    out = table.copy()
    for name, model in items:
        if name not in out.columns and model.method != "cqr":
            continue
        kwargs: dict[str, Any] = {"coverage": coverage,
                                  "clip": (clip or {}).get(name)}
        if model.method == "normalized":
            col = (sigma_columns or {}).get(name, f"{name}_sd")
            if col not in out.columns:
                raise InputError(None, col, f"a per-sample σ column for {name}'s interval",
                                 f"columns {list(out.columns)}")
            kwargs["sigmas"] = out[col].to_numpy(float)
        if model.method == "cqr":
            if f"{name}_q_lo" not in out.columns:
                continue
            kwargs["q_lo"] = out[f"{name}_q_lo"].to_numpy(float)
            kwargs["q_hi"] = out[f"{name}_q_hi"].to_numpy(float)
        preds = out[name].to_numpy(float) if name in out.columns else None
        lo, hi = model.apply(preds, **kwargs)
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    return out
