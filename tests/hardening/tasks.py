"""Module-level task functions for the runner tests (spawned workers import them by name)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def behave(item: dict[str, Any]) -> dict[str, Any]:
    """Do what item["kind"] says: return, hang, exhaust memory, crash or raise."""
    kind = item["kind"]
    if kind == "hang":
        time.sleep(3600)
    elif kind == "memory":
        np.ones(4 * 1024**3, dtype=np.uint8)  # 4 GiB, past a 512 MB ceiling
    elif kind == "crash":
        os.abort()
    elif kind == "raise":
        raise ValueError("boom")
    return {"sample_id": item["row"]["sample_id"], "meta": {"pid": os.getpid()}}


def sleep_for(seconds: float) -> float:
    """Sleep, then return the seconds (a plain, non-dict item)."""
    time.sleep(seconds)
    return seconds
