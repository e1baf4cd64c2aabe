"""prep.runner: a hanging, memory-exploding or crashing task becomes a problem row and the
run goes on; the good tasks' results come back unchanged."""

from __future__ import annotations

import time

import pytest
from tasks import behave, sleep_for

from cinelab.prep.runner import MEMORY_ENV, TIMEOUT_ENV, TaskFailure, TaskLimits, run_tasks

KINDS = ("ok", "hang", "memory", "crash", "raise", "ok")


def _items() -> list[dict]:
    return [{"row": {"sample_id": f"{k}{i}", "path": f"/data/{k}{i}.avi"}, "kind": k}
            for i, k in enumerate(KINDS)]


@pytest.mark.slow
def test_bad_tasks_become_problem_rows_and_the_run_goes_on() -> None:
    start = time.monotonic()
    results = {r["sample_id"]: r for r in run_tasks(
        behave, _items(), workers=2, limits=TaskLimits(timeout_s=4.0, memory_mb=512))}
    assert time.monotonic() - start < 60
    assert sorted(results) == ["crash3", "hang1", "memory2", "ok0", "ok5", "raise4"]
    assert "meta" in results["ok0"] and "meta" in results["ok5"]
    problems = {sid: r["problem"] for sid, r in results.items() if "problem" in r}
    assert {sid: p["column"] for sid, p in problems.items()} == {
        "hang1": "worker timeout", "memory2": "worker memory", "crash3": "worker crash",
        "raise4": "worker error"}
    assert problems["hang1"]["file"] == "/data/hang1.avi"
    assert problems["hang1"]["stage"] == "prepare"
    assert problems["hang1"]["expected"] == "to finish within 4 s"
    assert problems["hang1"]["found"].startswith("still running after ")
    assert problems["memory2"]["expected"] == "to fit the memory ceiling of 512 MB"
    assert problems["memory2"]["found"].startswith("MemoryError")
    assert problems["crash3"]["found"] == "the worker process died (exit code -6)"
    assert problems["raise4"]["found"] == "ValueError: boom"


def test_in_process_and_isolated_give_the_same_good_results() -> None:
    items = [{"row": {"sample_id": f"s{i}", "path": "p"}, "kind": "ok"} for i in range(3)]
    inline = sorted(r["sample_id"] for r in run_tasks(behave, items, workers=1))
    isolated = sorted(r["sample_id"] for r in run_tasks(behave, items, workers=2))
    assert inline == isolated == ["s0", "s1", "s2"]


def test_items_that_are_not_tasks_reraise_the_failure() -> None:
    with pytest.raises(TaskFailure, match="timeout"):
        list(run_tasks(sleep_for, [60.0], workers=2,
                       limits=TaskLimits(timeout_s=1.0, memory_mb=None)))


def test_limits_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "12.5")
    monkeypatch.setenv(MEMORY_ENV, "0")
    assert TaskLimits.from_env() == TaskLimits(timeout_s=12.5, memory_mb=None)
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(Exception, match=TIMEOUT_ENV):
        TaskLimits.from_env()


def test_dask_path_turns_a_raising_task_into_a_problem_row() -> None:
    distributed = pytest.importorskip("distributed")
    items = [{"row": {"sample_id": s, "path": f"/d/{s}"}, "kind": k}
             for s, k in (("a", "ok"), ("b", "raise"))]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        results = {r["sample_id"]: r for r in run_tasks(behave, items, scheduler=client)}
    assert "meta" in results["a"]
    assert results["b"]["problem"]["column"] == "worker error"
    assert results["b"]["problem"]["found"] == "ValueError: boom"
