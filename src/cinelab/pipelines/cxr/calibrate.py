"""`cinelab calibrate` for CXR: a temperature fitted on a labelled split training never saw
(`uncertainty`), stored beside the ensemble (or in a checkpoint's extra), and, when the data
has a training split (option ``fit_split``, default train), per-member Mahalanobis OOD
detectors fitted on it and thresholded on the calibration split (`ood`)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from cinelab.errors import InputError
from cinelab.evaluate.classification import join_labels
from cinelab.evaluate.uncertainty import expected_calibration_error
from cinelab.infer.calibration import TemperatureScaler
from cinelab.infer.calibration_state import kept_state, state_digest
from cinelab.infer.contract import read_predictions
from cinelab.infer.uncertainty import EXTRA_KEY as STATE_KEY
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.cxr.evaluate import resolve_labels
from cinelab.pipelines.cxr.ood import EXTRA_KEY as OOD_KEY
from cinelab.pipelines.cxr.ood import OOD_FILE, OOD_QUANTILE, MemberOOD, fit_member_ood
from cinelab.pipelines.cxr.predict import input_files, predict
from cinelab.pipelines.cxr.uncertainty import RAW, UNCERTAINTY_FILE, fit_temperature
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import read_checkpoint
from cinelab.utils import atomic_path, file_hash, write_json

CALIBRATION_SPLIT = "val"
CALIBRATION_JSON = "calibration.json"


def calibrate_cxr(model: Path, data: Path, out: Path, options: Options) -> dict[str, Any]:
    """Predict `data` (its ``options.split``, default val; "" for every image; labels from
    ``options.labels`` or the labelled folder), fit the temperature and the OOD detectors,
    then store both in one step (`store_cxr_calibration`): when any part fails nothing is
    stored and the earlier state stays as it was. Returns calibration.json's content
    (temperature, ECE before and after on that split)."""
    try:
        return _calibrate(Path(model), Path(data), Path(out), options)
    except InputError as exc:
        raise kept_state(exc) from exc


def _calibrate(model: Path, data: Path, out: Path, options: Options) -> dict[str, Any]:
    """`calibrate_cxr` (which says in its errors that nothing was stored)."""
    split = CALIBRATION_SPLIT if options.split is None else options.split
    pred = predict(model, data, out / "predictions",
                   Options(split=split or None, device=options.device,
                           batch_size=options.batch_size, labels=options.labels,
                           extra={k: v for k, v in options.extra.items() if k != "coverage"}))
    table, labels = read_predictions(pred), resolve_labels(pred, options.labels)
    scaler = fit_temperature(table, labels)
    joined = join_labels(table, labels)
    raw = joined[RAW] if RAW in joined.columns else joined["probability"]
    summary = {"pipeline": "cxr", "model": str(model), "data": str(data), "split": split,
               "n_calibration": int(joined["truth"].notna().sum()),
               "temperature": scaler.temperature,
               "ece_before": expected_calibration_error(raw, joined["truth"]),
               "ece_after": expected_calibration_error(scaler.apply(raw.to_numpy(float)),
                                                       joined["truth"])}
    ood, found = _fit_ood(model, data, joined["file"].tolist() if "file" in joined.columns
                          else [], options)
    store_cxr_calibration(model, scaler, ood)
    summary.update(found)
    write_json(out / CALIBRATION_JSON, summary)
    return summary


def _fit_ood(model: Path, data: Path, val_files: list[str], options: Options
             ) -> tuple[MemberOOD | None, dict[str, Any]]:
    """The member OOD detectors fitted on the data's training split, and what the summary
    says of them (None and a note when there is no such split, or no calibration images)."""
    fit_split = str(options.get("fit_split", "train"))
    try:
        files, _, _ = input_files(Path(data), Options(split=fit_split, labels=options.labels))
    except InputError as exc:
        return None, {"ood": None, "ood_note": f"no '{fit_split}' split to fit on: {exc.found}"}
    if not val_files or not isinstance(files, list):
        return None, {"ood": None, "ood_note": "no calibration images"}
    quantile = float(options.get("ood_quantile", OOD_QUANTILE))
    ood = fit_member_ood(model, files, [Path(f) for f in val_files],
                         str(options.extra.get("masks", "auto")), quantile)
    return ood, {"ood": "mahalanobis per member", "ood_threshold": ood.threshold,
                 "ood_quantile": quantile, "ood_fit_split": fit_split,
                 "n_ood_fit": int(ood.info["n_train"])}


def _folder(model: Path) -> Path | None:
    """The ensemble folder of `model` (a folder or its ensemble.json), else None."""
    model = Path(model)
    return model if model.is_dir() else model.parent if model.suffix == ".json" else None


def store_cxr_calibration(model: Path, scaler: TemperatureScaler | None,
                          ood: MemberOOD | None) -> None:
    """Replace the stored state with exactly (`scaler`, `ood`), either None for none: one
    atomic rewrite of a checkpoint; in an ensemble folder uncertainty.json and ood.pt are
    both written to temporary files first and renamed only once both are complete."""
    folder = _folder(model)
    if folder is None:
        payload = read_checkpoint(model)
        extra = {k: v for k, v in (payload.get("extra") or {}).items()
                 if k not in (STATE_KEY, OOD_KEY)}
        if scaler is not None:
            extra.update(UncertaintyState(calibrator=scaler).to_extra())
        if ood is not None:
            extra[OOD_KEY] = ood.to_dict()
        with atomic_path(model) as tmp:
            torch.save({**payload, "extra": extra}, tmp)
        return
    files = [(folder / UNCERTAINTY_FILE, scaler), (folder / OOD_FILE, ood)]
    with ExitStack() as stack:
        for path, part in files:
            if part is None:
                continue
            tmp = stack.enter_context(atomic_path(path))
            if isinstance(part, MemberOOD):
                torch.save(part.to_dict(), tmp)
            else:
                write_json(tmp, UncertaintyState(calibrator=part).to_dict(json_safe=True))
    for path, part in files:
        if part is None:
            path.unlink(missing_ok=True)


def clear_cxr_calibration(model: Path) -> None:
    """Remove every stored temperature and OOD detector of `model`."""
    store_cxr_calibration(model, None, None)


def cxr_state_digest(model: Path) -> str | None:
    """Digest of the calibration state `predict` reads from `model` (None when none)."""
    folder = _folder(model)
    if folder is not None:
        return state_digest([folder / UNCERTAINTY_FILE, folder / OOD_FILE])
    extra = read_checkpoint(model).get("extra") or {}
    return file_hash(model) if extra.get(STATE_KEY) or extra.get(OOD_KEY) else None
