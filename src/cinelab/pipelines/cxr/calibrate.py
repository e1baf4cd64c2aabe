"""`cinelab calibrate` for CXR: a temperature fitted on a labelled split training never saw
(`uncertainty`), stored beside the ensemble (or in a checkpoint's extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cinelab.evaluate.classification import join_labels
from cinelab.evaluate.uncertainty import expected_calibration_error
from cinelab.infer.contract import read_predictions
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.cxr.evaluate import resolve_labels
from cinelab.pipelines.cxr.predict import predict
from cinelab.pipelines.cxr.uncertainty import RAW, fit_temperature, write_cxr_state
from cinelab.pipelines.registry import Options
from cinelab.utils import write_json

CALIBRATION_SPLIT = "val"
CALIBRATION_JSON = "calibration.json"


def calibrate_cxr(model: Path, data: Path, out: Path, options: Options) -> dict[str, Any]:
    """Predict `data` (its ``options.split``, default val; "" for every image; labels from
    ``options.labels`` or the labelled folder), fit the temperature, store it; returns
    calibration.json's content (temperature, ECE before and after on that split)."""
    out = Path(out)
    split = CALIBRATION_SPLIT if options.split is None else options.split
    pred = predict(model, data, out / "predictions",
                   Options(split=split or None, device=options.device,
                           batch_size=options.batch_size, labels=options.labels,
                           extra={k: v for k, v in options.extra.items() if k != "coverage"}))
    table, labels = read_predictions(pred), resolve_labels(pred, options.labels)
    scaler = fit_temperature(table, labels)
    write_cxr_state(model, UncertaintyState(calibrator=scaler))
    joined = join_labels(table, labels)
    raw = joined[RAW] if RAW in joined.columns else joined["probability"]
    summary = {"pipeline": "cxr", "model": str(model), "data": str(data), "split": split,
               "n_calibration": int(joined["truth"].notna().sum()),
               "temperature": scaler.temperature,
               "ece_before": expected_calibration_error(raw, joined["truth"]),
               "ece_after": expected_calibration_error(scaler.apply(raw.to_numpy(float)),
                                                       joined["truth"])}
    write_json(out / CALIBRATION_JSON, summary)
    return summary
