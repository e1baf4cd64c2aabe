"""One bundle of a checkpoint's uncertainty state, and the one call that adds its columns.

At training time::

    state = UncertaintyState(intervals={"ef": IntervalModel.fit(y_cal, p_cal, output="ef")},
                             calibrator=fit_calibrator(p_val, y_val, "temperature"),
                             ood=detector)          # MahalanobisDetector / EnergyDetector
    save_checkpoint(path, model, recipe, spec, extra={**extra, **state.to_extra()})

At prediction time::

    state = UncertaintyState.from_extra(read_checkpoint(path)["extra"])
    table = state.annotate(table, features=feats, logits=logits, member_probs=members,
                           coverage=0.9, clip={"ef": (0, 100)})

which adds ``<output>_lo`` / ``<output>_hi``, ``probability`` (calibrated) with
``probability_raw``, ``disagreement``, ``ood_score`` / ``ood_flag`` (where it has the parts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.infer.calibration import Calibrator, calibrator_from_dict, member_disagreement
from cinelab.infer.intervals import IntervalModel, add_interval_columns
from cinelab.infer.ood import EnergyDetector, OODDetector, ood_from_dict

EXTRA_KEY = "uncertainty"


@dataclass
class UncertaintyState:
    """Interval models per output, a probability calibrator and an OOD detector (each
    optional)."""

    intervals: dict[str, IntervalModel] = field(default_factory=dict)
    calibrator: Calibrator | None = None
    ood: OODDetector | None = None

    def to_dict(self, json_safe: bool = False) -> dict[str, Any]:
        """Dict of floats, strings, lists and CPU tensors that survives torch's weights-only
        load (`read_checkpoint`); only lists with `json_safe` (e.g. an export sidecar)."""
        return {"intervals": {k: m.to_dict() for k, m in self.intervals.items()},
                "calibrator": None if self.calibrator is None else self.calibrator.to_dict(),
                "ood": None if self.ood is None else self.ood.to_dict(json_safe)}

    def to_extra(self) -> dict[str, Any]:
        """``{"uncertainty": to_dict()}`` to merge into a checkpoint's ``extra``."""
        return {EXTRA_KEY: self.to_dict()}

    @classmethod
    def from_dict(cls, state: dict[str, Any] | None) -> UncertaintyState:
        """Rebuild from `to_dict` output (None gives an empty state)."""
        if state is None:
            return cls()
        if not isinstance(state, dict):
            raise InputError(None, "uncertainty state", "a dict", type(state).__name__)
        cal, ood = state.get("calibrator"), state.get("ood")
        return cls(intervals={k: IntervalModel.from_dict(v)
                              for k, v in (state.get("intervals") or {}).items()},
                   calibrator=None if cal is None else calibrator_from_dict(cal),
                   ood=None if ood is None else ood_from_dict(ood))

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> UncertaintyState:
        """The state stored in a checkpoint's ``extra`` (empty when it has none)."""
        return cls.from_dict((extra or {}).get(EXTRA_KEY))

    @property
    def empty(self) -> bool:
        """True when there is nothing to apply."""
        return not self.intervals and self.calibrator is None and self.ood is None

    def annotate(self, table: pd.DataFrame, *, features: Any = None, logits: Any = None,
                 member_probs: Any = None, coverage: float | None = None,
                 clip: dict[str, tuple[float | None, float | None]] | None = None,
                 sigma_columns: dict[str, str] | None = None,
                 probability_column: str = "probability") -> pd.DataFrame:
        """A copy of `table` (rows in the order of `features` / `logits` / `member_probs`
        columns) with the uncertainty columns this state can give."""
        out = add_interval_columns(table, self.intervals, coverage=coverage, clip=clip,
                                   sigma_columns=sigma_columns)
        if self.calibrator is not None and probability_column in out.columns:
            raw = out[probability_column].to_numpy(float)
            out[f"{probability_column}_raw"] = raw
            out[probability_column] = self.calibrator.apply(raw)
        if member_probs is not None:
            members = np.asarray(member_probs, float)
            out["disagreement"] = member_disagreement(members)["std"]
        if self.ood is not None:
            source = logits if isinstance(self.ood, EnergyDetector) else features
            if source is not None:
                scores = self.ood.score(source)
                if len(scores) != len(out):
                    raise InputError(None, "ood features", f"{len(out)} rows (one per sample)",
                                     str(len(scores)))
                out["ood_score"] = scores
                out["ood_flag"] = self.ood.flag(scores)
        return out
