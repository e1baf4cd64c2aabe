"""The persistent job queue of `cinelab serve`: SQLite in WAL mode.

A study goes ``receiving`` (instances still arriving over DICOM) -> ``queued`` -> ``running``
-> ``done`` or ``failed``. Instances are deduplicated by SOPInstanceUID. A worker claims the
oldest queued study atomically (``BEGIN IMMEDIATE``); at start-up, studies left ``running``
by a killed server go back to ``queued`` (or to ``failed`` once their attempts are spent), so
a study accepted is processed to completion exactly once: ``done`` is written only after its
outputs are complete, and ``completions`` counts how often that happened: once per
``version``. An instance arriving for a ``done`` or ``failed`` study re-opens it as a new
version (``receiving`` again); one arriving while it runs marks it ``stale``, and it is
queued again as a new version when that run ends. The per-study instance limit is checked
inside the insert's transaction, so concurrent arrivals cannot overshoot it. Problems found
on arrival (e.g. burned-in annotation) are kept in the study's ``meta["problems"]``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cinelab.errors import CinelabError

RECEIVING, QUEUED, RUNNING, DONE, FAILED = "receiving", "queued", "running", "done", "failed"
STATUSES = (RECEIVING, QUEUED, RUNNING, DONE, FAILED)
DICOM_SOURCE, HTTP_SOURCE = "dicom", "http"
BUSY_TIMEOUT_S = 30.0
LATENCY_WINDOW = 1000  # finished studies the latency quantiles are computed over

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    uid TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0, source TEXT, meta TEXT NOT NULL DEFAULT '{}',
    n_instances INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, last_arrival REAL NOT NULL,
    started REAL, finished REAL, version INTEGER NOT NULL DEFAULT 1,
    stale INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS studies_status ON studies(status, created);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, path TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
"""


#: columns added after the first release: (name, declaration) for older databases
ADDED_COLUMNS = (("version", "INTEGER NOT NULL DEFAULT 1"),
                 ("stale", "INTEGER NOT NULL DEFAULT 0"))
MAX_PROBLEMS = 20


class LimitError(CinelabError):
    """An upload or a study is larger than the configured limits (HTTP 413)."""


