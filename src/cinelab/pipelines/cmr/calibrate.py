"""`cinelab calibrate` for CMR: predict a labelled split training never saw, compare its
volumes with the truth (`evaluate_cmr`), fit split-conformal intervals of EDV/ESV/EF
(`uncertainty`) and an OOD detector on the U-Net's bottleneck features (`ood`: fitted on
the training split, threshold from the calibration split) and store them in the
checkpoint's ``extra``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.infer.ood import MahalanobisDetector
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.cmr.evaluate import evaluate_cmr
from cinelab.pipelines.cmr.ood import fit_cmr_ood
from cinelab.pipelines.cmr.pipeline import MODEL_NAME, predict
from cinelab.pipelines.cmr.predict import STORE_DIR
from cinelab.pipelines.cmr.uncertainty import fit_cmr_intervals
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import load_checkpoint, update_checkpoint_extra
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
    ood = _fit_ood(model, Path(data), out, split)
    update_checkpoint_extra(model, UncertaintyState(intervals=models, ood=ood).to_extra())
    summary = {"pipeline": "cmr", "checkpoint": str(model), "data": str(data), "split": split,
               "n_calibration": {k: m.n for k, m in models.items()},
               "half_width": {k: (m.half_width() if math.isfinite(m.half_width()) else None)
                              for k, m in models.items()},
               "coverage": float(options.get("coverage", 0.9)),
               "ood": None if ood is None else {"threshold": ood.threshold,
                                                "module": ood.module, **ood.info}}
    write_json(out / CALIBRATION_JSON, summary)
    return summary


def _fit_ood(model: Path, data: Path, out: Path, split: str) -> MahalanobisDetector | None:
    """The OOD detector: fitted on the store's train split (every sample when the data has
    no train split or is a raw folder), threshold from the calibration split; None with
    fewer than 2 training stacks or a model without feature maps (nothing to hook)."""
    store = PreparedStore(data) if (data / "store.json").is_file() else \
        PreparedStore(out / "predictions" / STORE_DIR)
    calibration = store.split_ids(split) if split else store.ids
    train = store.split_ids("train") if split != "train" else []
    if len(train) < 2:
        train = store.ids
    if len(train) < 2 or not calibration:
        return None
    loaded = load_checkpoint(model)
    try:
        return fit_cmr_ood(loaded.model, loaded.input_spec, store, train, calibration)
    except InputError:
        return None
