"""The whole RVF chain under one folder, resumable step by step (`utils.is_done`):

    OUT/ingest        pseudonymised manifest + de-identified DICOM copies + problems
    OUT/store         greyscale frames + optical flow (prepared store)
    OUT/run           training run (model.pt, metrics.json, checkpoints); model.pt records
                      the decision threshold chosen on validation (Youden's J); with
                      members N > 1 an ensemble folder (ensemble.json, members/<k>/...;
                      saliency then explains member 0)
    OUT/predictions_val  validation predictions, to choose that threshold
    OUT/calibration   calibration.json: the temperature and OOD detector fitted as `cinelab
                      calibrate` does (on the validation and training videos; an ensemble's
                      members on their own), or why nothing was fitted (no validation split)
    OUT/predictions   predictions of the evaluated split (the contract)
    OUT/evaluation    metrics.json (per video and patient, CIs), ROC, tables, report.html
    OUT/saliency      guided-backprop videos and strips of the most confident videos

Options (`Options`): recipe, max_epochs, split (default test), device, batch_size, seed,
labels (the class CSV); extra: classes, splits (CSV paths, default the cohort's own), set
(recipe overrides), size (frame size, default the recipe's), workers, top (videos to
explain), threshold (a number, or "youden" on validation: the default), n_boot;
members (N > 1: train an ensemble of N models on N seeded patient-wise re-splits of the
non-test patients into OUT/run, see `ensemble`; its threshold is Youden's J on the members'
pooled validation videos, or the given number), ensemble_mode ("repeated" or "folds"),
val_fraction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cinelab.data.manifest import read_manifest
from cinelab.errors import InputError
from cinelab.evaluate.classification import SCORE_COLUMN, TRUTH_COLUMN, join_labels
from cinelab.evaluate.metrics import youden_threshold
from cinelab.infer.calibration_state import calibrate_or_note, is_current
from cinelab.infer.contract import (
    PREDICTIONS_FILE,
    PROBLEMS_FILE,
    RUN_FILE,
    read_predictions,
    read_run,
)
from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf.calibrate import (
    CALIBRATION_JSON,
    CALIBRATION_SPLIT,
    FIT_SPLIT,
    calibrate_rvf,
    clear_rvf_calibration,
    rvf_state_digest,
)
from cinelab.pipelines.rvf.discover import is_rvf_cohort, rvf_tables
from cinelab.pipelines.rvf.ensemble import (
    DEFAULT_VAL_FRACTION,
    ENSEMBLE_FILE,
    is_ensemble,
    predict_ensemble,
    read_ensemble,
    train_ensemble,
)
from cinelab.pipelines.rvf.evaluate import METRICS_FILE, evaluate_rvf
from cinelab.pipelines.rvf.explain import explain_rvf
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.predict import MODEL_FILE, predict_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.report import rvf_report
from cinelab.train.checkpoint import load_checkpoint, save_checkpoint
from cinelab.train.fit import fit
from cinelab.train.recipe import Recipe, load_recipe
from cinelab.utils import DONE_FILE, is_done, mark_done, read_json, write_csv, write_json

DEFAULT_RECIPE = "rvf-twostream-cpu"
DEFAULT_SPLIT = "test"
DEFAULT_TOP = 4
DEFAULT_THRESHOLD = 0.5
YOUDEN = "youden"
CONTRACT_FILES = (PREDICTIONS_FILE, PROBLEMS_FILE, RUN_FILE)


def _step(name: str) -> property:
    return property(lambda self: self.out / name, doc=f"OUT/{name}")


@dataclass(frozen=True)
class RvfPaths:
    """Where `run_rvf` writes each step (under one output folder)."""

    out: Path
    ingest = _step("ingest")
    store = _step("store")
    run = _step("run")
    predictions = _step("predictions")
    predictions_val = _step("predictions_val")
    calibration = _step("calibration")
    evaluation = _step("evaluation")
    saliency = _step("saliency")


def recipe_of(options: Options) -> Recipe:
    """The recipe named by the options, with their overrides and max_epochs."""
    overrides = list(options.get("set") or [])
    if options.get("size"):
        overrides.append(f"data.size={int(options.get('size'))}")
    if options.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={int(options.max_epochs)}")
    return load_recipe(options.recipe or DEFAULT_RECIPE, overrides)


def _size(recipe: Recipe, options: Options) -> int:
    size = options.get("size") or recipe.data.size
    return int(size if isinstance(size, int) else size[0])


def ingest_step(data: Path, paths: RvfPaths, options: Options) -> Path:
    """Ingest the raw cohort (or take an ingest folder as it is)."""
    if (data / "manifest.csv").is_file() and not is_rvf_cohort(data):
        return data
    if not is_done(paths.ingest):
        tables = dict(options.extra)
        if options.labels is not None:
            tables.setdefault("classes", options.labels)
        classes, splits = rvf_tables(data, tables)
        manifest, _ = ingest_rvf(data, classes, splits, paths.ingest,
                                 positive_class=options.get("positive_class"))
        if manifest.empty:
            raise InputError(data, "videos", "at least one labelled video", "none",
                             fix="check PatientID against the class CSV ids")
        mark_done(paths.ingest, ["manifest.csv", "problems.csv"])
    return paths.ingest


def prepare_step(ingest: Path, paths: RvfPaths, size: int, options: Options) -> Path:
    if not is_done(paths.store):
        prepare_rvf(ingest, paths.store, size, workers=options.get("workers"))
        mark_done(paths.store, ["store.json", "manifest.csv"], size=size)
    return paths.store


def train_step(recipe: Recipe, paths: RvfPaths, options: Options) -> Path:
    if not is_done(paths.run):
        accelerator = options.get("accelerator") or \
            ("gpu" if str(options.device).startswith("cuda") else None)
        fit(recipe, paths.store, paths.run, resume=True, progress=False,
            accelerator=accelerator)
        mark_done(paths.run, [MODEL_FILE])
    return paths.run / MODEL_FILE


def ensemble_step(recipe: Recipe, paths: RvfPaths, options: Options) -> tuple[Path, Path]:
    """Train the ensemble into OUT/run (resumable per member); (folder, member 0's model)."""
    if not is_done(paths.run):
        train_ensemble(recipe, paths.store, paths.run, int(options.get("members")),
                       seed=options.seed, mode=options.get("ensemble_mode", "repeated"),
                       val_fraction=float(options.get("val_fraction", DEFAULT_VAL_FRACTION)),
                       options=options)
        mark_done(paths.run, [ENSEMBLE_FILE])
    return paths.run, read_ensemble(paths.run)[1][0]


def youden_on_val(model: Path, paths: RvfPaths, options: Options) -> tuple[float, str]:
    """(threshold, source): Youden's J on the validation predictions (0.5 when validation
    lacks a class)."""
    store_ids = read_manifest(paths.store / "manifest.csv")
    fallback = DEFAULT_THRESHOLD, "default (validation lacks a class)"
    if not (store_ids["split"] == "val").any():
        return fallback
    if not is_done(paths.predictions_val):
        predict_rvf(model, paths.store, paths.predictions_val,
                    _with(options, split="val", threshold=DEFAULT_THRESHOLD))
        mark_done(paths.predictions_val, CONTRACT_FILES)
    table = join_labels(read_predictions(paths.predictions_val), store_ids).dropna(
        subset=[TRUTH_COLUMN, SCORE_COLUMN])
    if table[TRUTH_COLUMN].nunique() < 2:
        return fallback
    return float(youden_threshold(table[TRUTH_COLUMN], table[SCORE_COLUMN])), \
        "Youden's J on the validation videos"


def threshold_step(model: Path, paths: RvfPaths, options: Options) -> None:
    """Record the decision threshold in the checkpoint (extra.threshold, threshold_source):
    a number given as option "threshold", else Youden's J on validation (kept once there),
    so that `cinelab predict` on this model uses it."""
    given = options.get("threshold", YOUDEN)
    loaded = load_checkpoint(model)
    extra = dict(loaded.info.get("extra") or {})
    if (given == YOUDEN and "threshold" in extra) or \
            (given != YOUDEN and extra.get("threshold") == float(given)):
        return  # kept: rewriting would change the checkpoint (and its calibration digest)
    value, source = (float(given), "given") if given != YOUDEN \
        else youden_on_val(model, paths, options)
    extra.update(threshold=value, threshold_source=source)
    save_checkpoint(model, loaded.model, loaded.recipe, loaded.input_spec, extra)
    mark_done(paths.run, [MODEL_FILE])


def calibrate_step(model: Path, paths: RvfPaths, options: Options) -> dict[str, Any]:
    """Temperature and OOD detector of the trained model (or ensemble folder), fitted as
    `cinelab calibrate` does, into OUT/calibration/calibration.json (``calibrated``: true);
    without a validation (or training) split, or when fitting fails, that file says why,
    nothing is fitted and state of an earlier calibration is removed (``calibrated``: false,
    ``note``). ``state`` is the digest of what predict will read: done while it holds."""
    stored = lambda: rvf_state_digest(model)  # noqa: E731 - passed on, read twice
    if is_done(paths.calibration) and \
            is_current(read_json(paths.calibration / CALIBRATION_JSON), stored):
        return read_json(paths.calibration / CALIBRATION_JSON)
    splits = set(read_manifest(paths.store / "manifest.csv")["split"].astype(str))
    missing = [s for s in (CALIBRATION_SPLIT, FIT_SPLIT) if s not in splits]
    why_not = (f"not calibrated: the store has no '{missing[0]}' split (splits "
               f"{sorted(splits)})") if missing and not is_ensemble(model) else None
    summary = {"pipeline": "rvf", **calibrate_or_note(
        lambda: calibrate_rvf(model, paths.store, paths.calibration,
                              replace(options, split=None)),
        stored, lambda: clear_rvf_calibration(model), why_not)}
    if not summary["calibrated"]:
        summary["note"] += "; probability is the model's own and there is no OOD flag"
    paths.calibration.mkdir(parents=True, exist_ok=True)
    write_json(paths.calibration / CALIBRATION_JSON, summary)
    _remark_models(model, paths)  # the stored state may have changed the model files
    mark_done(paths.calibration, [CALIBRATION_JSON])
    return summary


def _remark_models(model: Path, paths: RvfPaths) -> None:
    if not is_ensemble(model):
        mark_done(paths.run, [MODEL_FILE])
        return
    for member in read_ensemble(model)[1]:
        mark_done(member.parent, [MODEL_FILE])
    mark_done(paths.run, [ENSEMBLE_FILE])


#: what run.json's "calibration" keeps of calibration.json
RUN_KEYS = ("calibrated", "note", "temperature", "ece_before", "ece_after", "n_calibration",
            "split", "ood", "ood_threshold", "ood_thresholds", "state")


def record_calibration(pred: Path, summary: dict[str, Any]) -> None:
    """Say in the predictions whether they are calibrated: run.json ``calibration`` (what
    was fitted, ECE before/after on validation, or the note why not) and a ``calibrated``
    column in predictions.csv."""
    run = read_run(pred)
    run["calibration"] = {k: summary[k] for k in RUN_KEYS if k in summary}
    write_json(pred / RUN_FILE, run)
    table = read_predictions(pred)
    write_csv(table.assign(calibrated=bool(summary.get("calibrated"))),
              pred / PREDICTIONS_FILE)


def _with(options: Options, split: str | None = None, **extra: Any) -> Options:
    return replace(options, split=split, extra={**options.extra, **extra})


def run_rvf(data: Path, out: Path, options: Options | None = None) -> dict[str, Any]:
    """Ingest -> prepare + flow -> train -> threshold on val -> calibrate (temperature, OOD)
    -> predict -> evaluate -> saliency -> report; the evaluation's metrics (+ "report": the
    HTML path)."""
    options, data, paths = options or Options(), Path(data), RvfPaths(Path(out))
    recipe = recipe_of(options)
    ingest = ingest_step(data, paths, options)
    prepare_step(ingest, paths, _size(recipe, options), options)
    split = options.split or DEFAULT_SPLIT
    members = int(options.get("members") or 1)
    if members > 1:
        folder, model = ensemble_step(recipe, paths, options)
    else:
        model = train_step(recipe, paths, options)
    if members > 1:
        summary = calibrate_step(folder, paths, options)
    else:
        threshold_step(model, paths, options)
        summary = calibrate_step(model, paths, options)
    kept = {k: summary[k] for k in RUN_KEYS if k in summary}
    if not (is_done(paths.predictions) and
            read_json(paths.predictions / DONE_FILE).get("calibration") == kept):
        if members > 1:
            given = options.get("threshold", YOUDEN)
            predict_ensemble(folder, paths.store, paths.predictions,
                             _with(options, split=split,
                                   threshold=None if given == YOUDEN else float(given)))
        else:
            predict_rvf(model, paths.store, paths.predictions,
                        _with(options, split=split, threshold=None))
        record_calibration(paths.predictions, summary)
        mark_done(paths.predictions, CONTRACT_FILES, calibration=kept)
        (paths.evaluation / DONE_FILE).unlink(missing_ok=True)  # evaluate the new ones
    if not is_done(paths.evaluation):
        evaluate_rvf(paths.predictions, paths.evaluation, replace(options, labels=None))
        mark_done(paths.evaluation, [METRICS_FILE])
    if not is_done(paths.saliency) and int(options.get("top", DEFAULT_TOP)) > 0:
        explain_rvf(model, paths.store, paths.saliency,
                    _with(options, split=split, predictions=str(paths.predictions)))
        mark_done(paths.saliency, ["saliency.csv"])
    report = rvf_report(paths.evaluation, saliency_dir=paths.saliency, run_dir=paths.run)
    return {**read_json(paths.evaluation / METRICS_FILE), "report": str(report)}
