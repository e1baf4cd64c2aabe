"""Metrics against hand-computed values; bootstrap determinism; plots write PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.evaluate import metrics as M
from cinelab.evaluate import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_dice_hand_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[:2, :3] = True  # 6 pixels, overlap 4
    assert M.dice(a, b) == pytest.approx(2 * 4 / 10)
    assert M.dice(a, a) == 1.0
    assert M.dice(np.zeros(3), np.zeros(3)) == 1.0
    assert M.dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(InputError):
        M.dice(a, np.zeros((3, 3)))


def test_dice_per_frame_and_pooled():
    pred = np.zeros((3, 2, 2), bool)
    true = np.zeros((3, 2, 2), bool)
    pred[0, 0, :] = True  # 2 px, truth 1 px inside: 2*1/3
    true[0, 0, 0] = True
    true[1, 1, 1] = True  # frame 1: pred empty -> 0; frame 2: both empty -> 1
    np.testing.assert_allclose(M.dice_per_frame(pred, true), [2 / 3, 0.0, 1.0])
    assert float(M.pooled_dice(np.array([1.0, 0.0]), np.array([3.0, 1.0]))) == 0.5
    with pytest.raises(InputError):
        M.dice_per_frame(pred, true[:2])


def test_dice_per_class():
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    true = np.array([[0, 1, 2], [2, 2, 0]])
    out = M.dice_per_class(pred, true, labels=[1, 2, 3])
    assert out[1] == pytest.approx(2 * 1 / 3)
    assert out[2] == pytest.approx(2 * 2 / 5)
    assert out[3] == 1.0  # absent in both


def test_regression_metrics_hand_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([2.0, 2.0, 2.0, 6.0])  # errors 1, 0, -1, 2
    m = M.regression_metrics(y, p)
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(6 / 4))
    assert m["bias"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 6 / 5)
    assert m["n"] == 4


def test_regression_metrics_skip_nan_pairs():
    m = M.regression_metrics([1.0, 2.0, np.nan, 4.0], [1.0, 3.0, 5.0, np.inf])
    assert m["n"] == 2 and m["mae"] == pytest.approx(0.5)
    with pytest.raises(InputError):
        M.regression_metrics([1.0, 2.0], [1.0])


def test_bootstrap_ci_contains_point_and_is_seeded():
    rng = np.random.default_rng(3)
    y = rng.normal(50, 10, 200)
    p = y + rng.normal(0, 5, 200)
    first = M.bootstrap_ci(M.mae, y, p, n_boot=300, seed=7)
    again = M.bootstrap_ci(M.mae, y, p, n_boot=300, seed=7)
    other = M.bootstrap_ci(M.mae, y, p, n_boot=300, seed=8)
    assert first == again
    assert first != other
    point, lo, hi = first
    assert lo <= point <= hi and lo < hi


def test_bootstrap_batched_and_loop_paths_agree():
    y = np.arange(30.0)
    p = y + np.sin(y)
    batched = M.bootstrap_ci(M.rmse, y, p, n_boot=100, seed=1)
    looped = M.bootstrap_ci(lambda a, b: float(M.rmse(a, b)), y, p, n_boot=100, seed=1)
    assert batched == pytest.approx(looped)


def test_regression_report_has_cis():
    y = np.linspace(20, 70, 40)
    rep = M.regression_report(y, y + 2.0, n_boot=100, seed=0)
    assert rep["n"] == 40
    assert rep["mae"] == {"value": pytest.approx(2.0), "ci_low": pytest.approx(2.0),
                          "ci_high": pytest.approx(2.0)}
    assert rep["r2"]["ci_low"] <= rep["r2"]["value"] <= rep["r2"]["ci_high"]


def test_roc_auc_known_examples():
    # scikit-learn's documented example: 0.75
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # ties count one half: pairs (neg, pos) -> 1 + 1 + 0.5 + 1 = 3.5 of 4
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert M.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.roc_auc([0, 1, 0, 1], [4, 3, 2, 1]) == pytest.approx(0.25)


def test_roc_auc_single_class_is_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="single class"):
        assert math.isnan(M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(InputError):
        M.roc_auc([0, 2], [0.1, 0.2])


def test_roc_curve_points_and_ties():
    fpr, tpr, thr = M.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thr[0] == np.inf and list(thr[1:]) == [0.8, 0.4, 0.35, 0.1]
    fpr, tpr, _ = M.roc_curve([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])  # the tie is one diagonal step
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.875)


def test_youden_threshold():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.75, 0.5, 0.7, 0.8, 0.9]
    # J per threshold: 0.9 -> 1/4, 0.8 -> 1/2, 0.75 -> 1/4, 0.7 -> 1/2, 0.5 -> 3/4, 0.3 -> 1/2
    assert M.youden_threshold(y, s) == pytest.approx(0.5)


def test_confusion_matrix():
    cm = M.confusion_matrix([0, 1, 1, 2, 2], [0, 1, 2, 2, 0], labels=[0, 1, 2])
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [1, 0, 1]])
    cm = M.confusion_matrix(["a", "b"], ["b", "b"])
    np.testing.assert_array_equal(cm, [[0, 1], [0, 1]])


def test_binary_report_hand_values():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.6])
    rep = M.binary_report(y, s, threshold=0.5, n_boot=200, seed=0)
    assert (rep["tp"], rep["fn"], rep["fp"], rep["tn"]) == (3, 1, 1, 3)
    assert rep["sensitivity"]["value"] == pytest.approx(0.75)
    assert rep["specificity"]["value"] == pytest.approx(0.75)
    assert rep["accuracy"]["value"] == pytest.approx(0.75)
    assert rep["ppv"]["value"] == pytest.approx(0.75)
    assert rep["npv"]["value"] == pytest.approx(0.75)
    assert rep["auc"]["value"] == pytest.approx(M.roc_auc(y, s))
    assert rep["auc"]["ci_low"] <= rep["auc"]["value"] <= rep["auc"]["ci_high"]
    assert rep == M.binary_report(y, s, threshold=0.5, n_boot=200, seed=0)
    labels_given = M.binary_report(y, s, y_pred=s >= 0.5, n_boot=20)
    assert labels_given["tp"] == 3 and labels_given["threshold"] is None


def test_metrics_table_and_json_safe():
    report = {"a": {"value": 1.5, "ci_low": 1.0, "ci_high": 2.0}, "b": {"n": 3, "c": "x"},
              "lst": [1, 2], "bad": float("nan")}
    table = M.metrics_table(report)
    assert table["metric"].tolist() == ["a", "b.n", "bad"]
    assert table.loc[0, "ci_high"] == 2.0
    safe = M.json_safe({"x": np.float32(np.nan), "y": [np.int64(2)]})
    assert safe == {"x": None, "y": [2]}


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.uniform(20, 70, 30)
    p = y + rng.normal(0, 4, 30)
    fpr, tpr, _ = M.roc_curve(y < 40, -p)
    paths = [
        plots.scatter_plot(y, p, tmp_path / "s.png", label="EF (%)"),
        plots.residual_plot(y, p, tmp_path / "r.png"),
        plots.bland_altman_plot(y, p, tmp_path / "ba.png"),
        plots.roc_plot({"EF < 40": (fpr, tpr, M.roc_auc(y < 40, -p))}, tmp_path / "roc.png"),
        plots.area_curve_plot(np.sin(np.arange(40)) + 2, [0, 13], [5, 19], tmp_path / "a.png"),
        plots.scatter_plot([], [], tmp_path / "empty.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
