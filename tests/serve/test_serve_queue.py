"""The SQLite job queue: dedup, quiet-time promotion, atomic claims, recovery, failures."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from cinelab.serve.queue import DONE, FAILED, QUEUED, RECEIVING, RUNNING, JobQueue

META = {"modality": "US"}


def test_instances_deduplicated_and_quiet_promotion(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.db")
    assert queue.add_instance("1.2", "1.2.1", "a", META, "dicom", now=100.0)
    assert not queue.add_instance("1.2", "1.2.1", "a", META, "dicom", now=101.0)
    assert queue.add_instance("1.2", "1.2.2", "b", META, "dicom", now=102.0)
    assert queue.get("1.2").n_instances == 2 and queue.get("1.2").status == RECEIVING
    assert queue.promote_quiet(5.0, now=106.0) == 0  # last arrival 102: not quiet yet
    assert queue.promote_quiet(5.0, now=107.0) == 1
    assert queue.get("1.2").status == QUEUED
    assert [p for _, p in queue.instances("1.2")] == ["a", "b"]


def test_claims_are_atomic_across_threads(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.db")
    for i in range(30):
        queue.add_instance(f"9.{i}", f"9.{i}.1", "x", META, "http", now=float(i))
        queue.enqueue(f"9.{i}")
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all() -> None:
        while (study := queue.claim()) is not None:
            with lock:
                claimed.append(study.uid)
            queue.finish(study.uid)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"9.{i}" for i in range(30))  # each exactly once
    assert queue.counts()[DONE] == 30
    assert all(s.completions == 1 for s in queue.studies())


def test_recover_requeues_then_gives_up(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.db")
    queue.add_instance("5.1", "5.1.1", "x", META, "http")
    queue.enqueue("5.1")
    assert queue.claim().status == RUNNING
    reopened = JobQueue(tmp_path / "q.db")  # a restart after a kill
    assert reopened.recover(max_attempts=2) == 1 and reopened.get("5.1").status == QUEUED
    reopened.claim()
    assert JobQueue(tmp_path / "q.db").recover(max_attempts=2) == 0
    study = reopened.get("5.1")
    assert study.status == FAILED and "interrupted" in study.reason


def test_failure_recorded_and_queue_moves_on(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.db")
    for i, uid in enumerate(("7.1", "7.2")):
        queue.add_instance(uid, uid + ".1", "x", META, "http", now=float(i))
        queue.enqueue(uid)
    first = queue.claim()
    queue.finish(first.uid, reason="ServeError: no route")
    second = queue.claim()
    assert (first.uid, second.uid) == ("7.1", "7.2")
    assert queue.get("7.1").reason == "ServeError: no route"
    assert queue.get("7.1").completions == 0
    assert queue.counts()[FAILED] == 1 and queue.latencies() == []


def test_older_database_gains_version_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db:  # the first release's studies table
        db.execute("CREATE TABLE studies (uid TEXT PRIMARY KEY, status TEXT NOT NULL, "
                   "reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, completions INTEGER "
                   "NOT NULL DEFAULT 0, source TEXT, meta TEXT NOT NULL DEFAULT '{}', "
                   "n_instances INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, "
                   "last_arrival REAL NOT NULL, started REAL, finished REAL)")
        db.execute("INSERT INTO studies (uid, status, completions, n_instances, created, "
                   "last_arrival) VALUES ('1.5', 'done', 1, 1, 1.0, 1.0)")
        db.commit()
    queue = JobQueue(path)
    assert (queue.get("1.5").version, queue.get("1.5").stale) == (1, 0)
    queue.add_instance("1.5", "1.5.2", "b", META, "dicom")
    assert (queue.get("1.5").status, queue.get("1.5").version) == (RECEIVING, 2)
