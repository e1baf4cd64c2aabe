"""DeepCOVID-XR's ensemble weight search: the best of N seeded random weight draws.

Wehbe et al. (Radiology 2021) weighted their members with the combination that scored best
on the validation set among randomly drawn weight vectors. `search_weights` does that:
`n_draws` vectors drawn uniformly on the simplex (Dirichlet(1), seeded), each scored on the
validation predictions, and the single best one returned (binary: the highest AUC, ties
to the earlier draw; regression: the lowest RMSE).

How it differs from ``"bmc"`` (Bayesian model combination, `cinelab.infer.ensemble`): BMC
scores the same kind of draws by their likelihood and returns their likelihood-weighted
*mean*, a smooth estimate that moves little when one validation image changes; the search
returns one *argmax* draw, which fits the validation set harder (with few validation
positives it can select weights that win by one image) and, scoring by AUC, ignores
calibration. Use ``"search"`` to reproduce the paper, ``"bmc"`` for a steadier ensemble.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from cinelab.errors import InputError

DEFAULT_N_DRAWS = 1000
DRAW_CHUNK = 256  # draws scored at once (memory: chunk x n_samples)


def batch_auc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of `scores` ``(k, n)`` against 0/1 labels `y` (ties count half)."""
    pos = np.asarray(y) > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(None, "validation labels", "both classes for an AUC weight search",
                         f"{n_pos} positive, {n_neg} negative", "use method bmc or mean")
    ranks = rankdata(scores, axis=1)
    return (ranks[:, pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def search_weights(p: np.ndarray, y: np.ndarray, task: str, seed: int,
                   n_draws: int = DEFAULT_N_DRAWS) -> tuple[np.ndarray, dict[str, Any]]:
    """The best of `n_draws` seeded Dirichlet(1) weight vectors on the validation matrix
    `p` ``(n, m)`` (module docstring); details: criterion, best value, draws, best draw."""
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise InputError(None, "n_draws", "an integer >= 1", repr(n_draws))
    draws = np.random.default_rng(seed).dirichlet(np.ones(p.shape[1]), size=n_draws)
    scores = np.concatenate([_score(draws[i:i + DRAW_CHUNK] @ p.T, y, task)
                             for i in range(0, n_draws, DRAW_CHUNK)])
    best = int(np.argmax(scores))  # first of equal scores
    criterion = "auc" if task == "binary" else "neg_rmse"
    return draws[best], {"criterion": criterion, "best_value": float(scores[best]),
                         "n_draws": n_draws, "best_draw": best}


def _score(combined: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Higher is better: AUC (binary) or minus the RMSE (regression), one per row."""
    if task == "binary":
        return batch_auc(combined, y)
    return -np.sqrt(np.mean((combined - y[None]) ** 2, axis=1))
