"""`cinelab rvf run` calibrates after training (issue 15 follow-up): with a validation split
it fits the temperature and the OOD detector as `cinelab calibrate` does, so the test
predictions carry the calibrated probability (raw kept), ood_score / ood_flag, and evaluate /
report show ECE before and after; without one, calibration.json, run.json, predictions.csv,
metrics.json and the report all say the probabilities are not calibrated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.infer.calibration import TemperatureScaler
from cinelab.infer.calibration_state import STALE_NOTE
from cinelab.infer.contract import read_predictions, read_run
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf import calibrate as rvf_calibrate
from cinelab.pipelines.rvf.calibrate import rvf_state_digest
from cinelab.pipelines.rvf.run import RvfPaths, run_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.pipelines.rvf.uncertainty import read_rvf_state, write_rvf_state
from cinelab.utils import mark_done, read_json

TINY = ["data.size=32", "data.frames=4", "data.period=2", "data.batch_size=4", "data.clips=2",
        "model.kwargs.backbone_kwargs={channels: [4, 8]}"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_rvf_cohort(tmp_path_factory.mktemp("rvf_runcal") / "raw", n=12, seed=4,
                            size=40, frames=10)


def _options(**extra: object) -> Options:
    """One tiny epoch; the train videos are evaluated (the tiny test split lacks a class)."""
    return Options(max_epochs=1, split="train",
                   extra={"set": TINY, "top": 0, "n_boot": 20, "workers": 1, **extra})


@pytest.mark.slow
def test_run_calibrates_on_validation(raw: Path, tmp_path: Path) -> None:
    metrics = run_rvf(raw, tmp_path / "out", _options())
    paths = RvfPaths(tmp_path / "out")
    summary = read_json(paths.calibration / "calibration.json")
    assert summary["calibrated"] is True and summary["split"] == "val"
    state = read_rvf_state(paths.run / "model.pt")  # stored where predict finds it
    assert state.calibrator is not None and state.ood is not None
    assert summary["temperature"] == pytest.approx(state.calibrator.temperature)
    pred = read_predictions(paths.predictions)
    assert {"probability_raw", "ood_score", "ood_flag"} <= set(pred.columns)
    assert pred["calibrated"].astype(str).str.lower().eq("true").all()
    expected = state.calibrator.apply(pred["probability_raw"].to_numpy(float))
    assert np.allclose(pred["probability"].to_numpy(float), expected, atol=1e-6)
    recorded = read_run(paths.predictions)["calibration"]
    assert recorded["calibrated"] is True
    assert recorded["ece_before"] == pytest.approx(summary["ece_before"])
    assert recorded["ece_after"] == pytest.approx(summary["ece_after"])
    assert metrics["calibrated"] is True
    assert metrics["val_ece_before"] == pytest.approx(summary["ece_before"])
    assert metrics["val_ece_after"] == pytest.approx(summary["ece_after"])
    assert {"ece", "ece_raw", "ood_flagged"} <= set(metrics["uncertainty"])
    html = Path(metrics["report"]).read_text()
    assert "Calibrated probabilities" in html and "val_ece_before" in html
    # another temperature stored after the run: the rerun sees the state changed, refits,
    # and its predictions and run.json agree with the state predict reads
    write_rvf_state(paths.run / "model.pt", UncertaintyState(calibrator=TemperatureScaler(9.0)))
    mark_done(paths.run, ["model.pt"])  # the training stays done: only the state changed
    run_rvf(raw, tmp_path / "out", _options())
    again = read_json(paths.calibration / "calibration.json")
    state = read_rvf_state(paths.run / "model.pt")
    assert again["calibrated"] is True and again["state"] == rvf_state_digest(paths.run)
    assert state.calibrator.temperature == pytest.approx(again["temperature"]) != 9.0
    pred = read_predictions(paths.predictions)
    assert np.allclose(pred["probability"].to_numpy(float), state.calibrator.apply(
        pred["probability_raw"].to_numpy(float)), atol=1e-6)
    assert read_run(paths.predictions)["calibration"]["state"] == again["state"]


@pytest.mark.slow
def test_run_without_validation_says_so(raw: Path, tmp_path: Path) -> None:
    splits = pd.read_csv(raw / "splits.csv", dtype=str)
    splits["split"] = splits["split"].replace({"val": "train"})
    assert "val" not in set(splits["split"])
    splits.to_csv(tmp_path / "no_val.csv", index=False)
    metrics = run_rvf(raw, tmp_path / "out", _options(splits=tmp_path / "no_val.csv"))
    paths = RvfPaths(tmp_path / "out")
    summary = read_json(paths.calibration / "calibration.json")
    assert summary["calibrated"] is False and "no 'val' split" in summary["note"]
    assert read_rvf_state(paths.run / "model.pt").calibrator is None
    pred = read_predictions(paths.predictions)
    assert pred["calibrated"].astype(str).str.lower().eq("false").all()
    assert not {"probability_raw", "ood_score", "ood_flag"} & set(pred.columns)
    assert read_run(paths.predictions)["calibration"] == {"calibrated": False,
                                                          "note": summary["note"],
                                                          "state": None}
    assert metrics["calibrated"] is False and metrics["calibration_note"] == summary["note"]
    # state stored later (e.g. `cinelab calibrate` elsewhere) would make predict disagree
    # with what the run recorded: the rerun cannot calibrate, so it removes it and says so
    write_rvf_state(paths.run / "model.pt", UncertaintyState(calibrator=TemperatureScaler(2.0)))
    mark_done(paths.run, ["model.pt"])  # the training stays done: only the state changed
    run_rvf(raw, tmp_path / "out", _options(splits=tmp_path / "no_val.csv"))
    again = read_json(paths.calibration / "calibration.json")
    assert again["calibrated"] is False and STALE_NOTE in again["note"]
    assert read_rvf_state(paths.run / "model.pt").empty
    assert read_run(paths.predictions)["calibration"]["note"] == again["note"]
    assert "probability_raw" not in read_predictions(paths.predictions).columns
    assert "NOT calibrated" in Path(metrics["report"]).read_text()


@pytest.mark.slow
def test_ensemble_run_calibrates_its_members(raw: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = run_rvf(raw, tmp_path / "out", _options(members=2))
    paths = RvfPaths(tmp_path / "out")
    summary = read_json(paths.calibration / "calibration.json")
    assert summary["calibrated"] is True and len(summary["ood_thresholds"]) == 2
    assert read_rvf_state(paths.run).calibrator is not None  # in ensemble.json
    pred = read_predictions(paths.predictions)
    assert {"probability_raw", "disagreement", "ood_score", "ood_flag"} <= set(pred.columns)
    assert read_run(paths.predictions)["calibration"]["ood_thresholds"] == \
        pytest.approx(summary["ood_thresholds"])
    assert metrics["val_ece_after"] == pytest.approx(summary["ece_after"])
    # all or nothing: the second member's OOD fit fails -> nothing stored, the error says so
    rvf_calibrate.clear_rvf_calibration(paths.run)
    assert rvf_state_digest(paths.run) is None
    fit = rvf_calibrate.fit_detector
    calls: list[int] = []

    def second_fails(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise InputError(None, "features", "a covariance", "singular")
        return fit(*args, **kwargs)

    monkeypatch.setattr(rvf_calibrate, "fit_detector", second_fails)
    with pytest.raises(InputError, match="earlier calibration, if any, is unchanged"):
        rvf_calibrate.calibrate_rvf(paths.run, paths.store, tmp_path / "cal2", _options())
    assert len(calls) == 2 and rvf_state_digest(paths.run) is None  # member 0 not stored
