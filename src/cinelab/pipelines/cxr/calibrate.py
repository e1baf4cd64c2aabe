"""`cinelab calibrate` for CXR: a temperature fitted on a labelled split training never saw
(`uncertainty`), stored beside the ensemble (or in a checkpoint's extra), and, when the data
has a training split (option ``fit_split``, default train), per-member Mahalanobis OOD
detectors fitted on it and thresholded on the calibration split (`ood`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cinelab.errors import InputError
from cinelab.evaluate.classification import join_labels
from cinelab.evaluate.uncertainty import expected_calibration_error
from cinelab.infer.contract import read_predictions
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.cxr.evaluate import resolve_labels
from cinelab.pipelines.cxr.ood import OOD_QUANTILE, fit_member_ood, write_member_ood
from cinelab.pipelines.cxr.predict import input_files, predict
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
    summary.update(_fit_ood(model, data, joined["file"].tolist() if "file" in joined.columns
                            else [], options))
    write_json(out / CALIBRATION_JSON, summary)
    return summary


def _fit_ood(model: Path, data: Path, val_files: list[str], options: Options
             ) -> dict[str, Any]:
    """Fit and store the member OOD detectors on the data's training split (a note in the
    summary instead when there is none, or no calibration images)."""
    fit_split = str(options.get("fit_split", "train"))
    try:
        files, _, _ = input_files(Path(data), Options(split=fit_split, labels=options.labels))
    except InputError as exc:
        return {"ood": None, "ood_note": f"no '{fit_split}' split to fit on: {exc.found}"}
    if not val_files or not isinstance(files, list):
        return {"ood": None, "ood_note": "no calibration images"}
    quantile = float(options.get("ood_quantile", OOD_QUANTILE))
    ood = fit_member_ood(model, files, [Path(f) for f in val_files],
                         str(options.extra.get("masks", "auto")), quantile)
    write_member_ood(model, ood)
    return {"ood": "mahalanobis per member", "ood_threshold": ood.threshold,
            "ood_quantile": quantile, "ood_fit_split": fit_split,
            "n_ood_fit": int(ood.info["n_train"])}
