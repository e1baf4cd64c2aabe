"""Calibration state that predictions can trust: fitted all-or-nothing, recorded by digest.

A pipeline's run calls `calibrate_or_note` with three callables: ``fit`` (computes every
part first and writes the state only at its end, so a failure leaves the earlier state as it
was), ``stored`` (a digest of the state files predict will read, None when there is none)
and ``clear`` (removes that state). The summary's ``state`` is that digest: a step is still
current only while the stored state has it (`is_current`), so what a run records is what its
predict uses. A run that cannot calibrate removes earlier state rather than let predict apply
a temperature or detectors fitted on other data, and says so in ``note``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cinelab.errors import InputError
from cinelab.utils import file_hash

KEPT_FIX = "nothing was stored: the model's earlier calibration, if any, is unchanged"
STALE_NOTE = ("; the state of an earlier calibration was removed, so predictions are "
              "uncalibrated and have no OOD flag")


def state_digest(files: Sequence[Path]) -> str | None:
    """One digest of the state files that exist (None when none does)."""
    present = [Path(f) for f in files if Path(f).is_file()]
    if not present:
        return None
    h = hashlib.sha256()
    for path in present:
        h.update(f"{path.name}:{file_hash(path)};".encode())
    return h.hexdigest()[:16]


def kept_state(exc: InputError) -> InputError:
    """`exc` saying that the failed calibration stored nothing (raise it ``from exc``)."""
    return InputError(exc.path, exc.field, exc.expected, exc.found, fix=KEPT_FIX)


def calibrate_or_note(fit: Callable[[], dict[str, Any]], stored: Callable[[], str | None],
                      clear: Callable[[], None], why_not: str | None = None
                      ) -> dict[str, Any]:
    """``fit()`` with ``calibrated``: true and ``state`` (the stored digest); else (`why_not`
    given, or an InputError from fitting) ``calibrated``: false, ``note`` and ``state``: None,
    earlier state removed by ``clear()`` and the note saying so."""
    note = why_not
    if note is None:
        try:
            return {**fit(), "calibrated": True, "state": stored()}
        except InputError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, InputError) else exc
            note = f"not calibrated: {cause}"
    if stored() is not None:
        clear()
        note += STALE_NOTE
    return {"calibrated": False, "note": note, "state": None}


def is_current(summary: dict[str, Any], stored: Callable[[], str | None]) -> bool:
    """True when the state stored now is the one `summary` recorded."""
    return "state" in summary and summary["state"] == stored()
