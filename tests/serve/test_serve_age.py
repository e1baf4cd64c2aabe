"""The age route end to end: a long-axis MR study (3- and 4-chamber cines) sent over DICOM,
pseudonymised with its SeriesDescription cleaned to its view words (the shipped example's
regex), is routed to the age model by its series description (a short-axis rule behind it),
and the SR that comes back holds the age and its interval equal to the model's
predictions.csv, read back with highdicom; a short-axis study on a content-checked [cmr, age]
route keeps cmr and reports age as rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from serve_fixtures import (
    QUICK_DICOM,
    VIEW_WORDS,
    cine_features,
    cine_study,
    send_instances,
    stats_cmr,
    tiny_age,
    tiny_cmr,
    wait_done,
)

from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.serve.arrival import clean_description
from cinelab.serve.content import FLAGGED, NO_RESULT
from cinelab.serve.sr import read_sr_measurements

LAX_RULE = "(?i)lax|[234] ?ch"
AGE = "Age estimated from imaging"


@pytest.fixture(scope="module")
def lax(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny age cv folder, synthetic long-axis cohort it was trained on)."""
    root = tmp_path_factory.mktemp("serve_age")
    cohort = synth_cmr_lax_cohort(root / "cohort", n=8, seed=1, size=32).root
    return tiny_age(root / "run", cohort), cohort


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*person name")
@pytest.mark.filterwarnings("ignore:.*calibration examples")
def test_long_axis_study_gets_age_with_interval_in_sr(service_factory: Any,
                                                      lax: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    cv, cohort = lax
    service = service_factory(node=True, models={
        "age": str(cv), "cmr": {"path": str(tiny_cmr(tmp_path / "cmr")), "pipeline": "cmr"}},
        routes=[{"modality": "MR", "series_description": LAX_RULE, "models": ["age"]},
                {"modality": "MR", "models": ["cmr"]}], dicom=QUICK_DICOM,
        pseudonymise={"enabled": True, "series_description": VIEW_WORDS})
    sent = [pydicom.dcmread(p) for p in sorted((cohort / "dicom" / "S0001").rglob("*.dcm"))]
    assert len({d.SeriesDescription for d in sent}) == 2
    assert set(send_instances(service.dicom_port, MRImageStorage, *sent)) == {0}
    [queued] = service.queue.studies()
    study = wait_done(service, queued.uid)
    stored = {str(pydicom.dcmread(p).SeriesDescription)
              for p in service.paths.incoming(study.uid).glob("*.dcm")}
    assert stored == {clean_description(str(d.SeriesDescription), VIEW_WORDS) for d in sent}
    folder = service.paths.results(study.uid)
    results = json.loads((folder / "results.json").read_text())
    assert list(results["models"]) == ["age"]
    table = pd.read_csv(folder / "age" / "predictions.csv", dtype={"sample_id": str})
    [row] = table.to_dict("records")
    assert row["age_lo"] <= row["age"] <= row["age_hi"]
    assert pd.notna(row["age_3ch"]) and pd.notna(row["age_4ch"])  # both views were used
    measured = read_sr_measurements(folder / "sr.dcm")[f"age:{row['sample_id']}"]
    assert measured == pytest.approx({AGE: row["age"],
                                      f"{AGE} lower interval bound": row["age_lo"],
                                      f"{AGE} upper interval bound": row["age_hi"]})
    sr = hd.sr.srread(str(folder / "sr.dcm"))
    assert sr.StudyInstanceUID == study.uid and str(sr.PatientID).startswith("P")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*person name")
@pytest.mark.filterwarnings("ignore:.*calibration examples")
def test_short_axis_study_on_cmr_or_age_route_keeps_cmr(service_factory: Any,
                                                       lax: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    cv, _ = lax
    probe = stats_cmr(tmp_path / "probe", np.zeros(2), 1e9)
    features = cine_features(probe, cine_study(tmp_path / "synth"), tmp_path / "features")
    service = service_factory(node=True, models={
        "age": str(cv), "cmr": {"path": str(stats_cmr(tmp_path / "cmr", features, 0.5)),
                                "pipeline": "cmr"}},
        routes=[{"modality": "MR", "models": ["cmr", "age"], "content_check": True}],
        dicom=QUICK_DICOM)
    sent = cine_study(tmp_path / "synth2")
    assert set(send_instances(service.dicom_port, MRImageStorage, *sent)) == {0}
    study = wait_done(service, str(sent[0].StudyInstanceUID))
    results = json.loads((service.paths.results(study.uid) / "results.json").read_text())
    assert results["selection"]["chosen"] == ["cmr"]
    age = results["models"]["age"]
    assert age["status"] in (FLAGGED, NO_RESULT) and age["predictions"] == []
    assert results["selection"]["rejected"]["age"]["reason"] == age["reason"]
    assert set(read_sr_measurements(service.paths.results(study.uid) / "sr.dcm")) == \
        {f"cmr:{study.uid}"}
