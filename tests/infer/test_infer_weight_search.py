"""The paper's weight search (best of N seeded random draws) beside BMC."""

from __future__ import annotations

import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.evaluate.metrics import roc_auc
from cinelab.infer.ensemble import fit_ensemble_weights
from cinelab.infer.weight_search import batch_auc, search_weights


def _validation(seed: int = 0, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    good = np.clip(0.5 + 0.35 * (y - 0.5) * 2 + rng.normal(0, 0.25, n), 0, 1)
    noise = rng.random((n, 2))
    return np.column_stack([good, noise]), y


def test_batch_auc_matches_the_metric():
    p, y = _validation()
    rows = np.vstack([p.T, p.mean(axis=1)])
    expected = [roc_auc(y, r) for r in rows]
    np.testing.assert_allclose(batch_auc(rows, y), expected, rtol=1e-12)


def test_search_is_seeded_picks_the_best_draw_and_favours_the_informative_member():
    p, y = _validation()
    a = fit_ensemble_weights(p, y, method="search", seed=3, n_draws=300)
    b = fit_ensemble_weights(p, y, method="search", seed=3, n_draws=300)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.weights.sum() == pytest.approx(1.0) and a.weights[0] > 0.5
    draws = np.random.default_rng(3).dirichlet(np.ones(3), size=300)
    assert a.details["best_value"] == pytest.approx(batch_auc(draws @ p.T, y).max())
    assert a.details["best_value"] >= roc_auc(y, p.mean(axis=1))
    bmc = fit_ensemble_weights(p, y, method="bmc", seed=3)
    assert bmc.method == "bmc" and a.method == "search"


def test_search_refusals_and_regression():
    p, y = _validation()
    with pytest.raises(InputError, match="both classes"):
        search_weights(p, np.zeros(len(y)), "binary", 0)
    with pytest.raises(InputError, match="n_draws"):
        search_weights(p, y, "binary", 0, n_draws=0)
    target = p @ np.array([0.2, 0.5, 0.3])
    w, details = search_weights(p, target, "regression", 0, n_draws=2000)
    assert details["criterion"] == "neg_rmse" and np.abs(w - [0.2, 0.5, 0.3]).max() < 0.1
