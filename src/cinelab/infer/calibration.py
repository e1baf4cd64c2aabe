"""Calibrated probabilities for binary classifiers, and ensemble member disagreement.

* ``TemperatureScaler``  one temperature T fitted on validation by NLL (Guo et al. 2017):
                         p = sigmoid(logit / T); keeps the ranking (AUC unchanged).
* ``IsotonicCalibrator`` monotone step map fitted by scikit-learn's IsotonicRegression,
                         stored as its thresholds and applied by interpolation.

Both take probabilities (or logits with ``logits=True``), keep a small plain-dict state for a
checkpoint's ``extra`` (`to_dict` / `calibrator_from_dict`), and `apply(prob)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

from cinelab.errors import InputError

CALIBRATION_FORMAT = "cinelab-calibration/1"
METHODS = ("temperature", "isotonic")
#: probabilities are clipped to [EPS, 1 - EPS] before taking logits
EPS = 1e-7
#: search range of log10(T)
LOG10_T_BOUNDS = (-3.0, 3.0)


def _probs_and_labels(prob: Any, labels: Any, logits: bool) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prob, dtype=float).reshape(-1)
    y = np.asarray(labels, dtype=float).reshape(-1)
    if len(p) != len(y):
        raise InputError(None, "probability/label", "arrays of equal length",
                         f"{len(p)} and {len(y)}")
    keep = np.isfinite(p) & np.isfinite(y)
    p, y = p[keep], y[keep]
    if not np.isin(y, (0.0, 1.0)).all():
        raise InputError(None, "label", "binary labels 0/1", f"values {np.unique(y)[:5]}")
    if len(np.unique(y)) < 2:
        raise InputError(None, "label", "both classes in the calibration split",
                         f"only class {int(y[0]) if len(y) else 'none'}")
    return (p if logits else _logit(p)), y


def _logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, EPS, 1.0 - EPS))


def binary_nll(z: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels `y` under logits `z` (numerically stable)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


@dataclass
class TemperatureScaler:
    """p = sigmoid(logit(p_raw) / temperature)."""

    temperature: float = 1.0
    method: str = "temperature"

    @classmethod
    def fit(cls, prob: Any, labels: Any, *, logits: bool = False) -> TemperatureScaler:
        """Fit T by minimising validation NLL (probabilities, or logits when `logits`)."""
        z, y = _probs_and_labels(prob, labels, logits)
        res = minimize_scalar(lambda lt: binary_nll(z / 10.0 ** lt, y),
                              bounds=LOG10_T_BOUNDS, method="bounded")
        return cls(temperature=float(10.0 ** res.x))

    def apply(self, prob: Any, *, logits: bool = False) -> np.ndarray:
        """Calibrated probabilities (NaN stays NaN)."""
        p = np.asarray(prob, dtype=float)
        z = p if logits else _logit(p)
        return expit(z / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for storage."""
        return {"format": CALIBRATION_FORMAT, "method": self.method,
                "temperature": self.temperature}


@dataclass
class IsotonicCalibrator:
    """Monotone map from raw to calibrated probability (thresholds of IsotonicRegression)."""

    x: np.ndarray
    y: np.ndarray
    method: str = "isotonic"

    @classmethod
    def fit(cls, prob: Any, labels: Any, *, logits: bool = False) -> IsotonicCalibrator:
        """Fit on validation probabilities (or logits, turned into probabilities)."""
        z, y = _probs_and_labels(prob, labels, logits)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(expit(z), y)
        return cls(np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float))

    def apply(self, prob: Any, *, logits: bool = False) -> np.ndarray:
        """Calibrated probabilities (flat outside the fitted range; NaN stays NaN)."""
        p = np.asarray(prob, dtype=float)
        p = expit(p) if logits else p
        out = np.interp(p, self.x, self.y)
        return np.where(np.isfinite(p), out, np.nan)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for storage."""
        return {"format": CALIBRATION_FORMAT, "method": self.method,
                "x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}


Calibrator = TemperatureScaler | IsotonicCalibrator


def fit_calibrator(prob: Any, labels: Any, method: str = "temperature", *,
                   logits: bool = False) -> Calibrator:
    """Fit a temperature or isotonic calibrator on validation probabilities and labels."""
    if method == "temperature":
        return TemperatureScaler.fit(prob, labels, logits=logits)
    if method == "isotonic":
        return IsotonicCalibrator.fit(prob, labels, logits=logits)
    raise InputError(None, "calibration method", f"one of {', '.join(METHODS)}", repr(method))


def calibrator_from_dict(state: dict[str, Any]) -> Calibrator:
    """Rebuild a calibrator from its `to_dict` output."""
    if not isinstance(state, dict) or state.get("format") != CALIBRATION_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise InputError(None, "calibration state", CALIBRATION_FORMAT, repr(found))
    if state.get("method") == "temperature":
        return TemperatureScaler(temperature=float(state["temperature"]))
    if state.get("method") == "isotonic":
        return IsotonicCalibrator(np.asarray(state["x"], float), np.asarray(state["y"], float))
    raise InputError(None, "calibration method", f"one of {', '.join(METHODS)}",
                     repr(state.get("method")))


def member_disagreement(member_probs: Any) -> dict[str, np.ndarray]:
    """Per-sample disagreement of ensemble members, from probabilities shaped
    (members, samples): ``std`` (population SD across members) and ``pairwise`` (mean
    |p_i - p_j| over member pairs). One member gives zeros; NaN members are ignored."""
    p = np.asarray(member_probs, dtype=float)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2:
        raise InputError(None, "member probabilities", "an array (members, samples)",
                         f"shape {p.shape}")
    m = np.isfinite(p)
    count = m.sum(axis=0)
    mean = np.where(count > 0, np.nansum(p, axis=0) / np.maximum(count, 1), np.nan)
    var = np.nansum((p - mean) ** 2, axis=0) / np.maximum(count, 1)
    std = np.where(count > 0, np.sqrt(var), np.nan)
    diffs = np.abs(p[:, None, :] - p[None, :, :])
    pair_ok = m[:, None, :] & m[None, :, :]
    iu = np.triu_indices(p.shape[0], k=1)
    n_pairs = pair_ok[iu].sum(axis=0)
    pair_sum = np.where(pair_ok, diffs, 0.0)[iu].sum(axis=0)
    pairwise = np.where(n_pairs > 0, pair_sum / np.maximum(n_pairs, 1),
                        np.where(count > 0, 0.0, np.nan))
    return {"std": std, "pairwise": pairwise}
