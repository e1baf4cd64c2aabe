"""The cmr pipeline's generic verbs: predict (the contract), evaluate, report, run, synth.

A row of the cmr predictions.csv is one labelled sample: a short-axis stack (ACDC: one ED
or ES frame of a patient; PNG pairs: one slice) or one 4D cine (DSB). Beside the ids it
holds ``phase``, ``image_id`` (= sample_id, for `cmr measure`), ``mask_path`` (the labels
in masks/, on each source's own grid by default), ``lv_volume``/``myo_volume``/``rv_volume``
(that sample's structures; a cine's at its ED frame) and the standard columns ``edv``,
``esv``, ``ef``, ``lv_mass``, ``rv_edv``, ``rv_esv``, ``rv_ef`` of the sample's measurement
unit: the patient's stacks together (ED and ES by LV volume, the RV's by RV volume;
repeated on each of its rows, empty when the patient has a single stack) or the cine
itself. With height and weight (ACDC Info.cfg: ``height_cm``, ``weight_kg``) ``bsa_m2``
(Mosteller) and ``edv_index``, ``esv_index``, ``lv_mass_index``, ``rv_edv_index``,
``rv_esv_index`` (per m^2) when the volumes are in mL. Impossible values (EDV <= 0, EF
outside [0, 100) %) are left empty and named in ``volume_flags`` (and problems.csv), never
reported as values. Volumes are mL when the
source keeps its spacing (``volume_unit``), else voxel counts.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from cinelab.data.manifest import read_manifest, write_manifest
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError, Problem
from cinelab.evaluate.metrics import json_safe
from cinelab.infer.contract import (
    read_predictions,
    read_problems,
    read_run,
    run_record,
    write_contract,
)
from cinelab.infer.engines import engine_checkpoint
from cinelab.infer.ood import MahalanobisDetector
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.cmr.evaluate import METRICS_JSON, evaluate_cmr
from cinelab.pipelines.cmr.layout import assign_splits, read_cmr_source
from cinelab.pipelines.cmr.measure import indexed_measures, measure_mask_set
from cinelab.pipelines.cmr.ood import cmr_ood_columns
from cinelab.pipelines.cmr.predict import (
    INDEX_FILE,
    LCC_AUTO,
    STORE_DIR,
    checkpoint_classes,
    predict_cmr,
    record_postprocess,
    resolve_largest_component,
    validate_largest_component,
)
from cinelab.pipelines.cmr.prepare import KIND_CINE, prepare_cmr
from cinelab.pipelines.cmr.report import build_cmr_report
from cinelab.pipelines.cmr.synth import ACDC_DIR, synth_cmr_cohort
from cinelab.pipelines.cmr.uncertainty import annotate_cmr, cmr_interval_metrics
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import LoadedCheckpoint, load_checkpoint
from cinelab.train.fit import fit
from cinelab.train.recipe import Recipe, load_recipe
from cinelab.utils import is_done, mark_done, read_json, write_csv, write_json

PIPELINE, TASK = "cmr", "image_segmentation"
DEFAULT_RECIPE = "cmr-seg-cpu"
DEFAULT_TEST_FRACTION = 0.25
MODEL_NAME = "model"
STAGES = ("ingest", "store", "train", "predict", "evaluate")
SYNTH_SIZE = (64, 56)  # rows, columns (about 2.2 mm pixels: the heart fills the centre)
SYNTH_FRAMES = 8
STANDARD = {"EDV": "edv", "ESV": "esv", "EF": "ef", "LVM": "lv_mass", "RV_EDV": "rv_edv",
            "RV_ESV": "rv_esv", "RV_EF": "rv_ef", "units": "volume_unit",
            "flags": "volume_flags"}
SAMPLE_VOLUMES = {"LV_ml": "lv_volume", "MYO_ml": "myo_volume", "RV_ml": "rv_volume"}
DICE_KEYS = {"LV": "lv_dice", "MYO": "myo_dice", "RV": "rv_dice"}


# --------------------------------------------------------------------------- predict


def predict(model: Path, source: Path, out: Path, options: Options) -> Path:
    """Label every sample of `source` (a prepared store or a raw CMR folder) with `model`;
    write masks/ and the contract (predictions.csv, problems.csv, run.json) into `out`.
    Options: split (of a store), device, batch_size; extra ``native`` (labels on the source
    grids, default true), ``format`` (nifti or npz), ``largest_component`` ("auto", the
    default: the labels the checkpoint's validation kept; "all"; "none"; or label values),
    ``mirror`` (mirror test-time augmentation), ``ensemble`` (more checkpoints, e.g. the
    other folds', averaged with `model`), ``engine`` (eager, compiled or onnx: what runs
    `model`; `cinelab.infer.engines`), ``coverage`` (of ``edv/esv/ef_lo/_hi`` when the
    checkpoint was calibrated, `cinelab calibrate`; default its 90 %). A calibrated
    checkpoint also gives ``ood_score`` / ``ood_flag`` per row (`cmr.ood`)."""
    started = time.time()
    engine = str(options.get("engine", "eager"))
    loaded = engine_checkpoint(load_checkpoint(model), engine, options.device, path=model)
    out = Path(out)
    native = bool(options.get("native", True))
    index = predict_cmr(loaded, source, out, fmt=str(options.get("format", "nifti")),
                        native=native, batch_size=options.batch_size, device=options.device,
                        split=options.split,
                        largest_component=options.get("largest_component", LCC_AUTO),
                        mirror=bool(options.get("mirror", False)),
                        ensemble=[Path(p) for p in options.get("ensemble", []) or []])
    table, problems = contract_table(index, out)
    table = annotate_cmr(table, loaded.info.get("extra"), options.get("coverage"))
    table, ood_note = _with_ood(table, loaded, source, out)
    if not (Path(source) / "store.json").is_file():  # a raw folder, prepared into out/store
        problems = read_problems(out / STORE_DIR) + problems
    record = run_record(PIPELINE, TASK, model, source, started,
                        recipe=loaded.recipe.get("name"), input_spec=loaded.input_spec.to_dict(),
                        classes=checkpoint_classes(loaded), native=native, split=options.split,
                        largest_component_labels=resolve_largest_component(
                            loaded, options.get("largest_component", LCC_AUTO)),
                        options={"device": options.device, "batch_size": options.batch_size,
                                 **options.extra},
                        engine={"name": engine, **dict(getattr(loaded.model, "info", {}))},
                        **ood_note)
    return write_contract(out, table, problems, record)


def _with_ood(table: pd.DataFrame, loaded: LoadedCheckpoint, source: Path, out: Path
              ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(table with ``ood_score`` / ``ood_flag``, {}) when the checkpoint holds a calibrated
    OOD detector: the features of whatever engine predicted (an ONNX graph outputs the
    bottleneck's); (table, run.json's ``ood_unavailable``) when the engine has none."""
    state = UncertaintyState.from_extra(loaded.info.get("extra"))
    if not isinstance(state.ood, MahalanobisDetector) or not state.ood.module:
        return table, {}
    model = loaded.model
    if not isinstance(model, nn.Module) and \
            not model.has_features(state.ood.module, None, state.ood.pool):
        return table, {"ood_unavailable": f"the {model.name} model gives no features at "
                       f"{state.ood.module} (export it again: `cinelab export`)"}
    store = PreparedStore(source) if (Path(source) / "store.json").is_file() else \
        PreparedStore(out / STORE_DIR)
    return cmr_ood_columns(table, state.ood, model, loaded.input_spec, store), {}


def contract_table(index: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, list]:
    """predict_cmr's index + the standard volume columns of each row's unit (see module)."""
    index = index.assign(image_id=index["sample_id"].astype(str))
    write_csv(index, out / INDEX_FILE)  # image ids keep each cine its own unit
    units, per_frame, problems = measure_mask_set(out / INDEX_FILE, report_single=False)
    units = units.set_index(units["patient_id"].astype(str))
    rows = []
    for _, row in index.iterrows():
        cine = row.get("kind") == KIND_CINE
        unit = str(row["sample_id"] if cine else row["patient_id"])
        values = _unit_values(units, unit, _measurable(index, row, cine))
        found = units.loc[unit].to_dict() if unit in units.index and \
            _measurable(index, row, cine) else {}
        indexed = indexed_measures(found, row.get("height_cm"), row.get("weight_kg"))
        values.update({"bsa_m2": indexed["bsa_m2"], **{
            f"{STANDARD[name]}_index": indexed[f"{name}_index"] for name in
            ("EDV", "ESV", "LVM", "RV_EDV", "RV_ESV")}})
        rows.append(values)
    table = pd.concat([index.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
    return _with_sample_volumes(table, per_frame), problems


def _measurable(index: pd.DataFrame, row: pd.Series, cine: bool) -> bool:
    """A cine always; stacks when the patient has more than one (ED and ES)."""
    return cine or int((index["patient_id"].astype(str) == str(row["patient_id"])).sum()) > 1


def _unit_values(units: pd.DataFrame, unit: str, measurable: bool) -> dict[str, Any]:
    if not measurable or unit not in units.index:
        return {name: np.nan for name in STANDARD.values()}
    found = units.loc[unit]
    return {name: found[column] for column, name in STANDARD.items()}


def _with_sample_volumes(table: pd.DataFrame, per_frame: pd.DataFrame) -> pd.DataFrame:
    """lv/myo/rv_volume of each stack (cines: at their ED frame, the largest LV)."""
    if per_frame.empty:
        return table
    frames = per_frame.assign(_id=per_frame["image_id"].astype(str).str.replace(
        r"_t\d+$", "", regex=True))
    ed = frames.loc[frames.groupby("_id")["LV_ml"].idxmax()].set_index("_id")
    for column, name in SAMPLE_VOLUMES.items():
        if column in ed.columns:
            table[name] = table["sample_id"].astype(str).map(ed[column])
    return table


# --------------------------------------------------------------------------- evaluate


def evaluate(predictions: Path, out: Path, options: Options) -> dict[str, Any]:
    """Dice per class, volume and EF agreement of a prediction folder with the truth labels
    (options.labels, else the input recorded in run.json); metrics.json + flat metrics."""
    predictions, out = Path(predictions), Path(out)
    read_predictions(predictions)  # a typed error when it is not a prediction folder
    truth = options.labels or read_run(predictions).get("input")
    if not truth:
        raise InputError(predictions / "run.json", "input", "the labelled input predicted "
                         "from", "none recorded", "give the truth labels with --labels")
    result = evaluate_cmr({MODEL_NAME: predictions}, Path(truth), out)
    metrics = {"pipeline": PIPELINE, **flat_metrics(result.summary, result.volumes),
               **cmr_interval_metrics(read_predictions(predictions), result.volumes),
               "truth": str(truth), "models": read_json(out / METRICS_JSON)}
    write_json(out / METRICS_JSON, json_safe(metrics))
    return metrics


def flat_metrics(summary: pd.DataFrame, volumes: pd.DataFrame) -> dict[str, Any]:
    """lv/myo/rv_dice (mean over volumes, all phases), relative EDV/ESV errors, EF MAE and
    the same for the predict-the-mean baseline (the truth's own mean: an optimistic one)."""
    overall = summary[(summary["model"] == MODEL_NAME) & (summary["phase"] == "all")]
    out: dict[str, Any] = {key: float(overall.loc[overall["class"] == name, "mean"].iloc[0])
                           for name, key in DICE_KEYS.items() if (overall["class"] == name).any()}
    vol = volumes[volumes["model"] == MODEL_NAME] if "model" in volumes else volumes
    out["n_patients"] = len(vol)
    if not len(vol):
        return out
    for v in ("EDV", "ESV"):
        true = vol[f"{v}_true"].to_numpy(float)
        out[f"{v.lower()}_error"] = _relative(vol[f"{v}_pred"].to_numpy(float), true)
        out[f"{v.lower()}_error_baseline"] = _relative(np.full_like(true, true.mean()), true)
    out["lv_volume_error"] = (out["edv_error"] + out["esv_error"]) / 2
    out["lv_volume_error_baseline"] = (out["edv_error_baseline"]
                                       + out["esv_error_baseline"]) / 2
    flags = vol["flags"].fillna("").astype(str) if "flags" in vol else pd.Series([], dtype=str)
    out["n_flagged"] = int((flags != "").sum())  # impossible values: left out, not reported
    ef_true = vol["EF_true"].to_numpy(float)
    out["ef_mae"] = float(_nanmean(np.abs(vol["EF_pred"].to_numpy(float) - ef_true)))
    out["ef_mae_baseline"] = float(_nanmean(np.abs(ef_true - _nanmean(ef_true))))
    out["ef_bias"] = float(_nanmean(vol["EF_pred"].to_numpy(float) - ef_true))
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN (no warning) when there is none (e.g. all flagged)."""
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _relative(pred: np.ndarray, true: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(np.abs(pred - true) / np.where(true > 0, true, np.nan)))


def report(evaluation: Path, out: Path | None = None) -> Path:
    """The HTML report of an evaluation folder."""
    return build_cmr_report(evaluation, out)


# --------------------------------------------------------------------------- run


def run(data: Path, out: Path, options: Options) -> dict[str, Any]:
    """The whole chain on an ACDC-like folder (or any CMR source with masks): ingest with
    patient splits, prepare at the recipe's size, train, predict the test split on the
    source grids, evaluate against the truth labels, report. Each finished stage is kept
    (done.json) and skipped when run again. Options: recipe (default cmr-seg-cpu),
    max_epochs, seed, device, split (predicted, default test); extra ``set`` (recipe
    overrides), ``test_fraction`` (patients without a split, default 0.25), ``crop``,
    ``workers``."""
    data, out = Path(data), Path(out)
    recipe = load_recipe(options.recipe or DEFAULT_RECIPE, list(options.get("set", []) or []))
    store = _store(data, out, recipe, options)
    model = _train(recipe, store, out / "train", options)
    pred = out / "predict"
    if not is_done(pred):
        split = options.split or "test"
        predict(model, store.root, pred, Options(split=split, device=options.device,
                                                 batch_size=options.batch_size))
        mark_done(pred, [INDEX_FILE])
    evaluation = out / "evaluate"
    metrics = evaluate(pred, evaluation, Options(labels=store.root))
    report(evaluation)
    write_json(out / "run.json", {"pipeline": PIPELINE, "data": str(data),
                                  "recipe": recipe.name, "stages": list(STAGES)})
    return metrics


def _store(data: Path, out: Path, recipe: Recipe, options: Options) -> PreparedStore:
    if (data / "store.json").is_file():
        return PreparedStore(data)
    ingest = out / "ingest"
    if not is_done(ingest):
        manifest, problems = read_cmr_source(data)
        manifest = assign_splits(manifest, float(options.get("test_fraction",
                                                             DEFAULT_TEST_FRACTION)),
                                 options.seed) if len(manifest) else manifest
        write_manifest(manifest, ingest / "manifest.csv")
        write_csv(pd.DataFrame([asdict(p) for p in problems],
                               columns=list(Problem.__dataclass_fields__)),
                  ingest / "problems.csv")
        mark_done(ingest, ["manifest.csv", "problems.csv"])
    store = out / "store"
    if not is_done(store):
        size = recipe.data.size if isinstance(recipe.data.size, int) else recipe.data.size[0]
        summary = prepare_cmr(read_manifest(ingest / "manifest.csv"), store, size=int(size),
                              channels=int(recipe.model.kwargs.get("in_channels", 1)),
                              crop=str(options.get("crop", "none")),
                              workers=options.get("workers", 1),
                              problems=read_problems(ingest))
        if not summary.usable:
            raise InputError(data, "images", "at least one readable labelled CMR stack",
                             f"none ({len(summary.problems)} problem(s))")
        mark_done(store, ["manifest.csv"])
    return PreparedStore(store)


def _train(recipe: Recipe, store: PreparedStore, out: Path, options: Options) -> Path:
    model = out / "model.pt"
    if not is_done(out):
        accelerator = "cpu" if options.device == "cpu" else None
        fit(recipe, store, out, resume=True, max_epochs=options.max_epochs,
            accelerator=accelerator, progress=False)
        if store.split_ids("val"):  # post-processing decided on the validation fold
            decision = validate_largest_component(model, store, "val", device=options.device
                                                  or "cpu")
            record_postprocess(model, decision)
            write_json(out / "postprocess.json", json_safe(decision))
        mark_done(out, ["model.pt"])
    return model


# --------------------------------------------------------------------------- synth / demo


def synth(out: Path, n: int, seed: int) -> Path:
    """A synthetic ACDC-like cohort (training/ and testing/ patient folders, truth.csv
    beside); returns the ACDC root."""
    synth_cmr_cohort(out, n=n, seed=seed, layout="acdc", defects=False, size=SYNTH_SIZE,
                     n_frames=SYNTH_FRAMES)
    return Path(out) / ACDC_DIR
