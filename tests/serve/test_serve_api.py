"""The HTTP API: token, limits, upload -> processed -> results, downloads, metrics."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from serve_fixtures import TOKEN, noise_avi, us_dicom

from cinelab.serve.api import create_app
from cinelab.serve.node import start_node
from cinelab.serve.queue import DONE, FAILED

AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 60.0


def _client(service: Any) -> TestClient:
    return TestClient(create_app(service))


def _wait(client: TestClient, uid: str, status: str = DONE) -> dict[str, Any]:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        study = client.get(f"/api/studies/{uid}", headers=AUTH).json()
        if study["status"] in (DONE, FAILED):
            assert study["status"] == status, study["reason"]
            return study
        time.sleep(0.1)
    raise AssertionError(f"study not finished after {WAIT_S} s")


def _upload(client: TestClient, *files: tuple[str, bytes], **data: str) -> Any:
    return client.post("/api/studies", headers=AUTH, data=data,
                       files=[("files", (name, body)) for name, body in files])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-xxxxxxxx"},
                                     {"Authorization": TOKEN}])
def test_token_required(service_factory: Any, headers: dict) -> None:
    client = _client(service_factory(start=False))
    for path in ("/api/studies", "/metrics", "/api/studies/1.2/results"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/studies", headers=headers,
                       files=[("files", ("a.avi", b"x"))]).status_code == 401
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_follows_the_workers(service_factory: Any) -> None:
    service = service_factory(start=False)
    client = _client(service)
    assert client.get("/ready").status_code == 503
    service.start(node=False)
    assert client.get("/ready").status_code == 503  # the DICOM node is enabled but down
    service.node = start_node(service.config.dicom, service.arrival)
    assert service.dicom_port and client.get("/ready").json() == {"ready": True}


def test_upload_over_the_limit_is_413(service_factory: Any) -> None:
    service = service_factory(start=False, limits={"upload_bytes": 1000,
                                                   "instances_per_study": 3})
    client = _client(service)
    assert _upload(client, ("big.avi", b"\0" * 2000)).status_code == 413
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as archive:
        for i in range(5):
            archive.writestr(f"{i}.dcm", b"x")
    assert _upload(client, ("study.zip", many.getvalue())).status_code == 413
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.avi", b"\0" * 100_000)
    assert len(bomb.getvalue()) < 1000
    assert _upload(client, ("bomb.zip", bomb.getvalue())).status_code == 413
    assert service.queue.studies() == []
    assert _upload(client, ("notes.txt", b"hello")).status_code == 422
    assert _upload(client, ("a.avi", b"x"), modality="<script>").status_code == 422


def test_upload_processed_results_with_ef(service_factory: Any, tmp_path: Path) -> None:
    client = _client(service_factory())
    response = _upload(client, ("clip.avi", noise_avi(tmp_path / "clip.avi").read_bytes()))
    assert response.status_code == 202
    [uid] = response.json()["studies"]
    study = _wait(client, uid)
    assert study["meta"]["modality"] == "US" and study["completions"] == 1
    results = client.get(f"/api/studies/{uid}/results", headers=AUTH).json()
    [row] = results["models"]["echonet"]["predictions"]
    assert 0 <= row["ef"] <= 100 and row["n_frames"] == 24
    csv = client.get(f"/api/studies/{uid}/files/echonet/predictions.csv", headers=AUTH)
    table = pd.read_csv(io.StringIO(csv.text))
    assert table["ef"].iloc[0] == pytest.approx(row["ef"])
    overlays = [f for f in results["files"] if f.endswith(".png")]
    png = client.get(f"/api/studies/{uid}/files/{overlays[0]}", headers=AUTH)
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    [webm] = [f for f in results["files"] if f.endswith(".webm")]
    video = client.get(f"/api/studies/{uid}/files/{webm}", headers=AUTH)
    assert video.headers["content-type"] == "video/webm"
    assert video.content[:4] == b"\x1a\x45\xdf\xa3" and b"webm" in video.content[:64]
    assert client.get(f"/api/studies/{uid}/files/{webm}").status_code == 401
    assert client.get(f"/api/studies/{uid}/files/../queue.db", headers=AUTH).status_code \
        == 404
    assert client.get("/api/studies/9.9.9", headers=AUTH).status_code == 404


@pytest.mark.slow
def test_zip_of_dicoms_and_a_failing_study(service_factory: Any, tmp_path: Path) -> None:
    client = _client(service_factory())
    study = "1.2.826.0.1.3680043.8.498.1"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(2):
            us_dicom(tmp_path / f"{i}.dcm", study=study, seed=i)
            z.write(tmp_path / f"{i}.dcm", f"../../evil/{i}.dcm")  # names are never paths
    bad = _upload(client, ("xray.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64))
    good = _upload(client, ("study.zip", archive.getvalue()))
    assert good.json()["studies"] == [study]
    failed = _wait(client, bad.json()["studies"][0], FAILED)
    assert "no route for modality CR" in failed["reason"]
    done = _wait(client, study)
    assert done["n_instances"] == 2
    assert len(done["results"]["models"]["echonet"]["predictions"]) == 2
    assert not (tmp_path.parent / "evil").exists()
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'cinelab_studies{status="done"} 1' in metrics
    assert "cinelab_failures_total 1" in metrics and "cinelab_queue_length 0" in metrics
    assert 'cinelab_study_latency_seconds{quantile="0.95"}' in metrics
