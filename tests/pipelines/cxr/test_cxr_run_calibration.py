"""`cinelab run cxr` calibrates like `cinelab calibrate` (temperature on val, member OOD
detectors on train) and its predictions, run.json and report say so; without a validation
split it says why nothing was fitted."""

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
from cinelab.pipelines.cxr import calibrate as cxr_calibrate
from cinelab.pipelines.cxr.calibrate import cxr_state_digest
from cinelab.pipelines.cxr.ood import read_member_ood
from cinelab.pipelines.cxr.run import CxrSettings, calibrate_step
from cinelab.pipelines.cxr.uncertainty import RAW, read_cxr_state, write_cxr_state
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.report.classification import calibration_lines
from cinelab.utils import read_json

CXR = get_pipeline("cxr")
OPTIONS = Options(n=60, seed=0, recipe="cxr-ensemble-cpu", max_epochs=1, extra={
    "tta": 1, "n_boot": 20, "set": [
        "ensemble.members=[{model: resnet10t, size: 32, crop: uncrop}]",
        "data.batch_size=8"]})


@pytest.mark.slow
def test_run_calibrates_and_records_it(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data, out = CXR.synth(tmp_path / "data", OPTIONS.n, OPTIONS.seed), tmp_path / "out"
    metrics = CXR.run(data, out, OPTIONS)
    cal = read_json(out / "calibration" / "calibration.json")
    assert cal["calibrated"] is True and cal["split"] == "val"
    assert cal["ood"] == "mahalanobis per member" and cal["n_ood_fit"] > 10
    state, ood = read_cxr_state(out / "ensemble"), read_member_ood(out / "ensemble")
    assert state.calibrator.temperature == pytest.approx(cal["temperature"])
    assert ood is not None and ood.threshold == pytest.approx(cal["ood_threshold"])
    for folder in ("predictions", "predictions-val"):
        pred = read_predictions(out / folder)
        assert {RAW, "ood_score", "ood_flag"} <= set(pred.columns)
        assert np.allclose(pred["probability"],
                           state.calibrator.apply(pred[RAW].to_numpy(float)))
        assert np.allclose(pred["ood_flag"].astype(str).str.lower().eq("true"),
                           pred["ood_score"] > ood.threshold)
        run = read_run(out / folder)
        assert run["calibration"]["calibrated"] is True
        assert run["calibration"]["temperature"] == pytest.approx(cal["temperature"])
        assert run["ood"]["features"] == "eager"
    assert metrics["calibrated"] is True
    assert "calibrated on the val split" in (out / "report.html").read_text()
    # a cohort without a validation split: nothing fitted, and calibration.json says why
    manifest = pd.read_csv(out / "manifest.csv")
    manifest[manifest["split"] != "val"].to_csv(tmp_path / "noval.csv", index=False)
    # all or nothing: the OOD fit fails after the temperature -> nothing stored, error says so
    write_cxr_state(out / "ensemble", UncertaintyState(calibrator=TemperatureScaler(7.0)))
    before = cxr_state_digest(out / "ensemble")
    with monkeypatch.context() as patch:
        patch.setattr(cxr_calibrate, "fit_member_ood", _fail)
        with pytest.raises(InputError, match="earlier calibration, if any, is unchanged"):
            cxr_calibrate.calibrate_cxr(out / "ensemble", data, tmp_path / "cal1",
                                        Options(extra={"tta": 1}))
    assert cxr_state_digest(out / "ensemble") == before is not None
    assert read_cxr_state(out / "ensemble").calibrator.temperature == 7.0  # not refitted
    # a run that cannot calibrate removes the earlier state, so predict applies none
    summary = calibrate_step(out / "ensemble", tmp_path / "noval.csv", None,
                             tmp_path / "cal2", CxrSettings(tta=1))
    assert summary["calibrated"] is False and "'val'" in summary["note"]
    assert STALE_NOTE in summary["note"] and summary["state"] is None
    assert read_json(tmp_path / "cal2" / "calibration.json") == summary
    assert cxr_state_digest(out / "ensemble") is None
    assert read_member_ood(out / "ensemble") is None
    assert read_cxr_state(out / "ensemble").calibrator is None
    # rerunning the run sees its recorded state gone: it calibrates again and its
    # predictions, run.json and the stored state agree
    CXR.run(data, out, OPTIONS)
    again = read_json(out / "calibration" / "calibration.json")
    assert again["calibrated"] is True and again["state"] == cxr_state_digest(out / "ensemble")
    state = read_cxr_state(out / "ensemble")
    pred = read_predictions(out / "predictions")
    assert np.allclose(pred["probability"], state.calibrator.apply(pred[RAW].to_numpy(float)))
    assert read_run(out / "predictions")["calibration"]["state"] == again["state"]


def _fail(*args: object, **kwargs: object) -> None:
    raise InputError(None, "training features", "an invertible covariance", "singular")


def test_report_lines_say_whether_calibrated() -> None:
    assert calibration_lines({}) == []
    note = "not calibrated: split: expected rows with split 'val'"
    assert calibration_lines({"calibration": {"calibrated": False, "note": note}}) == [note]
    line = calibration_lines({"calibration": {
        "calibrated": True, "split": "val", "temperature": 1.5, "ece_before": 0.2,
        "ece_after": 0.05, "ood": "mahalanobis per member"}})
    assert line == ["calibrated on the val split: temperature 1.500, ECE 0.200 -> 0.050; "
                    "OOD flag: mahalanobis per member"]
