"""Every DICOM file pydicom ships (locally, never downloaded) either reads or is reported with
a reason: zero tracebacks, zero hangs (each file in an isolated worker with a time limit)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sweep import local_paths, sweep_failure, sweep_one

from cinelab.prep.runner import TaskLimits, run_tasks

PER_FILE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def sweep_rows() -> dict[str, dict[str, str]]:
    paths = local_paths()
    if not paths:
        pytest.skip("this pydicom ships no local test files")
    rows = run_tasks(sweep_one, paths, workers=2, on_failure=sweep_failure,
                     limits=TaskLimits(timeout_s=PER_FILE_TIMEOUT_S, memory_mb=4096))
    return {Path(r["path"]).name: r for r in rows}


@pytest.mark.slow
def test_every_file_reads_or_is_reported(sweep_rows: dict) -> None:
    counts = Counter(r["outcome"] for r in sweep_rows.values())
    bad = {n: r["detail"] for n, r in sweep_rows.items()
           if r["outcome"] not in ("read", "reported")}
    assert bad == {}
    assert counts["traceback"] == counts["hang"] == 0
    assert counts["read"] + counts["reported"] == len(sweep_rows) >= 100
    assert counts["read"] >= 80  # the images pydicom's decoders handle here
    assert all(r["detail"] for r in sweep_rows.values())


@pytest.mark.parametrize(("name", "outcome", "field"), [
    ("MR_truncated.dcm", "reported", "[NumberOfFrames]"),
    ("badVR.dcm", "reported", "[NumberOfFrames]"),
    ("rtplan.dcm", "reported", "[PixelData]"),
    ("no_meta.dcm", "reported", "[file]"),
    ("JPGExtended.dcm", "read", ""),  # an EOI followed by a 0xFF fill byte is complete
    ("SC_rgb_jpeg_dcmtk.dcm", "read", ""),
    ("SC_rgb_rle_2frame.dcm", "read", ""),
    ("JPEG2000.dcm", "read", ""),
])
def test_known_files(name: str, outcome: str, field: str, sweep_rows: dict) -> None:
    if name not in sweep_rows:
        pytest.skip(f"{name} is not shipped with this pydicom")
    row = sweep_rows[name]
    assert row["outcome"] == outcome, row["detail"]
    assert row["detail"].startswith(field), row["detail"]
