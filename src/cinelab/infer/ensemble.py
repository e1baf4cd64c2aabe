"""Weighted ensembles of model predictions: fitted weights, weighted average, JSON files.

Generic over the task: predictions are a matrix ``(n_samples, n_members)`` — probabilities
of the positive class for ``task="binary"``, values for ``task="regression"`` — and the
ensemble prediction is their weighted average with weights on the simplex (>= 0, sum 1).

Methods of `fit_ensemble_weights` (fitted on validation predictions only, never on test):

- ``"bmc"`` — Bayesian model combination (Monteith et al., 2011, as used by DeepCOVID-XR).
  The unknown is the weight vector ``w`` itself, with a Dirichlet(``alpha``) prior on the
  simplex (``alpha=1``: uniform over all combinations; larger ``alpha`` shrinks towards the
  plain average). ``n_samples`` weight vectors are drawn from the prior; each combination is
  scored by its likelihood on the validation set — Bernoulli on the combined probabilities
  for binary tasks, Gaussian with the maximum-likelihood sigma (the combination's RMSE) for
  regression — and the weights returned are the posterior mean: the likelihood-weighted
  average of the sampled vectors (importance sampling with the prior as proposal). With
  ``rounds > 1`` each further round draws from a Dirichlet centred on the current posterior
  mean (concentration ``refine_concentration``) and reweights by likelihood x prior /
  proposal, so the estimate still targets the same posterior. ``temperature`` (default 1)
  divides the log-likelihood (tempered posterior: > 1 spreads the weight over more
  combinations).
- ``"search"`` — DeepCOVID-XR's own procedure: the best of ``n_draws`` seeded random weight
  vectors by validation AUC (regression: RMSE); how it differs from ``"bmc"`` is written in
  `cinelab.infer.weight_search`.
- ``"nnls"`` — constrained least squares: minimise ``||P w - y||²`` over the simplex (SLSQP).
- ``"logloss"`` — binary only: minimise the mean Bernoulli negative log-likelihood of
  ``P w`` over the simplex (SLSQP).
- ``"mean"`` — the plain average (equal weights), the baseline.

Rows where any member's prediction is missing (NaN) are left out of fitting; at prediction
time `weighted_average` renormalises the weights over the members present in each row (a
subject missing a view keeps the other views' prediction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from cinelab.errors import InputError
from cinelab.infer.weight_search import search_weights
from cinelab.utils import read_json, write_json

METHODS = ("bmc", "search", "nnls", "logloss", "mean")
TASKS = ("binary", "regression")
DEFAULT_ALPHA = 1.0
DEFAULT_N_SAMPLES = 4000
DEFAULT_ROUNDS = 3
REFINE_CONCENTRATION = 50.0  # Dirichlet concentration of the refinement proposals
PROB_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] inside log-likelihoods
MIN_SIGMA = 1e-9
ENSEMBLE_FILE_KIND = "cinelab-ensemble-weights"


@dataclass
class EnsembleWeights:
    """Fitted ensemble weights (on the simplex) and how they were obtained."""

    weights: np.ndarray
    method: str
    task: str
    members: list[str] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def predict(self, preds: Any) -> np.ndarray:
        """Weighted average of a ``(n, n_members)`` prediction matrix."""
        return weighted_average(preds, self.weights)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see `save_ensemble_weights`)."""
        return {"kind": ENSEMBLE_FILE_KIND, "weights": [float(w) for w in self.weights],
                "method": self.method, "task": self.task, "members": self.members,
                "details": self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | Path | None = None) -> EnsembleWeights:
        """Inverse of `as_dict`, checking the fields."""
        for key in ("weights", "method", "task"):
            if key not in d:
                raise InputError(path, key, "an ensemble weights field", "nothing")
        w = np.asarray(d["weights"], dtype=float)
        members = d.get("members")
        if members is not None and len(members) != len(w):
            raise InputError(path, "members", f"{len(w)} names (one per weight)",
                             f"{len(members)}")
        return cls(w, d["method"], d["task"], members, d.get("details", {}))

    def column_order(self, names: list[str]) -> list[int]:
        """Indices of this ensemble's members in `names` (for reordering a matrix)."""
        if self.members is None:
            return list(range(len(self.weights)))
        missing = [m for m in self.members if m not in names]
        if missing:
            raise InputError(None, "members", f"predictions of {self.members}",
                             f"no column for {missing}")
        return [names.index(m) for m in self.members]


# --------------------------------------------------------------------------- checks


