"""Classification evaluation on a hand-built predictions CSV: counts, rates, AUC, joins."""

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.evaluate.classification import (
    choose_threshold,
    evaluate_classification,
    join_labels,
)
from cinelab.io.image import read_image

TRUTH = [1, 1, 1, 0, 0, 0, 1, 0]
PROB = [0.9, 0.8, 0.4, 0.3, 0.6, 0.1, 0.7, 0.2]


def _preds(tmp_path, with_truth=True):
    df = pd.DataFrame({"file": [str(tmp_path / f"img{i}.png") for i in range(8)],
                       "sample_id": [f"s{i}" for i in range(8)], "probability": PROB,
                       "p_good": PROB, "p_flipped": [1 - p for p in PROB]})
    if with_truth:
        df["truth"] = TRUTH
    return df


def test_hand_built_numbers(tmp_path):
    path = tmp_path / "predictions.csv"
    df = _preds(tmp_path)
    df.loc[8] = [str(tmp_path / "bad.png"), "s8", np.nan, np.nan, np.nan, 1]  # unreadable
    df.to_csv(path, index=False)
    ev = evaluate_classification(path, tmp_path / "eval", threshold=0.5, n_boot=200)
    r = ev.report
    assert (r["tp"], r["fn"], r["fp"], r["tn"]) == (3, 1, 1, 3)
    for name in ("sensitivity", "specificity", "accuracy"):
        assert r[name]["value"] == pytest.approx(0.75)
        assert r[name]["ci_low"] <= 0.75 <= r[name]["ci_high"]
    assert r["auc"]["value"] == pytest.approx(15 / 16)
    assert r["n"] == 8 and r["n_unscored"] == 1 and r["threshold_source"] == "given"
    members = ev.members.set_index("model")
    assert members.loc["good", "auc"] == pytest.approx(15 / 16)
    assert members.loc["flipped", "auc"] == pytest.approx(1 / 16)
    assert ev.confusion["predicted_positive"].tolist() == [1, 3]
    for key in ("metrics", "members", "confusion", "per_sample", "roc"):
        assert ev.files[key].exists()
    assert read_image(ev.files["roc"], rgb=True).ndim == 3


def test_labels_join_by_id_path_or_name(tmp_path):
    preds = _preds(tmp_path, with_truth=False)
    by_id = pd.DataFrame({"sample_id": preds["sample_id"], "label": TRUTH})
    assert join_labels(preds, by_id)["truth"].tolist() == TRUTH
    by_path = pd.DataFrame({"path": preds["file"], "label": TRUTH})
    assert join_labels(preds.drop(columns="sample_id"), by_path)["truth"].tolist() == TRUTH
    by_name = pd.DataFrame({"filename": [f"img{i}.png" for i in range(8)], "covid": TRUTH})
    assert join_labels(preds.drop(columns="sample_id"), by_name)["truth"].tolist() == TRUTH
    with pytest.raises(InputError, match="no match"):
        join_labels(preds, pd.DataFrame({"sample_id": ["x"], "label": [1]}))
    with pytest.raises(InputError, match="labels"):
        evaluate_classification(preds)


def test_threshold_sources(tmp_path):
    preds = _preds(tmp_path)
    assert choose_threshold(preds) == (0.5, "default 0.5")
    preds["threshold"] = 0.35
    assert choose_threshold(preds)[0] == pytest.approx(0.35)
    thr, source = choose_threshold(preds, tune_on=_preds(tmp_path))
    assert source.startswith("Youden") and thr == pytest.approx(0.7)
    ev = evaluate_classification(preds, tune_on=preds, n_boot=50)
    assert ev.report["threshold"] == pytest.approx(0.7)
    assert ev.report["specificity"]["value"] == pytest.approx(1.0)
