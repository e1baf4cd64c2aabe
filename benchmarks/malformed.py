"""Run the malformed-input corpus and print counts per outcome.

    python benchmarks/malformed.py [--no-sweep] [--verbose]

Three parts, each with zero tracebacks, zero hangs and zero silently wrong outputs expected:
1. the generated corpus (tests/hardening/corpus.py: special files, tables, videos, DICOM,
   NIfTI, HDF5, tracings), the pipeline-level cases (tests/hardening/pipeline_cases.py: a
   bad file inside a small EchoNet / cine MRI / CXR cohort, through the pipeline's own
   reader or preparer), plus real EchoNet AVIs truncated at 10/50/90 % when
   ../shared/data/real is present - each case in a temporary folder, 30 s limit per case;
2. runner limits: a hanging, a memory-exploding, a crashing and a raising task beside good
   ones (prep.runner isolated workers: timeout 5 s, memory ceiling 512 MB);
3. the DICOM sweep: every file pydicom ships locally, each in an isolated worker (60 s).
Exit status 1 when any case is a traceback, a hang or silently wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "hardening"))

from corpus import (  # noqa: E402
    CLEAR,
    DICOM_LIMIT,
    HANG,
    OUTCOMES,
    READ,
    SKIP,
    TRACEBACK,
    WRONG,
    Outcome,
    build_corpus,
    real_truncation_cases,
    run_case,
)
from pipeline_cases import pipeline_cases  # noqa: E402
from sweep import local_paths, sweep_failure, sweep_one  # noqa: E402
from tasks import behave  # noqa: E402

from cinelab.io.dicom import MAX_BYTES_ENV  # noqa: E402
from cinelab.prep.runner import TaskLimits, run_tasks  # noqa: E402

RUNNER_KINDS = {"ok": READ, "hang": SKIP, "memory": SKIP, "crash": SKIP, "raise": SKIP}


def corpus_outcomes(root: Path) -> list[Outcome]:
    os.environ[MAX_BYTES_ENV] = str(DICOM_LIMIT)
    try:
        cases = build_corpus() + pipeline_cases() + real_truncation_cases()
        return [run_case(c, root / c.name) for c in cases]
    finally:
        os.environ.pop(MAX_BYTES_ENV, None)


def runner_outcomes() -> list[Outcome]:
    items = [{"row": {"sample_id": f"{k}{i}", "path": f"{k}{i}"}, "kind": k}
             for i, k in enumerate([*RUNNER_KINDS, "ok"])]
    out = []
    for result in run_tasks(behave, items, workers=2,
                            limits=TaskLimits(timeout_s=5.0, memory_mb=512)):
        sid = result["sample_id"]
        expected = RUNNER_KINDS[sid.rstrip("0123456789")]
        got = SKIP if "problem" in result else READ
        detail = result.get("problem", {}).get("error", "ok")
        out.append(Outcome(f"runner_{sid}", "runner", got if got == expected else WRONG, detail))
    return out


def sweep_outcomes() -> list[Outcome]:
    rows = run_tasks(sweep_one, local_paths(), workers=2, on_failure=sweep_failure,
                     limits=TaskLimits(timeout_s=60.0, memory_mb=4096))
    names = {"read": READ, "reported": CLEAR, "hang": HANG, "traceback": TRACEBACK}
    return [Outcome(f"pydicom:{Path(r['path']).name}", "pydicom", names[r["outcome"]],
                    r["detail"]) for r in rows]


def report(title: str, outcomes: list[Outcome], seconds: float, verbose: bool) -> Counter:
    counts = Counter(o.outcome for o in outcomes)
    print(f"\n{title}: {len(outcomes)} inputs in {seconds:.1f} s")
    for name in OUTCOMES:
        print(f"  {name:<15} {counts[name]:>4}")
    for o in outcomes:
        if verbose or not o.ok:
            print(f"    [{o.outcome}] {o.name}: {o.detail[:160]}")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-sweep", action="store_true", help="skip the pydicom sweep")
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args()
    total: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        total += report("corpus", corpus_outcomes(Path(tmp)), time.monotonic() - start,
                        args.verbose)
    start = time.monotonic()
    total += report("runner limits", runner_outcomes(), time.monotonic() - start, args.verbose)
    if not args.no_sweep:
        start = time.monotonic()
        total += report("pydicom sweep", sweep_outcomes(), time.monotonic() - start,
                        args.verbose)
    print("\nall: " + ", ".join(f"{name} {total[name]}" for name in OUTCOMES))
    return 1 if total[TRACEBACK] or total[HANG] or total[WRONG] else 0


if __name__ == "__main__":
    sys.exit(main())
