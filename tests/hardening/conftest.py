"""Fixtures for the hardening tests: the malformed-input corpus, generated per session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpus import DICOM_LIMIT, Outcome, build_corpus, real_truncation_cases, run_case  # noqa: E402

from cinelab.io.dicom import MAX_BYTES_ENV  # noqa: E402


@pytest.fixture(scope="session")
def corpus_outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every corpus case built in a fresh folder and run once: name -> outcome.

    The DICOM byte limit is lowered to DICOM_LIMIT meanwhile, so that bombs stay small.
    """
    root = tmp_path_factory.mktemp("corpus")
    old = os.environ.get(MAX_BYTES_ENV)
    os.environ[MAX_BYTES_ENV] = str(DICOM_LIMIT)
    try:
        yield {case.name: run_case(case, root / case.name) for case in build_corpus()}
    finally:
        if old is None:
            os.environ.pop(MAX_BYTES_ENV, None)
        else:
            os.environ[MAX_BYTES_ENV] = old


@pytest.fixture
def real_cases() -> list:
    """Real EchoNet truncation cases, or skip when the real samples are absent."""
    cases = real_truncation_cases()
    if not cases:
        pytest.skip("../shared/data/real/echonet-mini is absent (never copied into the repo)")
    return cases
