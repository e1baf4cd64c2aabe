"""Kept result versions of a re-opened study: listed in the study JSON and downloadable by
version, with the same token and nothing outside that version's folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serve_fixtures import TOKEN, us_dicom

from cinelab.serve.api import create_app
from cinelab.serve.queue import DONE, FAILED

AUTH = {"Authorization": f"Bearer {TOKEN}"}
UID = "1.2.826.0.1.3680043.8.498.5151"
WAIT_S = 90.0


def _wait_version(client: TestClient, uid: str, version: int) -> dict[str, Any]:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        study = client.get(f"/api/studies/{uid}", headers=AUTH).json()
        if study["version"] == version and study["status"] in (DONE, FAILED):
            assert study["status"] == DONE, study["reason"]
            return study
        time.sleep(0.1)
    raise AssertionError(f"version {version} not finished after {WAIT_S} s")


def _send(client: TestClient, path: Path) -> None:
    response = client.post("/api/studies", headers=AUTH,
                           files=[("files", (path.name, path.read_bytes()))])
    assert response.status_code == 202 and response.json()["studies"] == [UID]


def test_version_download_needs_the_token(service_factory: Any) -> None:
    client = TestClient(create_app(service_factory(start=False)))
    for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxx"}):
        response = client.get(f"/api/studies/{UID}/versions/1/files/results.json",
                              headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.get(f"/api/studies/{UID}/versions/1/files/results.json",
                      headers=AUTH).status_code == 404  # no such study


@pytest.mark.slow
def test_reopened_study_lists_and_serves_its_old_version(service_factory: Any,
                                                         tmp_path: Path) -> None:
    service = service_factory()
    client = TestClient(create_app(service))
    first, late = (us_dicom(tmp_path / f"{i}.dcm", study=UID, seed=i) for i in range(2))
    _send(client, tmp_path / "0.dcm")
    one = _wait_version(client, UID, 1)
    assert [(v["version"], v["status"], v["current"]) for v in one["versions"]] == \
        [(1, DONE, True)]
    _send(client, tmp_path / "1.dcm")  # a late instance re-opens it as version 2
    two = _wait_version(client, UID, 2)
    assert [(v["version"], v["status"], v["current"]) for v in two["versions"]] == \
        [(1, DONE, False), (2, DONE, True)]
    assert two["versions"][0]["finished"] <= two["versions"][1]["finished"]
    old = client.get(f"/api/studies/{UID}/versions/1/files/results.json", headers=AUTH)
    assert old.status_code == 200 and old.json()["version"] == 1
    assert [r["sample_id"] for r in old.json()["models"]["echonet"]["predictions"]] == \
        [str(first.SOPInstanceUID)]
    csv = client.get(f"/api/studies/{UID}/versions/1/files/echonet/predictions.csv",
                     headers=AUTH)
    assert csv.status_code == 200 and str(late.SOPInstanceUID) not in csv.text
    new = client.get(f"/api/studies/{UID}/versions/2/files/results.json", headers=AUTH)
    assert new.json()["version"] == 2 == two["results"]["version"]
    # nothing outside the version's folder: the other version, the state, links out
    v1 = service.paths.version(UID, 1)
    (v1 / "escape.json").symlink_to(service.paths.version(UID, 2) / "results.json")
    for name in ("..%2F" + f"{UID}.v2/results.json", "%2E%2E/%2E%2E/queue.db",
                 "escape.json", "echonet", "no-such.csv"):
        response = client.get(f"/api/studies/{UID}/versions/1/files/{name}", headers=AUTH)
        assert response.status_code == 404, name
    for version in ("3", "-1", "0", "x"):
        response = client.get(f"/api/studies/{UID}/versions/{version}/files/results.json",
                              headers=AUTH)
        assert response.status_code in (404, 422), version
    assert json.loads((v1 / "results.json").read_text())["version"] == 1