def _check_preds(preds: Any, task: str, name: str = "preds") -> np.ndarray:
    p = np.asarray(preds, dtype=float)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[1] == 0:
        raise InputError(None, name, "a (n_samples, n_members) matrix", f"shape {p.shape}")
    if task == "binary":
        finite = p[np.isfinite(p)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise InputError(None, name, "probabilities in [0, 1] for a binary task",
                             f"range [{finite.min():.3g}, {finite.max():.3g}]",
                             "pass probabilities (sigmoid of the logits)")
    return p


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(None, name, f"one of {list(allowed)}", repr(value))


def _complete_rows(p: np.ndarray, y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim != 1 or len(y) != len(p):
        raise InputError(None, "y", f"a 1-D array of {len(p)} targets", f"shape {y.shape}")
    keep = np.isfinite(p).all(axis=1) & np.isfinite(y)
    if not keep.any():
        raise InputError(None, "preds/y", "rows where every member has a prediction",
                         "none", "fit on samples every member predicted")
    y = y[keep]
    if task == "binary" and np.setdiff1d(np.unique(y), [0.0, 1.0]).size:
        raise InputError(None, "y", "binary labels 0/1", f"values {np.unique(y)[:5].tolist()}")
    return p[keep], y


# --------------------------------------------------------------------------- combination


def weighted_average(preds: Any, weights: Any) -> np.ndarray:
    """Row-wise weighted average; missing (NaN) members are skipped and the weights of the
    others renormalised; a row with no member present (or zero weight on those) is NaN."""
    p = np.asarray(preds, dtype=float)
    p = p[:, None] if p.ndim == 1 else p
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or p.ndim != 2 or p.shape[1] != len(w):
        raise InputError(None, "preds/weights", f"a (n, {len(w)}) matrix for {len(w)} weights",
                         f"shape {p.shape}")
    present = np.isfinite(p)
    wmat = np.where(present, w[None, :], 0.0)
    total = wmat.sum(axis=1)
    num = (np.where(present, p, 0.0) * wmat).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, num / np.where(total > 0, total, 1.0), np.nan)


def log_likelihoods(combined: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Log-likelihood of `y` under each combined prediction row ``(k, n) -> (k,)``."""
    if task == "binary":
        q = np.clip(combined, PROB_EPS, 1 - PROB_EPS)
        return (y * np.log(q) + (1 - y) * np.log1p(-q)).sum(axis=-1)
    n = combined.shape[-1]
    sigma2 = np.maximum(np.mean((combined - y) ** 2, axis=-1), MIN_SIGMA**2)
    return -0.5 * n * (np.log(2 * np.pi * sigma2) + 1.0)


def _dirichlet_logpdf(w: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    w = np.clip(w, 1e-300, None)
    return (gammaln(alpha.sum()) - gammaln(alpha).sum()
            + ((alpha - 1) * np.log(w)).sum(axis=-1))


def _bmc(p: np.ndarray, y: np.ndarray, task: str, seed: int, alpha: float = DEFAULT_ALPHA,
         n_samples: int = DEFAULT_N_SAMPLES, rounds: int = DEFAULT_ROUNDS,
         temperature: float = 1.0, refine_concentration: float = REFINE_CONCENTRATION,
         ) -> tuple[np.ndarray, dict[str, Any]]:
    """Posterior-mean weights under a Dirichlet(alpha) prior (see the module docstring)."""
    if alpha <= 0 or n_samples < 1 or rounds < 1 or temperature <= 0:
        raise InputError(None, "bmc options", "alpha > 0, n_samples >= 1, rounds >= 1, "
                         "temperature > 0",
                         f"alpha={alpha}, n_samples={n_samples}, rounds={rounds}, "
                         f"temperature={temperature}")
    rng = np.random.default_rng(seed)
    m = p.shape[1]
    prior = np.full(m, float(alpha))
    samples, logw = [], []
    proposal = prior
    for _ in range(rounds):
        w = rng.dirichlet(proposal, size=n_samples)
        loglik = log_likelihoods(w @ p.T, y, task) / temperature
        logw.append(loglik + _dirichlet_logpdf(w, prior) - _dirichlet_logpdf(w, proposal))
        samples.append(w)
        post = _normalised_mean(np.concatenate(samples), np.concatenate(logw))
        proposal = np.maximum(post * refine_concentration, 1e-3)
    all_w, all_logw = np.concatenate(samples), np.concatenate(logw)
    post = _normalised_mean(all_w, all_logw)
    norm = np.exp(all_logw - logsumexp(all_logw))
    details = {"alpha": float(alpha), "n_samples": int(n_samples), "rounds": int(rounds),
               "temperature": float(temperature), "seed": int(seed),
               "effective_sample_size": float(1.0 / np.sum(norm**2)),
               "prior": f"Dirichlet({alpha:g}) over the {m}-member simplex",
               "likelihood": "Bernoulli" if task == "binary" else "Gaussian (fitted sigma)"}
    return post, details


def _normalised_mean(w: np.ndarray, logw: np.ndarray) -> np.ndarray:
    norm = np.exp(logw - logsumexp(logw))
    post = norm @ w
    return post / post.sum()


def _simplex_minimise(fun: Any, m: int) -> np.ndarray:
    res = minimize(fun, np.full(m, 1.0 / m), jac=True, method="SLSQP",
                   bounds=[(0.0, 1.0)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                 "jac": lambda w: np.ones_like(w)}],
                   options={"maxiter": 500, "ftol": 1e-12})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


def _nnls(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = len(y)

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        r = p @ w - y
        return float(r @ r / n), 2.0 * (p.T @ r) / n

    return _simplex_minimise(fun, p.shape[1])


def _logloss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = len(y)

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.clip(p @ w, PROB_EPS, 1 - PROB_EPS)
        loss = -np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))
        dq = (q - y) / (q * (1 - q)) / n
        return float(loss), p.T @ dq

    return _simplex_minimise(fun, p.shape[1])


def validation_score(combined: Any, y: Any, task: str) -> float:
    """Mean negative log-likelihood (binary) or RMSE (regression): lower is better."""
    c, t = np.asarray(combined, float), np.asarray(y, float)
    if task == "binary":
        return float(-log_likelihoods(c[None], t, task)[0] / len(t))
    return float(np.sqrt(np.mean((c - t) ** 2)))


def fit_ensemble_weights(
    preds: Any,
    y: Any,
    method: str = "bmc",
    task: str = "binary",
    seed: int = 0,
    members: list[str] | None = None,
    **opts: Any,
) -> EnsembleWeights:
    """Weights on the simplex for a ``(n, n_members)`` validation prediction matrix.

    `opts` go to the method (bmc: alpha, n_samples, rounds, temperature; search:
    n_draws). `details` records the options and the validation score (NLL for binary,
    RMSE for regression) of the weighted ensemble, of the plain average and of every member.
    """
    _check_choice("method", method, METHODS)
    _check_choice("task", task, TASKS)
    p = _check_preds(preds, task)
    p, t = _complete_rows(p, np.asarray(y, dtype=float).ravel(), task)
    if members is not None and len(members) != p.shape[1]:
        raise InputError(None, "members", f"{p.shape[1]} names", f"{len(members)}")
    if method == "logloss" and task != "binary":
        raise InputError(None, "method", "bmc, nnls or mean for regression", "logloss")
    details: dict[str, Any] = {}
    if method == "bmc":
        w, details = _bmc(p, t, task, seed, **opts)
    elif method == "search":
        w, details = search_weights(p, t, task, seed, **opts)
    elif method == "nnls":
        w = _nnls(p, t)
    elif method == "logloss":
        w = _logloss(p, t)
    else:
        w = np.full(p.shape[1], 1.0 / p.shape[1])
    details.update(_scores(p, t, w, task))
    return EnsembleWeights(np.asarray(w, float), method, task, members, details)


def _scores(p: np.ndarray, y: np.ndarray, w: np.ndarray, task: str) -> dict[str, Any]:
    metric = "nll" if task == "binary" else "rmse"
    return {"n_fit": int(len(y)), "score_metric": metric,
            "score_weighted": validation_score(p @ w, y, task),
            "score_mean": validation_score(p.mean(axis=1), y, task),
            "score_members": [validation_score(p[:, j], y, task) for j in range(p.shape[1])]}


# --------------------------------------------------------------------------- files


def save_ensemble_weights(path: str | Path, ensemble: EnsembleWeights) -> Path:
    """Write the weights as JSON (atomic), usually ``<ensemble dir>/ensemble.json``."""
    write_json(path, ensemble.as_dict())
    return Path(path)


def load_ensemble_weights(path: str | Path) -> EnsembleWeights:
    """Read weights written by `save_ensemble_weights`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an ensemble weights JSON file", "no such file",
                         "fit the ensemble first (train-ensemble)")
    return EnsembleWeights.from_dict(read_json(path), path)


save = save_ensemble_weights
load = load_ensemble_weights