@dataclass(frozen=True)
class Study:
    """One row of the studies table."""

    uid: str
    status: str
    reason: str | None
    attempts: int
    completions: int
    source: str | None
    meta: dict[str, Any]
    n_instances: int
    created: float
    last_arrival: float
    started: float | None
    finished: float | None
    version: int = 1
    stale: int = 0

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON-able dict (with latency_s once finished)."""
        out = dict(self.__dict__)
        out["latency_s"] = None if self.finished is None else self.finished - self.created
        return out


class JobQueue:
    """Studies and instances in one SQLite database (WAL); safe across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            _migrate(db)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE), committed or rolled back."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def add_instance(self, study_uid: str, sop_uid: str, path: str, meta: dict[str, Any],
                     source: str, now: float | None = None, limit: int | None = None,
                     problems: list[str] | None = None) -> bool:
        """Record one instance of a study (creating the study as ``receiving``); False when
        that SOPInstanceUID was already there (the duplicate is ignored). A done or failed
        study is re-opened as its next version; a running one is marked stale. LimitError
        (nothing recorded) when the study already holds `limit` instances: checked in the
        same transaction as the insert. `problems` are added to the study's meta."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute("SELECT status, n_instances FROM studies WHERE uid = ?",
                             (study_uid,)).fetchone()
            if db.execute("SELECT 1 FROM instances WHERE sop_uid = ?",
                          (sop_uid,)).fetchone() is not None:
                return False
            if limit is not None and row is not None and row["n_instances"] >= limit:
                raise LimitError(f"study holds the maximum of {limit} instances "
                                 "(limits.instances_per_study)")
            db.execute("INSERT INTO instances VALUES (?, ?, ?, ?)",
                       (sop_uid, study_uid, path, now))
            if row is None:
                db.execute("INSERT INTO studies (uid, status, source, meta, created, "
                           "last_arrival) VALUES (?, ?, ?, ?, ?, ?)",
                           (study_uid, RECEIVING, source, json.dumps(meta), now, now))
            elif row["status"] in (DONE, FAILED):  # a late instance: the next version
                db.execute("UPDATE studies SET status = ?, source = ?, reason = NULL, "
                           "attempts = 0, finished = NULL, version = version + 1 "
                           "WHERE uid = ?", (RECEIVING, source, study_uid))
            elif row["status"] == RUNNING:
                db.execute("UPDATE studies SET stale = 1 WHERE uid = ?", (study_uid,))
            db.execute("UPDATE studies SET n_instances = n_instances + 1, last_arrival = ? "
                       "WHERE uid = ?", (now, study_uid))
            for problem in problems or []:
                _add_problem(db, study_uid, problem)
        return True

    def has_instance(self, sop_uid: str) -> bool:
        """Whether this SOPInstanceUID was already received."""
        with closing(self._connect()) as db:
            return db.execute("SELECT 1 FROM instances WHERE sop_uid = ?",
                              (sop_uid,)).fetchone() is not None

    def enqueue(self, study_uid: str) -> bool:
        """Move a ``receiving`` study to ``queued`` (an upload is complete at once)."""
        with self._transaction() as db:
            return db.execute("UPDATE studies SET status = ? WHERE uid = ? AND status = ?",
                              (QUEUED, study_uid, RECEIVING)).rowcount == 1

    def promote_quiet(self, quiet_s: float, now: float | None = None) -> int:
        """Queue every ``receiving`` DICOM-node study with no instance for `quiet_s`; how many
        moved (an upload's studies are queued by `enqueue` once the whole upload is in)."""
        cutoff = (time.time() if now is None else now) - quiet_s
        with self._transaction() as db:
            return db.execute("UPDATE studies SET status = ? WHERE status = ? AND source = ? "
                              "AND last_arrival <= ?",
                              (QUEUED, RECEIVING, DICOM_SOURCE, cutoff)).rowcount

    def claim(self, now: float | None = None) -> Study | None:
        """Take the oldest queued study (atomically: no two workers get the same one)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute("SELECT uid FROM studies WHERE status = ? ORDER BY created, uid "
                             "LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET status = ?, attempts = attempts + 1, started = ? "
                       "WHERE uid = ?", (RUNNING, now, row["uid"]))
        return self.get(row["uid"])

    def finish(self, uid: str, reason: str | None = None, now: float | None = None) -> None:
        """Mark a running study ``done`` (reason None) or ``failed`` with its reason; a stale
        one (instances arrived while it ran) is queued again as its next version."""
        now = time.time() if now is None else now
        status = DONE if reason is None else FAILED
        with self._transaction() as db:
            db.execute("UPDATE studies SET status = ?, reason = ?, finished = ?, "
                       "completions = completions + ? WHERE uid = ? AND status = ?",
                       (status, reason, now, int(reason is None), uid, RUNNING))
            db.execute("UPDATE studies SET status = ?, stale = 0, attempts = 0, "
                       "finished = NULL, version = version + 1 WHERE uid = ? AND stale = 1 "
                       "AND status = ?", (QUEUED, uid, status))

    def recover(self, max_attempts: int) -> int:
        """At start-up: studies left ``running`` go back to ``queued``, or to ``failed`` when
        they were already tried `max_attempts` times; how many were requeued."""
        with self._transaction() as db:
            db.execute("UPDATE studies SET status = ?, reason = ? WHERE status = ? AND "
                       "attempts >= ?", (FAILED, f"interrupted {max_attempts} time(s) while "
                                         "running", RUNNING, max_attempts))
            return db.execute("UPDATE studies SET status = ? WHERE status = ?",
                              (QUEUED, RUNNING)).rowcount

    def get(self, uid: str) -> Study | None:
        """One study, None when unknown."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM studies WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else _study(row)

    def studies(self, limit: int = 500) -> list[Study]:
        """The newest studies first."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM studies ORDER BY created DESC, uid LIMIT ?",
                              (limit,)).fetchall()
        return [_study(r) for r in rows]

    def instances(self, study_uid: str) -> list[tuple[str, str]]:
        """(SOPInstanceUID, path) of a study's instances, in arrival order."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT sop_uid, path FROM instances WHERE study_uid = ? "
                              "ORDER BY received, sop_uid", (study_uid,)).fetchall()
        return [(r["sop_uid"], r["path"]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of studies per status (every status present, 0 when none)."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT status, COUNT(*) AS n FROM studies GROUP BY status")
            found = {r["status"]: r["n"] for r in rows}
        return {s: int(found.get(s, 0)) for s in STATUSES}

    def latencies(self) -> list[float]:
        """Arrival-to-done seconds of the last LATENCY_WINDOW finished studies."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT finished - created AS s FROM studies WHERE status = ? "
                              "ORDER BY finished DESC LIMIT ?", (DONE, LATENCY_WINDOW))
            return [float(r["s"]) for r in rows]


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns a database made by an older release lacks."""
    have = {r["name"] for r in db.execute("PRAGMA table_info(studies)")}
    for name, declaration in ADDED_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE studies ADD COLUMN {name} {declaration}")


def _add_problem(db: sqlite3.Connection, uid: str, problem: str) -> None:
    """Append `problem` to the study's meta["problems"] (once; at most MAX_PROBLEMS)."""
    row = db.execute("SELECT meta FROM studies WHERE uid = ?", (uid,)).fetchone()
    meta = json.loads(row["meta"] or "{}")
    problems = list(meta.get("problems") or [])
    if problem not in problems and len(problems) < MAX_PROBLEMS:
        meta["problems"] = [*problems, problem]
        db.execute("UPDATE studies SET meta = ? WHERE uid = ?", (json.dumps(meta), uid))


def _study(row: sqlite3.Row) -> Study:
    data = dict(row)
    data["meta"] = json.loads(data["meta"] or "{}")
    return Study(**data)
