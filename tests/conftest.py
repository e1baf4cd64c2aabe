"""Shared fixtures: the real public samples (skipped when absent) and small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("CINELAB_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))


#: torch's intra-op threads when the session starts (OMP_NUM_THREADS under `make test`);
#: every test starts from it, whatever a test module set at import or a test before it.
BASE_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def same_threads_for_every_test() -> None:
    """Reset torch's thread count before each test (results depend on it, e.g. the
    bit-identical resume tests that compare in-process and subprocess training)."""
    torch.set_num_threads(BASE_THREADS)


def real_path(*parts: str) -> Path:
    """A folder under ../shared/data/real, or skip the test with a reason when absent."""
    path = REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample folder {path} is absent (it lives beside the project in "
                    "../shared/data/real and is never copied into the repository)")
    return path


@pytest.fixture
def real_data() -> Path:
    """Root of the real samples."""
    return real_path()
