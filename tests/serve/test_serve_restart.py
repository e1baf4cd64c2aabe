"""Exactly once across crashes: a study interrupted while running is requeued and done once;
half-written outputs are discarded; finished-but-unmarked outputs are not redone; and (slow)
a real `cinelab serve` process SIGKILLed with studies queued finishes each exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from serve_fixtures import TOKEN, config_dict, noise_avi

from cinelab.serve.queue import DONE, QUEUED, RUNNING, JobQueue
from cinelab.serve.worker import RESULTS_JSON

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[2]
N_STUDIES = 6
START_S, RUN_S = 240.0, 240.0


def _upload_avis(service: Any, tmp_path: Path, n: int) -> list[str]:
    uids = []
    for i in range(n):
        path = noise_avi(tmp_path / f"clip{i}.avi", seed=i)
        uids += service.arrival.accept_files([path], None, tmp_path)
    return uids


def test_interrupted_study_is_done_exactly_once(service_factory: Any, tmp_path: Path) -> None:
    first = service_factory(start=False)
    a, b = _upload_avis(first, tmp_path, 2)
    claimed = first.queue.claim()  # the server dies while this one runs ...
    partial = first.paths.partial(claimed.uid)
    (partial / "echonet").mkdir(parents=True)
    (partial / "echonet" / "predictions.csv").write_text("half")  # ... half written
    assert first.queue.get(claimed.uid).status == RUNNING
    second = service_factory(start=False)  # the restart
    assert not partial.exists() and second.queue.get(claimed.uid).status == QUEUED
    while second.worker.step():
        pass
    for uid in (a, b):
        study = second.queue.get(uid)
        assert study.status == DONE and study.completions == 1 and study.attempts >= 1
        assert (second.paths.results(uid) / RESULTS_JSON).is_file()
    assert second.queue.get(claimed.uid).attempts == 2


def test_finished_outputs_are_not_redone(service_factory: Any, tmp_path: Path) -> None:
    service = service_factory(start=False)
    [uid] = _upload_avis(service, tmp_path, 1)
    study = service.queue.claim()
    final = service.worker.produce(study)  # outputs renamed into place, then a crash
    stamp = (final / RESULTS_JSON).stat().st_mtime_ns
    again = service_factory(start=False)
    assert again.queue.get(uid).status == QUEUED
    assert again.worker.step()
    assert (final / RESULTS_JSON).stat().st_mtime_ns == stamp
    assert again.queue.get(uid).completions == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cinelab.cli", "serve", str(config)],
                            cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_ready(client: httpx.Client, proc: subprocess.Popen) -> None:
    deadline = time.time() + START_S
    while time.time() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError("server not ready in time")


def _statuses(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {s["uid"]: s for s in client.get("/api/studies", headers=AUTH).json()}


@pytest.mark.slow
def test_sigkill_and_restart(echonet_model: Path, tmp_path: Path) -> None:
    port = _free_port()
    raw = config_dict(tmp_path / "state", echonet_model, http={"port": port},
                      dicom={"port": _free_port(), "quiet_seconds": 0.5})
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(raw))
    log = tmp_path / "server.log"
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    proc = _start(config, log)
    try:
        _wait_ready(client, proc)
        uids = []
        for i in range(N_STUDIES):
            body = noise_avi(tmp_path / f"c{i}.avi", seed=i).read_bytes()
            uids += client.post("/api/studies", headers=AUTH,
                                files=[("files", (f"c{i}.avi", body))]).json()["studies"]
        deadline = time.time() + RUN_S
        while not any(s["status"] == DONE for s in _statuses(client).values()):
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        counts = JobQueue(tmp_path / "state" / "queue.db").counts()  # as the kill left it
        assert counts[QUEUED] + counts[RUNNING] > 0, "all done before the kill: nothing tested"
        proc = _start(config, log)
        _wait_ready(client, proc)
        deadline = time.time() + RUN_S
        while any(s["status"] != DONE for s in _statuses(client).values()):
            assert time.time() < deadline, _statuses(client)
            time.sleep(0.2)
        studies = _statuses(client)
        assert sorted(studies) == sorted(uids)
        assert all(s["completions"] == 1 for s in studies.values())
        results = tmp_path / "state" / "results"
        assert sorted(p.name for p in results.iterdir()) == \
            sorted(uids + [f"{u}.v1" for u in uids])  # no partial left: links + version 1
        assert all((results / u).resolve() == results / f"{u}.v1" for u in uids)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
