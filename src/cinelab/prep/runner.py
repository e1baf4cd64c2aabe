"""Run one function over many items: a local process pool by default, a Dask cluster on request.

Results come back as they finish, so callers can report progress and nothing already written
is lost when a run is interrupted.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_tasks(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
              scheduler: str | None = None) -> Iterator[R]:
    """Yield fn(item) for every item, in completion order.

    workers=1 runs in this process; scheduler='tcp://host:port' (or a dask Client) sends the
    work to a Dask distributed cluster.
    """
    items = list(items)
    if not items:
        return
    if scheduler is not None:
        yield from _run_dask(fn, items, scheduler)
    elif (workers or default_workers()) <= 1 or len(items) == 1:
        for item in items:
            yield fn(item)
    else:
        yield from _run_pool(fn, items, workers or default_workers())


def _run_pool(fn: Callable[[T], R], items: list[T], workers: int) -> Iterator[R]:
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx,
                             initializer=_limit_threads) as pool:
        futures = [pool.submit(fn, item) for item in items]
        for future in as_completed(futures):
            yield future.result()


def _run_dask(fn: Callable[[T], R], items: list[T], scheduler: Any) -> Iterator[R]:
    from distributed import Client
    from distributed import as_completed as dask_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = client.map(fn, items, pure=False)
        for future in dask_completed(futures):
            yield future.result()
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
