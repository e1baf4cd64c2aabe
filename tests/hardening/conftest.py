"""Fixtures for the hardening tests: the malformed-input corpus, generated per session.

Test modules elsewhere do `from conftest import real_path`; with pytest's prepend import mode
the name `conftest` may resolve to this module once it is loaded, so the root conftest's
helpers are re-exported here (loaded from its file, unchanged).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from corpus import DICOM_LIMIT, Outcome, build_corpus, real_truncation_cases, run_case

from cinelab.io.dicom import MAX_BYTES_ENV

_spec = importlib.util.spec_from_file_location(
    "cinelab_tests_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
assert _spec is not None and _spec.loader is not None
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
ROOT, REAL, real_path = _root.ROOT, _root.REAL, _root.real_path


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
