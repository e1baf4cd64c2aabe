"""`cinelab calibrate` for CMR: predict a labelled split training never saw, compare its
volumes with the truth (`evaluate_cmr`), fit split-conformal intervals of EDV/ESV/EF
(`uncertainty`) and store them in the checkpoint's ``extra``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.cmr.evaluate import evaluate_cmr
from cinelab.pipelines.cmr.pipeline import MODEL_NAME, predict
from cinelab.pipelines.cmr.uncertainty import fit_cmr_intervals
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import update_checkpoint_extra
from cinelab.utils import write_json

CALIBRATION_SPLIT = "val"
CALIBRATION_JSON = "calibration.json"


def calibrate_cmr(model: Path, data: Path, out: Path, options: Options) -> dict[str, Any]:
    """Fit and store the intervals (options: split, default val, "" for every labelled
    sample; device, batch_size; extra ``coverage``, default 0.9); returns calibration.json's
    content."""
    out = Path(out)
    split = CALIBRATION_SPLIT if options.split is None else options.split  # "": every sample
    pred = predict(model, data, out / "predictions",
                   Options(split=split or None, device=options.device,
                           batch_size=options.batch_size))
    result = evaluate_cmr({MODEL_NAME: pred}, Path(data), out / "evaluation")
    models = fit_cmr_intervals(result.volumes, float(options.get("coverage", 0.9)))
    update_checkpoint_extra(model, UncertaintyState(intervals=models).to_extra())
    summary = {"pipeline": "cmr", "checkpoint": str(model), "data": str(data), "split": split,
               "n_calibration": {k: m.n for k, m in models.items()},
               "half_width": {k: (m.half_width() if math.isfinite(m.half_width()) else None)
                              for k, m in models.items()},
               "coverage": float(options.get("coverage", 0.9))}
    write_json(out / CALIBRATION_JSON, summary)
    return summary
