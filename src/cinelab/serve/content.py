"""Routing by image content: which of a route's candidate models a study is kept for.

Every pipeline's predictions may carry ``ood_score`` / ``ood_flag`` (the uncertainty work's
out-of-distribution check: is this the kind of image the model was trained on). On a route
with ``content_check: true`` every listed model runs and each one's result gets a
``status``:

* ``chosen``: it predicted and none of its rows is flagged (rows that are flagged while
  others are not are moved to ``flagged`` and left out of the SR and SEGs);
* ``not this kind of image``: every row is flagged (``flagged`` lists sample and score);
* ``unchecked``: it predicted but gives no ``ood_flag`` (kept: nothing says it is wrong);
* ``no result``: it failed or predicted nothing (``reason``).

The study fails (`ContentError`, one line with every model's score) when no model is kept.
Nothing here knows a pipeline: only the ``ood_flag`` / ``ood_score`` columns.
"""

from __future__ import annotations

import math
from typing import Any

from cinelab.errors import CinelabError

OOD_FLAG, OOD_SCORE = "ood_flag", "ood_score"
CHOSEN, FLAGGED, UNCHECKED, NO_RESULT = ("chosen", "not this kind of image", "unchecked",
                                         "no result")
KEPT = (CHOSEN, UNCHECKED)
TRUE_TEXT = {"true", "1", "yes"}
FALSE_TEXT = {"false", "0", "no"}


class ContentError(CinelabError):
    """No candidate model of a content-checked route accepts the study's images."""


def is_flagged(value: Any) -> bool:
    """Whether an ``ood_flag`` cell flags its row; an empty or unreadable one does (no
    score means nothing vouches for the image)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return math.isnan(value) or value != 0
    text = str(value).strip().lower() if value is not None else ""
    return text not in FALSE_TEXT


def judge(result: dict[str, Any]) -> dict[str, Any]:
    """`result` (pipeline, predictions, problems) with ``status``, ``flagged`` and
    ``reason`` set; flagged rows moved out of ``predictions``."""
    rows = list(result.get("predictions") or [])
    if not rows:
        reason = result.get("reason") or "no prediction (see problems)"
        return {**result, "status": NO_RESULT, "flagged": [], "reason": reason}
    if not any(OOD_FLAG in row for row in rows):
        return {**result, "status": UNCHECKED, "flagged": [],
                "reason": f"the model gives no {OOD_FLAG}: kept unchecked"}
    flagged = [r for r in rows if is_flagged(r.get(OOD_FLAG))]
    kept = [r for r in rows if not is_flagged(r.get(OOD_FLAG))]
    marks = [{"sample_id": r.get("sample_id"), OOD_SCORE: r.get(OOD_SCORE)} for r in flagged]
    if not kept:
        return {**result, "predictions": [], "status": FLAGGED, "flagged": marks,
                "reason": f"{FLAGGED} ({OOD_SCORE} {_scores(marks)})"}
    reason = f"{OOD_FLAG} false for {len(kept)} sample(s)"
    if marks:
        reason += f"; {len(marks)} flagged ({OOD_SCORE} {_scores(marks)})"
    return {**result, "predictions": kept, "status": CHOSEN, "flagged": marks,
            "reason": reason}


def _scores(marks: list[dict[str, Any]]) -> str:
    """The flagged rows' scores, e.g. ``12.3`` or ``12.3, 9.1``."""
    values = [m.get(OOD_SCORE) for m in marks]
    return ", ".join("?" if not isinstance(v, int | float) else f"{v:.3g}" for v in values)


def select(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The selection of a content-checked route: chosen and rejected model names with each
    one's status and reason; ContentError when none is kept."""
    chosen = [n for n, r in summary.items() if r["status"] in KEPT]
    rejected = {n: {"status": r["status"], "reason": r["reason"]}
                for n, r in summary.items() if r["status"] not in KEPT}
    if not chosen:
        detail = "; ".join(f"{n}: {r['reason']}" for n, r in rejected.items())
        raise ContentError(f"no model of the route accepts these images ({detail})")
    return {"content_check": True, "chosen": chosen, "rejected": rejected,
            "reason": "; ".join(f"{n}: {summary[n]['reason']}" for n in chosen)}
