"""Ensemble weights: BMC / NNLS / log-loss vs the plain average, NaN handling, JSON files."""

import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.evaluate.metrics import roc_auc
from cinelab.infer.ensemble import (
    EnsembleWeights,
    fit_ensemble_weights,
    load_ensemble_weights,
    save_ensemble_weights,
    weighted_average,
)

N = 300


def _binary_members(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Members whose logits carry the label with decreasing strength (different AUCs)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N).astype(float)
    strength = [2.0, 1.0, 0.4, 0.0]
    logits = [s * (2 * y - 1) + rng.normal(0, 1, N) for s in strength]
    return np.stack([1 / (1 + np.exp(-z)) for z in logits], axis=1), y


def _regression_members(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(60, 8, N)
    return np.stack([y + rng.normal(0, sd, N) for sd in (2, 5, 10, 20)], axis=1), y


@pytest.mark.parametrize("method", ["bmc", "nnls", "logloss"])
def test_binary_weights_beat_plain_average(method):
    p_val, y_val = _binary_members(0)
    p_test, y_test = _binary_members(1)
    ens = fit_ensemble_weights(p_val, y_val, method=method, task="binary")
    w = ens.weights
    assert w.shape == (4,) and np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    assert w[0] > w[-1]  # the best member counts more than the useless one
    assert ens.details["score_weighted"] <= ens.details["score_mean"]
    auc_w = roc_auc(y_test, ens.predict(p_test))
    assert auc_w >= roc_auc(y_test, p_test.mean(axis=1)) - 1e-9


@pytest.mark.parametrize("method", ["bmc", "nnls"])
def test_regression_weights_beat_plain_average(method):
    p_val, y_val = _regression_members(0)
    p_test, y_test = _regression_members(1)
    ens = fit_ensemble_weights(p_val, y_val, method=method, task="regression")
    assert np.argmax(ens.weights) == 0
    rmse_w = np.sqrt(np.mean((ens.predict(p_test) - y_test) ** 2))
    rmse_mean = np.sqrt(np.mean((p_test.mean(axis=1) - y_test) ** 2))
    assert rmse_w <= rmse_mean


def test_bmc_is_seeded_and_records_its_prior():
    p, y = _binary_members(0)
    a = fit_ensemble_weights(p, y, "bmc", seed=3, n_samples=500, alpha=2.0)
    b = fit_ensemble_weights(p, y, "bmc", seed=3, n_samples=500, alpha=2.0)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.details["alpha"] == 2.0 and "Dirichlet" in a.details["prior"]
    assert a.details["effective_sample_size"] >= 1


def test_weighted_average_skips_missing_members():
    preds = np.array([[0.2, 0.6], [np.nan, 0.4], [np.nan, np.nan]])
    out = weighted_average(preds, [0.75, 0.25])
    assert out[0] == pytest.approx(0.3)
    assert out[1] == pytest.approx(0.4)
    assert np.isnan(out[2])


def test_fit_uses_complete_rows_and_checks_inputs():
    p, y = _regression_members(0)
    p[:10, 1] = np.nan
    ens = fit_ensemble_weights(p, y, "nnls", task="regression")
    assert ens.details["n_fit"] == N - 10
    with pytest.raises(InputError, match="probabilities"):
        fit_ensemble_weights(p, y, "bmc", task="binary")
    with pytest.raises(InputError, match="method"):
        fit_ensemble_weights(p, y, "magic", task="regression")
    with pytest.raises(InputError, match="logloss"):
        fit_ensemble_weights(p, y, "logloss", task="regression")


def test_json_round_trip_and_member_order(tmp_path):
    p, y = _binary_members(0)
    names = ["a", "b", "c", "d"]
    ens = fit_ensemble_weights(p, y, "logloss", members=names)
    path = save_ensemble_weights(tmp_path / "ensemble.json", ens)
    back = load_ensemble_weights(path)
    assert isinstance(back, EnsembleWeights) and back.members == names
    np.testing.assert_allclose(back.weights, ens.weights)
    assert back.column_order(["d", "c", "b", "a"]) == [3, 2, 1, 0]
    with pytest.raises(InputError, match="no column"):
        back.column_order(["a", "b"])
    with pytest.raises(InputError, match="no such file"):
        load_ensemble_weights(tmp_path / "missing.json")
