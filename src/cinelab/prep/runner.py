"""Run one function over many items: isolated worker processes by default, a Dask cluster on
request, or this process (workers=1).

Results come back as they finish, so callers can report progress and nothing already written
is lost when a run is interrupted.

Worker processes are isolated per task: each has a memory ceiling (RLIMIT_AS: its address
space at start plus `TaskLimits.memory_mb`) and each task a wall-clock `timeout_s`. A task
that runs past its timeout is killed with its worker (a fresh worker takes its place), one
that exhausts its memory gets a MemoryError, and one whose worker dies (a decoder crash) is
reported too: each becomes a failure result through `on_failure(item, error)`, and the run
goes on with the other items. The default `on_failure` turns a task dict that names a
manifest row (prepare) or a sample (flow) into `{"sample_id", "problem"}` - the shape the
preparers return for their own errors - and re-raises for anything else.

Limits come from the `limits` argument, else from $CINELAB_TASK_TIMEOUT_S and
$CINELAB_TASK_MEMORY_MB (0 disables either), else the defaults below. `workers=1` runs in
this process without limits (debugging, tests, GPU work).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from cinelab.errors import CinelabError, InputError, Problem

T = TypeVar("T")
R = TypeVar("R")

TIMEOUT_ENV = "CINELAB_TASK_TIMEOUT_S"
MEMORY_ENV = "CINELAB_TASK_MEMORY_MB"
DEFAULT_TIMEOUT_S = 900.0  # one file's decode + preprocessing; real echo files take seconds
DEFAULT_MEMORY_MB = 8192  # on top of what the worker holds after importing the task code
MB = 1024 * 1024
POLL_S = 1.0
JOIN_S = 5.0


@dataclass(frozen=True)
class TaskLimits:
    """Per-task wall-clock timeout and per-worker memory ceiling (None: no limit)."""

    timeout_s: float | None = DEFAULT_TIMEOUT_S
    memory_mb: int | None = DEFAULT_MEMORY_MB

    @classmethod
    def from_env(cls) -> TaskLimits:
        """Defaults overridden by $CINELAB_TASK_TIMEOUT_S / $CINELAB_TASK_MEMORY_MB."""
        timeout = _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
        memory = _env_number(MEMORY_ENV, DEFAULT_MEMORY_MB)
        return cls(timeout_s=timeout or None, memory_mb=int(memory) if memory else None)


class TaskFailure(CinelabError):
    """A task that did not return: timed out, ran out of memory, crashed or raised."""

    def __init__(self, kind: str, detail: str, limit: str | None = None) -> None:
        self.kind = kind  # "timeout", "memory", "crash" or "error"
        self.detail = detail
        self.limit = limit
        super().__init__(f"{kind}: {detail}")


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise InputError(None, name, "a number (0 disables the limit)", repr(value)) from exc


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_tasks(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
              scheduler: str | None = None, *, limits: TaskLimits | None = None,
              on_failure: Callable[[T, TaskFailure], R] | None = None) -> Iterator[R]:
    """Yield fn(item) for every item, in completion order.

    workers=1 runs in this process; scheduler='tcp://host:port' (or a dask Client) sends the
    work to a Dask distributed cluster (no per-task limits there; a task that raises becomes
    a failure result). Otherwise isolated worker processes apply `limits`.
    """
    items = list(items)
    if not items:
        return
    handler = on_failure or failure_result
    if scheduler is not None:
        yield from _run_dask(fn, items, scheduler, handler)
    elif workers == 1:
        for item in items:
            yield fn(item)
    else:
        yield from _run_isolated(fn, items, min(workers or default_workers(), len(items)),
                                 limits or TaskLimits.from_env(), handler)


def failure_result(item: Any, failure: TaskFailure) -> dict[str, Any]:
    """{"sample_id", "problem"} for a prepare/flow task dict; re-raises for other items."""
    if not isinstance(item, dict):
        raise failure
    row = item.get("row") if isinstance(item.get("row"), dict) else {}
    sample_id = row.get("sample_id", item.get("sample_id"))
    path = str(row.get("path") or item.get("path") or sample_id or "?")
    stage = "prepare" if row else str(item.get("stage", "flow" if "method" in item else "task"))
    expected = {"timeout": f"to finish within {failure.limit}",
                "memory": f"to fit the memory ceiling of {failure.limit}",
                "crash": "a worker that survives decoding",
                "error": "no error"}[failure.kind]
    fix = {"timeout": f"skipped; raise {TIMEOUT_ENV} if the file is genuine",
           "memory": f"skipped; raise {MEMORY_ENV} if the file is genuine"}.get(
               failure.kind, "skipped; the file may be corrupt")
    error = InputError(path, f"worker {failure.kind}", expected, failure.detail, fix)
    return {"sample_id": sample_id, "problem": asdict(Problem.from_exception(path, stage, error))}


# --------------------------------------------------------------------------- isolated pool


class _Worker:
    """One spawned worker process and the task it is running."""

    def __init__(self, ctx: Any, fn: Callable, memory_mb: int | None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, fn, memory_mb),
                                   daemon=True)
        self.process.start()
        child.close()
        self.task: tuple[int, Any] | None = None
        self.started = 0.0

    def submit(self, index: int, item: Any) -> None:
        self.task = (index, item)
        self.started = time.monotonic()
        self.conn.send((index, item))

    def stop(self, kill: bool = False) -> None:
        if kill and self.process.is_alive():
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(JOIN_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(JOIN_S)
        self.conn.close()


def _run_isolated(fn: Callable[[T], R], items: list[T], workers: int, limits: TaskLimits,
                  handler: Callable[[T, TaskFailure], R]) -> Iterator[R]:
    ctx = mp.get_context("spawn")
    pending = deque(enumerate(items))
    pool = [_Worker(ctx, fn, limits.memory_mb) for _ in range(workers)]
    try:
        while pending or any(w.task is not None for w in pool):
            for worker in pool:
                if worker.task is None and pending:
                    worker.submit(*pending.popleft())
            busy = [w for w in pool if w.task is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                         timeout=POLL_S)
            for i, worker in enumerate(pool):
                if worker.task is None:
                    continue
                outcome = _collect(worker, ready, limits)
                if outcome is None:
                    continue
                item = worker.task[1]
                worker.task = None
                ok, value, restart = outcome
                if restart:
                    worker.stop(kill=True)
                    pool[i] = _Worker(ctx, fn, limits.memory_mb)
                yield value if ok else handler(item, value)
    finally:
        for worker in pool:
            worker.stop(kill=worker.task is not None)


def _collect(worker: _Worker, ready: list[Any], limits: TaskLimits
             ) -> tuple[bool, Any, bool] | None:
    """(ok, result or TaskFailure, restart the worker) for a finished task, else None."""
    if worker.conn in ready or worker.conn.poll():
        try:
            _, ok, value = worker.conn.recv()
        except (EOFError, OSError):
            return False, _crash(worker), True
        if ok:
            return True, value, False
        kind, detail = value
        limit = f"{limits.memory_mb} MB" if kind == "memory" else None
        return False, TaskFailure(kind, detail, limit), kind == "memory"
    if worker.process.sentinel in ready or not worker.process.is_alive():
        return False, _crash(worker), True
    elapsed = time.monotonic() - worker.started
    if limits.timeout_s is not None and elapsed > limits.timeout_s:
        return False, TaskFailure("timeout", f"still running after {elapsed:.0f} s (killed)",
                                  f"{limits.timeout_s:g} s"), True
    return None


def _crash(worker: _Worker) -> TaskFailure:
    worker.process.join(JOIN_S)
    code = worker.process.exitcode
    return TaskFailure("crash", f"the worker process died (exit code {code})")


def _worker_main(conn: Connection, fn: Callable, memory_mb: int | None) -> None:
    """Run tasks from `conn` until told to stop; every outcome goes back on `conn`."""
    _limit_threads()
    _limit_memory(memory_mb)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, item = message
        try:
            conn.send((index, True, fn(item)))
            continue
        except MemoryError as exc:
            failure = ("memory", f"MemoryError: {exc}" if str(exc) else "MemoryError")
        except Exception as exc:  # noqa: BLE001 - reported to the parent, never lost
            failure = ("error", f"{type(exc).__name__}: {exc}")
        conn.send((index, False, failure))
        if failure[0] == "memory":
            return  # a worker that ran out of memory is replaced, not reused


def _limit_memory(memory_mb: int | None) -> None:
    """RLIMIT_AS = the address space in use now + memory_mb (never above the hard limit)."""
    if not memory_mb:
        return
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _address_space() + int(memory_mb) * MB
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, OSError, ValueError):
        pass  # not enforceable on this platform: the timeout still applies


def _address_space() -> int:
    """This process's virtual memory size in bytes (0 when unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run_dask(fn: Callable[[T], R], items: list[T], scheduler: Any,
              handler: Callable[[T, TaskFailure], R]) -> Iterator[R]:
    from distributed import Client
    from distributed import as_completed as dask_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = client.map(fn, items, pure=False)
        index = {future.key: item for future, item in zip(futures, items, strict=True)}
        for future in dask_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - one task's error never ends the run
                yield handler(index[future.key], TaskFailure("error",
                                                             f"{type(exc).__name__}: {exc}"))
    finally:
        if client is not scheduler:
            client.close()


def _limit_threads() -> None:
    """Keep each worker process to one thread so N workers use N cores."""
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
