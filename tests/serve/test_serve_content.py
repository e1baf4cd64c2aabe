"""Routing by image content: a route listing two MR models with ``content_check`` keeps the
one whose OOD check accepts the study (its SR, SEGs and JSON), reports the other as "not this
kind of image" with its score, and fails a noise study naming every model's score; and every
path of the CMR results.json is relative and downloadable with the token."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from serve_fixtures import (
    QUICK_DICOM,
    TOKEN,
    WAIT_S,
    cine_features,
    cine_study,
    send_instances,
    stats_cmr,
    wait_done,
)

from cinelab.serve.api import create_app
from cinelab.serve.content import CHOSEN, FLAGGED, NO_RESULT, UNCHECKED, is_flagged, judge
from cinelab.serve.queue import FAILED
from cinelab.serve.sr import read_sr_measurements

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LAX_SHIFT = 3.0  # the stand-in long-axis model's training features: SAX + 3 in both


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`cmr` whose detector is centred on the short-axis study's features (threshold 0.5),
    and `lax` (a long-axis model stand-in) centred 3 + 3 away from them."""
    root = tmp_path_factory.mktemp("serve_content")
    probe = stats_cmr(root / "probe", np.zeros(2), 1e9)
    sax = cine_features(probe, cine_study(root / "synth"), root / "features")
    return {"cmr": stats_cmr(root / "cmr", sax, 0.5),
            "lax": stats_cmr(root / "lax", sax + LAX_SHIFT, 0.5)}


def _service(service_factory: Any, models: dict[str, Path]) -> Any:
    return service_factory(node=True, models={
        name: {"path": str(path), "pipeline": "cmr"} for name, path in models.items()},
        routes=[{"modality": "MR", "models": ["lax", "cmr"], "content_check": True}],
        dicom=QUICK_DICOM)


def test_judge_reads_only_the_flag_column() -> None:
    rows = [{"sample_id": "a", "ood_flag": False, "ood_score": 1.0},
            {"sample_id": "b", "ood_flag": "True", "ood_score": 9.0}]
    mixed = judge({"predictions": rows})
    assert mixed["status"] == CHOSEN and [r["sample_id"] for r in mixed["predictions"]] == ["a"]
    assert mixed["flagged"] == [{"sample_id": "b", "ood_score": 9.0}]
    assert judge({"predictions": rows[1:]})["status"] == FLAGGED
    assert judge({"predictions": [{"sample_id": "a", "ef": 50.0}]})["status"] == UNCHECKED
    assert judge({"predictions": [], "reason": "InputError: x"})["reason"] == "InputError: x"
    assert judge({"predictions": []})["status"] == NO_RESULT
    assert [is_flagged(v) for v in (False, "false", 0, True, 1.0, float("nan"), None)] == \
        [False, False, False, True, True, True, True]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*person name")
def test_short_axis_study_keeps_cmr_and_reports_the_other(service_factory: Any,
                                                          models: dict[str, Path],
                                                          tmp_path: Path) -> None:
    service = _service(service_factory, models)
    sent = cine_study(tmp_path / "synth")
    assert set(send_instances(service.dicom_port, MRImageStorage, *sent)) == {0}
    study = wait_done(service, str(sent[0].StudyInstanceUID))
    client = TestClient(create_app(service))
    body = client.get(f"/api/studies/{study.uid}", headers=AUTH).json()
    results = body["results"]
    assert results["selection"]["chosen"] == ["cmr"]
    assert results["selection"]["rejected"]["lax"]["status"] == FLAGGED
    lax, cmr = results["models"]["lax"], results["models"]["cmr"]
    assert lax["status"] == FLAGGED and lax["predictions"] == []
    [mark] = lax["flagged"]
    assert mark["ood_score"] == pytest.approx(LAX_SHIFT * np.sqrt(2), abs=1e-3)
    assert f"{mark['ood_score']:.3g}" in lax["reason"]
    [row] = cmr["predictions"]
    assert cmr["status"] == CHOSEN and row["ood_flag"] is False and row["ood_score"] < 0.5
    folder = service.paths.results(study.uid)
    assert set(read_sr_measurements(folder / "sr.dcm")) == {f"cmr:{study.uid}"}
    assert not [f for f in results["files"] if "-lax-" in f]  # no SEG of the rejected model
    _paths_are_relative_and_downloadable(client, study.uid, results)


def _paths_are_relative_and_downloadable(client: TestClient, uid: str,
                                         results: dict[str, Any]) -> None:
    """Every string naming a file of the results is relative and served with the token."""
    paths = [v for m in results["models"].values() for r in m["predictions"] for k, v in
             r.items() if k.endswith("path") or k in ("source", "file")]
    paths += [p["file"] for m in results["models"].values() for p in m["problems"]]
    assert paths and all(p is None or not p.startswith("/") for p in paths)
    for path in filter(None, paths):
        url = f"/api/studies/{uid}/files/{path}"
        assert client.get(url).status_code == 401
        got = client.get(url, headers=AUTH)
        assert got.status_code == 200 and len(got.content) > 0, path


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*person name")
def test_noise_study_fails_naming_every_models_score(service_factory: Any,
                                                     models: dict[str, Path],
                                                     tmp_path: Path) -> None:
    service = _service(service_factory, models)
    sent = cine_study(tmp_path / "synth", noise=True)
    assert set(send_instances(service.dicom_port, MRImageStorage, *sent)) == {0}
    uid = str(sent[0].StudyInstanceUID)
    deadline = time.time() + WAIT_S
    while (study := service.queue.get(uid)) is None or study.status != FAILED:
        assert time.time() < deadline and (study is None or study.status != "done")
        time.sleep(0.1)
    assert study.reason.startswith("ContentError: no model of the route accepts these images")
    assert "lax: not this kind of image (ood_score" in study.reason
    assert "cmr: not this kind of image (ood_score" in study.reason
