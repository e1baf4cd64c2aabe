"""Conformal intervals, probability calibration and OOD flags on synthetic data of known truth;
their state survives to_dict/from_dict and a saved cinelab checkpoint's ``extra``."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.errors import InputError
from cinelab.evaluate.uncertainty import expected_calibration_error, interval_coverage
from cinelab.infer.calibration import (
    IsotonicCalibrator,
    TemperatureScaler,
    calibrator_from_dict,
    fit_calibrator,
    member_disagreement,
)
from cinelab.infer.intervals import IntervalModel, add_interval_columns, conformal_quantile
from cinelab.infer.ood import (
    EnergyDetector,
    MahalanobisDetector,
    capture_features,
    last_feature_map,
    ood_from_dict,
    penultimate_features,
)
from cinelab.infer.uncertainty import EXTRA_KEY, UncertaintyState
from cinelab.synth.uncertainty import (
    OOD_KINDS,
    ShapeNet,
    ood_images,
    overconfident_classifier,
    regression_cohort,
    shape_images,
    train_shape_classifier,
)
from cinelab.train.checkpoint import InputSpec, read_checkpoint, save_checkpoint

N_CAL, N_TEST = 1000, 2000


def _split(data: dict[str, np.ndarray], n_cal: int = N_CAL):
    cal = {k: v[:n_cal] for k, v in data.items()}
    test = {k: v[n_cal:] for k, v in data.items()}
    return cal, test


# ---- intervals ---------------------------------------------------------------------------

def test_split_conformal_holds_90_percent_on_held_out_cohort():
    cal, test = _split(regression_cohort(N_CAL + N_TEST, seed=1))
    model = IntervalModel.fit(cal["truth"], cal["prediction"], output="ef")
    lo, hi = model.apply(test["prediction"])
    cov = interval_coverage(test["truth"], lo, hi)
    assert 0.85 <= cov["coverage"] <= 0.95
    # noise SD 5: the 90 % half-width is about 1.645 * 5
    assert model.half_width() == pytest.approx(1.645 * 5, rel=0.1)
    assert model.method == "absolute" and model.n == N_CAL
    # coverage is chosen at prediction time from the stored scores
    cov80 = interval_coverage(test["truth"], *model.apply(test["prediction"], coverage=0.8))
    assert 0.75 <= cov80["coverage"] <= 0.85
    assert cov80["mean_width"] < cov["mean_width"]


def test_normalized_and_cqr_intervals_cover_heteroscedastic_cohort():
    cal, test = _split(regression_cohort(N_CAL + N_TEST, seed=2, heteroscedastic=True))
    norm = IntervalModel.fit(cal["truth"], cal["prediction"], cal["sigma"])
    assert norm.method == "normalized"
    lo, hi = norm.apply(test["prediction"], sigmas=test["sigma"])
    assert 0.85 <= interval_coverage(test["truth"], lo, hi)["coverage"] <= 0.95
    # quantile outputs that are too narrow (±0.5 σ) are widened by CQR to 90 %
    q = {k: (d["prediction"] - 0.5 * d["sigma"], d["prediction"] + 0.5 * d["sigma"])
         for k, d in (("cal", cal), ("test", test))}
    cqr = IntervalModel.fit_quantiles(cal["truth"], *q["cal"])
    lo, hi = cqr.apply(None, q_lo=q["test"][0], q_hi=q["test"][1])
    assert cqr.method == "cqr" and cqr.half_width() > 0
    assert 0.85 <= interval_coverage(test["truth"], lo, hi)["coverage"] <= 0.95


def test_intervals_nan_clip_and_too_few_scores():
    model = IntervalModel.fit([1.0, 2.0, 3.0, np.nan], [1.5, 2.0, 2.0, 1.0])
    assert model.info == {"n_calibration": 3, "n_dropped": 1}
    assert model.scores.tolist() == [0.0, 0.5, 1.0]
    # n=3: coverage 0.75 is the 3rd smallest score; 0.9 needs ceil(3.6)=4 > 3 scores: infinite
    assert conformal_quantile(model.scores, 0.75) == 1.0
    lo, hi = model.apply([10.0, np.nan], coverage=0.5)
    assert lo[0] == pytest.approx(9.5) and hi[0] == pytest.approx(10.5)
    assert np.isnan(lo[1]) and np.isnan(hi[1])
    with pytest.warns(UserWarning, match="too small"):  # crepes says so
        lo, hi = model.apply([10.0], coverage=0.9)
    assert lo[0] == -math.inf and hi[0] == math.inf
    lo, hi = model.apply([99.8], coverage=0.75, clip=(0.0, 100.0))
    assert (lo[0], hi[0]) == (pytest.approx(98.8), 100.0)


def test_interval_errors_are_typed():
    with pytest.raises(InputError) as err:
        IntervalModel.fit([1.0, 2.0], [1.0])
    assert err.value.field == "y_true/y_pred"
    with pytest.raises(InputError) as err:
        IntervalModel.fit([np.nan], [1.0], output="ef")
    assert (err.value.field, err.value.found) == ("ef calibration", "none")
    model = IntervalModel.fit([1.0, 2.0], [1.0, 2.5])
    with pytest.raises(InputError) as err:
        model.apply([1.0], coverage=1.5)
    assert err.value.field == "coverage"
    norm = IntervalModel.fit([1.0, 2.0], [1.0, 2.5], [1.0, 1.0])
    with pytest.raises(InputError) as err:
        norm.apply([1.0])
    assert err.value.expected == "per-sample sigmas (normalized intervals)"
    with pytest.raises(InputError) as err:
        IntervalModel.from_dict({"format": "other"})
    assert (err.value.field, err.value.found) == ("interval state", "'other'")


def test_add_interval_columns_names_lo_hi():
    cal, test = _split(regression_cohort(1200, seed=3), n_cal=1000)
    models = {"ef": IntervalModel.fit(cal["truth"], cal["prediction"], output="ef"),
              "age": IntervalModel.fit(cal["truth"], cal["prediction"], output="age")}
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in range(200)], "ef": test["prediction"]})
    out = add_interval_columns(table, models, clip={"ef": (0.0, 100.0)})
    assert list(out.columns) == ["sample_id", "ef", "ef_lo", "ef_hi"]  # no age column: skipped
    assert (out["ef_lo"] <= out["ef"]).all() and (out["ef_hi"] >= out["ef"]).all()
    assert "ef_lo" not in table.columns


# ---- calibration -------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_lowers_ece_of_overconfident_model(method):
    data = overconfident_classifier(6000, seed=4, overconfidence=5.0)
    val, test = _split(data, n_cal=2000)
    cal = fit_calibrator(val["prob_raw"], val["labels"], method)
    before = expected_calibration_error(test["prob_raw"], test["labels"])
    after = expected_calibration_error(cal.apply(test["prob_raw"]), test["labels"])
    assert before > 0.1
    assert after < 0.03 < before
    if method == "temperature":
        assert cal.temperature == pytest.approx(5.0, rel=0.15)
        # the same from logits; ranking unchanged
        from_logits = TemperatureScaler.fit(val["logits_raw"], val["labels"], logits=True)
        # (probabilities are clipped to 1e-7 before the logit, logits are not)
        assert from_logits.temperature == pytest.approx(cal.temperature, rel=0.05)
        p = cal.apply(test["prob_raw"])
        assert (np.diff(p[np.argsort(test["prob_raw"])]) >= 0).all()  # monotone: AUC kept


def test_calibrator_state_round_trip_and_errors():
    data = overconfident_classifier(500, seed=5)
    probe = np.array([0.01, 0.3, 0.5, 0.9, np.nan])
    for method in ("temperature", "isotonic"):
        cal = fit_calibrator(data["prob_raw"], data["labels"], method)
        state = json.loads(json.dumps(cal.to_dict()))
        back = calibrator_from_dict(state)
        assert type(back) is type(cal)
        np.testing.assert_allclose(back.apply(probe), cal.apply(probe), equal_nan=True)
        assert np.isnan(back.apply(probe)[-1])
    iso = IsotonicCalibrator.fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert iso.apply([0.0, 1.0]).tolist() == [0.0, 1.0]
    with pytest.raises(InputError) as err:
        fit_calibrator([0.2, 0.3], [1, 1])
    assert (err.value.field, err.value.found) == ("label", "only class 1")
    with pytest.raises(InputError) as err:
        fit_calibrator([0.2, 0.3], [0, 1], "platt")
    assert err.value.field == "calibration method"


def test_member_disagreement_exact():
    d = member_disagreement([[0.1, 0.5, 0.2], [0.3, 0.5, np.nan], [0.5, 0.5, np.nan]])
    np.testing.assert_allclose(d["std"], [np.sqrt(8 / 3) / 10, 0.0, 0.0])
    np.testing.assert_allclose(d["pairwise"], [(0.2 + 0.4 + 0.2) / 3, 0.0, 0.0])
    single = member_disagreement([[0.3, 0.7]])
    assert single["std"].tolist() == [0.0, 0.0] and single["pairwise"].tolist() == [0.0, 0.0]


# ---- OOD ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes():
    torch.manual_seed(0)
    x_train, y_train = shape_images(400, seed=0)
    x_val, _ = shape_images(200, seed=1)
    x_test, y_test = shape_images(200, seed=2)
    model = train_shape_classifier(x_train, y_train, epochs=10)
    return {"model": model, "x_train": x_train, "y_train": y_train, "x_val": x_val,
            "x_test": x_test, "y_test": y_test}


@pytest.mark.slow
def test_shape_classifier_learns(shapes):
    with torch.no_grad():
        pred = shapes["model"](shapes["x_test"]).argmax(1)
    assert (pred == shapes["y_test"]).float().mean().item() >= 0.95


def test_mahalanobis_flags_wrong_kind_inputs(shapes):
    model = shapes["model"]
    layer = last_feature_map(model, shapes["x_train"][:2])
    assert layer == "features.7"  # the last ReLU before global pooling
    feats, _ = penultimate_features(model, shapes["x_train"], layer, pool="meanstd")
    assert feats.shape == (400, 32)
    det = MahalanobisDetector.fit(feats, shapes["y_train"], module=layer, pool="meanstd")
    det.set_threshold(det.score(det.features(model, shapes["x_val"])[0]), quantile=0.95)
    state = det.to_dict()
    assert state["precision"].dtype == torch.float32 and state["precision"].shape == (32, 32)
    det = ood_from_dict(json.loads(json.dumps(det.to_dict(json_safe=True))))
    in_flagged = det.flag(det.score(det.features(model, shapes["x_test"])[0])).mean()
    assert in_flagged <= 0.10
    for kind in OOD_KINDS:
        caught = det.flag(det.score(det.features(model, ood_images(200, kind, seed=3))[0]))
        assert caught.mean() >= 0.95, kind


def test_penultimate_hook_is_input_of_output_layer(shapes):
    model, x = shapes["model"], shapes["x_test"][:5]
    feats, out = penultimate_features(model, x)
    with torch.no_grad():
        torch.testing.assert_close(feats, model.features(x))
        torch.testing.assert_close(out, model(x))
    with capture_features(model) as found, torch.no_grad():
        model(x[:2])
        model(x[2:])
    assert [f.shape[0] for f in found] == [2, 3]
    assert not model.fc._forward_pre_hooks  # hook removed
    with pytest.raises(InputError) as err:
        penultimate_features(model, x, pool="max")
    assert err.value.field == "pool"


def test_energy_detector_and_state_errors():
    det = EnergyDetector()
    np.testing.assert_allclose(det.score(np.array([0.0])), [-np.log(2.0)])
    np.testing.assert_allclose(det.score(torch.zeros(1, 3)), [-np.log(3.0)])
    det.set_threshold(np.arange(101.0), quantile=0.9)
    assert det.threshold == 90.0
    assert det.flag([89.0, 90.0, 91.0, np.nan]).tolist() == [False, False, True, True]
    back = ood_from_dict(det.to_dict())
    assert isinstance(back, EnergyDetector) and back.threshold == 90.0
    with pytest.raises(InputError) as err:
        ood_from_dict({"format": "cinelab-ood/1", "kind": "knn"})
    assert (err.value.field, err.value.found) == ("OOD kind", "'knn'")
    with pytest.raises(InputError) as err:
        MahalanobisDetector.fit(np.ones((1, 3)))
    assert err.value.field == "training features"


# ---- bundle and checkpoint ---------------------------------------------------------------

def test_state_survives_checkpoint_extra_and_annotates(tmp_path, shapes):
    cal, test = _split(regression_cohort(1100, seed=6))
    cls = overconfident_classifier(600, seed=7)
    model = shapes["model"]
    feats, _ = penultimate_features(model, shapes["x_train"])
    ood = MahalanobisDetector.fit(feats, shapes["y_train"])
    ood.set_threshold(ood.score(penultimate_features(model, shapes["x_val"])[0]))
    state = UncertaintyState(intervals={"ef": IntervalModel.fit(cal["truth"], cal["prediction"],
                                                                output="ef")},
                             calibrator=fit_calibrator(cls["prob_raw"], cls["labels"]),
                             ood=ood)
    path = save_checkpoint(tmp_path / "m.pt", ShapeNet(), {"model": "shape"},
                           InputSpec(task="classification", size=32, channels=1),
                           extra={"other": 1, **state.to_extra()})
    extra = read_checkpoint(path)["extra"]
    assert extra["other"] == 1 and set(extra[EXTRA_KEY]) == {"intervals", "calibrator", "ood"}
    back = UncertaintyState.from_extra(extra)
    assert not back.empty and UncertaintyState.from_extra({}).empty

    n = 5
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)],
                          "ef": test["prediction"][:n], "probability": cls["prob_raw"][:n]})
    x = shapes["x_test"][:n]
    members = np.stack([cls["prob_raw"][:n], cls["prob_raw"][n:2 * n]])
    args = {"features": penultimate_features(model, x)[0], "member_probs": members,
            "clip": {"ef": (0.0, 100.0)}}
    out, expected = back.annotate(table, **args), state.annotate(table, **args)
    assert list(out.columns) == ["sample_id", "ef", "probability", "ef_lo", "ef_hi",
                                 "probability_raw", "disagreement", "ood_score", "ood_flag"]
    pd.testing.assert_frame_equal(out, expected)
    via_json = UncertaintyState.from_dict(json.loads(json.dumps(state.to_dict(json_safe=True))))
    pd.testing.assert_frame_equal(via_json.annotate(table, **args), expected, rtol=1e-5)
    np.testing.assert_allclose(out["probability_raw"], cls["prob_raw"][:n])
    assert out["ood_flag"].dtype == bool
    with pytest.raises(InputError) as err:
        back.annotate(table, features=penultimate_features(model, x[:2])[0])
    assert (err.value.expected, err.value.found) == ("5 rows (one per sample)", "2")


class _Pyramid(torch.nn.Module):
    """An encoder returning a list of maps (deepest last) and a ReLU used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.relu = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.relu(self.conv1(x))
        return [a, self.relu(self.conv2(a))]


class _Segmenter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Pyramid()
        self.head = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


def test_feature_hooks_on_encoders_and_reused_layers():
    torch.manual_seed(0)
    model, x = _Segmenter().eval(), torch.rand(4, 1, 8, 8)
    # relu runs twice per forward: skipped; the head's mask logits come last
    assert last_feature_map(model, x) == "head"
    feats, out = penultimate_features(model, x, "encoder", pool="meanstd")
    with torch.no_grad():
        deepest = model.encoder(x)[-1]
    assert out.shape == (4, 2, 4, 4) and feats.shape == (4, 6)
    torch.testing.assert_close(feats[:, :3], deepest.mean(dim=(2, 3)))
    torch.testing.assert_close(feats[:, 3:], deepest.flatten(2).std(dim=2, unbiased=False))
    with pytest.raises(InputError) as err:
        penultimate_features(model, x)  # no recorded output layer
    assert err.value.field == "output layer"
