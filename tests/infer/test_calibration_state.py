"""`calibrate_or_note`: a fitted summary carries the stored digest; a run that cannot
calibrate removes earlier state and says so; `kept_state` errors say nothing was stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cinelab.errors import InputError
from cinelab.infer.calibration_state import (
    KEPT_FIX,
    STALE_NOTE,
    calibrate_or_note,
    is_current,
    kept_state,
    state_digest,
)


def _state(tmp_path: Path) -> tuple[Path, Callable[[], str | None], Callable[[], None]]:
    file = tmp_path / "state.json"
    return file, lambda: state_digest([file]), lambda: file.unlink()


def test_fitted_summary_records_the_stored_digest(tmp_path: Path) -> None:
    file, stored, clear = _state(tmp_path)

    def fit() -> dict[str, float]:
        file.write_text('{"temperature": 2.0}')
        return {"temperature": 2.0}

    summary = calibrate_or_note(fit, stored, clear)
    assert summary == {"temperature": 2.0, "calibrated": True, "state": stored()}
    assert summary["state"] is not None and is_current(summary, stored)
    file.write_text('{"temperature": 3.0}')  # changed behind the run's back
    assert not is_current(summary, stored)


def test_failed_fit_removes_earlier_state_and_says_so(tmp_path: Path) -> None:
    file, stored, clear = _state(tmp_path)
    file.write_text('{"temperature": 2.0}')

    def fit() -> dict[str, float]:
        exc = InputError("val.csv", "truth", "two classes", "one")
        raise kept_state(exc) from exc

    summary = calibrate_or_note(fit, stored, clear)
    assert summary == {"calibrated": False, "state": None, "note":
                       "not calibrated: val.csv: truth: expected two classes, found one"
                       + STALE_NOTE}
    assert not file.exists() and is_current(summary, stored)


def test_why_not_without_earlier_state(tmp_path: Path) -> None:
    _, stored, clear = _state(tmp_path)
    summary = calibrate_or_note(lambda: pytest.fail("must not fit"), stored, clear,
                                "not calibrated: no 'val' split")
    assert summary == {"calibrated": False, "note": "not calibrated: no 'val' split",
                       "state": None}


def test_kept_state_error_says_nothing_was_stored() -> None:
    err = kept_state(InputError("m.pt", "features", "finite", "NaN"))
    assert str(err) == f"m.pt: features: expected finite, found NaN ({KEPT_FIX})"
