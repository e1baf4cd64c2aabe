"""Pipeline-level malformed inputs (issue 12): each bad file inside a small cohort, run
through the pipeline's own reader/preparer, has its stated outcome (a clear error, or a
problem row with the good samples kept); none is a traceback, hang or silently wrong."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from corpus import CLEAR, SKIP, run_case
from pipeline_cases import pipeline_cases

CASES = {case.name: case for case in pipeline_cases()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pipeline_case_has_its_stated_outcome(name: str, tmp_path: Path) -> None:
    outcome = run_case(CASES[name], tmp_path / name)
    assert outcome.outcome == CASES[name].expect, outcome.detail


def test_pipeline_case_counts() -> None:
    counts = Counter(case.expect for case in CASES.values())
    assert (counts[CLEAR], counts[SKIP]) == (3, 7)
    assert {case.kind for case in CASES.values()} == {"pipeline"}
