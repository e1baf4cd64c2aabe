"""`cinelab calibrate` for age: fit the OOD detectors (`cinelab.pipelines.age.ood`).

* a cv folder (or its ensemble folder): every unit's detector is refitted on its own store
  view (training cines; threshold from its inner-validation cines), as `run` does; `data`
  is not read (each unit's split lives in its store view);
* one checkpoint: its detector is fitted on the ``train`` split of the prepared store
  `data`, the threshold from the `split` option's cines (default ``val``), and stored as
  ood.json beside the checkpoint.

Options: ``ood_quantile`` (default 0.95). Writes calibration.json into `out`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.pipelines.age.ood import (
    OOD_QUANTILE,
    SCORES_FILE,
    fit_unit_ood,
    ood_record,
    ood_step,
    read_unit_ood,
    write_unit_ood,
)
from cinelab.pipelines.age.predict import cv_folder, cv_units
from cinelab.pipelines.registry import Options
from cinelab.utils import write_csv, write_json

CALIBRATION_JSON = "calibration.json"


def calibrate_age(model: Path, data: Path, out: Path, options: Options) -> dict[str, Any]:
    """Fit and store the detectors (module docstring); the summary (calibration.json also
    holds the run.json record and every model's threshold)."""
    model, out = Path(model), Path(out)
    quantile = float(options.get("ood_quantile", OOD_QUANTILE))
    folder = cv_folder(model)
    if folder is not None:
        fitted = ood_step(folder, quantile, options.batch_size, options.device, refit=True)
        paths = [u[3] for u in cv_units(folder)]
    else:
        paths = [_calibrate_checkpoint(model, Path(data), out, options, quantile)]
        fitted = 1
    detectors = [d for d in (read_unit_ood(p) for p in paths) if d is not None]
    if not detectors:
        raise InputError(model, "OOD detectors", "at least one model with 2 training and 1 "
                         "calibration cine", "none fitted")
    record = ood_record(detectors)
    summary = {"pipeline": "age", "model": str(model), "data": str(data), "fitted": fitted,
               "n_models": record["n_models"], "feature_layer": record["feature_layer"],
               "threshold_quantile": record["threshold_quantile"]}
    write_json(out / CALIBRATION_JSON, {**summary, "ood": record,
                                        "thresholds": [d.threshold for d in detectors]})
    return summary


def _calibrate_checkpoint(model: Path, data: Path, out: Path, options: Options,
                          quantile: float) -> Path:
    """Fit one checkpoint's detector on a prepared store's splits; the checkpoint."""
    if not (data / "store.json").is_file():
        raise InputError(data, "data", "a prepared store with train and calibration splits",
                         "no store.json")
    split = options.split or "val"
    found = fit_unit_ood(model, PreparedStore(data), quantile, options.batch_size,
                         options.device, calibration=split)
    if found is None:
        raise InputError(data / "manifest.csv", "split", f"at least 2 'train' and 1 {split!r} "
                         "cines", "too few")
    write_unit_ood(model, found[0])
    write_csv(found[1], out / SCORES_FILE)
    return model
