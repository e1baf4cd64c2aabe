"""`cinelab cxr predict` and `cinelab predict` are one code path (issue 15 follow-up): on the
same calibrated ensemble (temperature + member OOD detectors from `cinelab calibrate`) they
write the same predictions.csv (calibrated probability, raw kept, member disagreement,
ood_score / ood_flag) and run.json, list the one bad file in problems.csv and exit 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cxr_predict import make_ensemble
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.pipelines.cxr.ood import read_member_ood
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.pipelines.cxr.uncertainty import read_cxr_state
from cinelab.pipelines.registry import Options, get_pipeline

runner = CliRunner()


def _invoke(args: list[object]) -> int:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.output + repr(result.exception)
    return result.exit_code


@pytest.mark.slow
def test_cxr_predict_equals_generic_predict_on_a_calibrated_ensemble(tmp_path: Path) -> None:
    raw = synth_cxr_cohort(tmp_path / "raw", n=40, size=64, seed=1)
    ens = make_ensemble(tmp_path / "ens", lung=False)
    masks = {"masks": "files"}
    summary = get_pipeline("cxr").calibrate(ens, raw, tmp_path / "cal", Options(extra=masks))
    assert summary["ood"] == "mahalanobis per member"
    state, ood = read_cxr_state(ens), read_member_ood(ens)
    assert state.calibrator is not None and ood is not None
    source = tmp_path / "input"
    shutil.copytree(raw / "Test", source)
    (source / "Positive" / "bad.png").write_bytes(b"")  # one unreadable file
    pipeline_out, generic_out = tmp_path / "cxr_pred", tmp_path / "generic_pred"
    assert _invoke(["cxr", "predict", ens, source, "--out", pipeline_out,
                    "--masks", "files"]) == 3
    assert _invoke(["predict", ens, source, "--out", generic_out,
                    "--option", "masks=files"]) == 3
    assert (pipeline_out / "predictions.csv").read_text() == \
        (generic_out / "predictions.csv").read_text()
    table = pd.read_csv(pipeline_out / "predictions.csv", dtype={"sample_id": str})
    n_good = len(list((raw / "Test").rglob("P*.png"))) - len(list((raw / "Test").rglob(
        "masks/*.png")))
    assert len(table) == n_good
    assert {"probability_raw", "disagreement", "ood_score", "ood_flag"} <= set(table.columns)
    np.testing.assert_allclose(table["probability"],
                               state.calibrator.apply(table["probability_raw"].to_numpy()),
                               rtol=1e-6)
    members = table[[c for c in table.columns if c.startswith("probability_")
                     and c != "probability_raw"]].to_numpy(float)
    np.testing.assert_allclose(table["disagreement"], members.std(axis=1), rtol=1e-5,
                               atol=1e-9)
    problems = pd.read_csv(pipeline_out / "problems.csv")
    assert len(problems) == 1 and problems["file"].iloc[0].endswith("bad.png")
    runs = [json.loads((out / "run.json").read_text()) for out in (pipeline_out,
                                                                   generic_out)]
    for run in runs:
        run.pop("timings")
    assert runs[0] == runs[1] and runs[0]["n_problems"] == 1
