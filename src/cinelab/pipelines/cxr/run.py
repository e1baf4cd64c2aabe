"""The whole CXR chain on one cohort, resumable: `cinelab run cxr DATA --out OUT`.

    cohort (folder tree, ingest folder, manifest; or images + label CSV)
      -> OUT/manifest.csv                     the cohort read once (labels for evaluation)
      -> OUT/stores/<crop>-<size>/            every store the recipe's members need
      -> OUT/ensemble/                        members (finished ones are never retrained),
                                              weights fitted on validation predictions
      -> OUT/calibration/                     calibration.json: temperature and per-member
                                              OOD detectors fitted as `cinelab calibrate`
                                              does (validation / training splits), stored
                                              in the ensemble; without a usable validation
                                              split it says why (``calibrated``: false)
      -> OUT/predictions-val/, predictions/   validation and test splits through the
                                              pipeline's predict (same TTA; calibrated
                                              probability, ood_score / ood_flag when
                                              fitted), run.json ``calibration`` either way
      -> OUT/evaluation/                      metrics at the Youden threshold of the
                                              validation predictions
      -> OUT/gradcam/, OUT/report.html        Grad-CAM of the most positive test images

Each prediction and Grad-CAM folder is skipped when its done marker lists complete outputs
(`cinelab.utils.is_done`); stores and members resume on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cinelab.data.manifest import write_manifest
from cinelab.errors import Problem
from cinelab.infer.calibration_state import calibrate_or_note, is_current
from cinelab.infer.contract import (
    PREDICTIONS_FILE,
    PROBLEMS_FILE,
    RUN_FILE,
    read_predictions,
    read_run,
)
from cinelab.pipelines.cxr.calibrate import (
    CALIBRATION_JSON,
    CALIBRATION_SPLIT,
    calibrate_cxr,
    clear_cxr_calibration,
    cxr_state_digest,
)
from cinelab.pipelines.cxr.cohort import load_cxr_cohort
from cinelab.pipelines.cxr.ensemble import train_ensemble
from cinelab.pipelines.cxr.evaluate import evaluate, report
from cinelab.pipelines.cxr.gradcam import DEFAULT_GRADCAMS, most_positive, write_gradcams
from cinelab.pipelines.cxr.layout import CxrCohort
from cinelab.pipelines.cxr.ood import predict_with_ood
from cinelab.pipelines.cxr.predict import ENSEMBLE_FILE, load_cxr_ensemble
from cinelab.pipelines.cxr.prepare import (
    CxrStores,
    predict_lung_masks,
    stores_for_recipe,
    train_lung_unet,
)
from cinelab.pipelines.registry import Options
from cinelab.train.recipe import load_recipe
from cinelab.utils import DONE_FILE, file_hash, is_done, mark_done, read_json, write_json

DEFAULT_RECIPE = "cxr-ensemble-cpu"
DEFAULT_TTA = 8
LUNG_DIR = "lung"
LUNG_MODEL = Path(LUNG_DIR) / "run" / "model.pt"  # where prepare --train-lung leaves it
TEST_SPLIT, VAL_SPLIT = "test", "val"
CONTRACT = (PREDICTIONS_FILE, PROBLEMS_FILE, RUN_FILE)


@dataclass
class CxrPaths:
    """Where `run_cxr` writes each step (under one output folder)."""

    out: Path

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.csv"

    @property
    def stores(self) -> Path:
        return self.out / "stores"

    @property
    def ensemble(self) -> Path:
        return self.out / "ensemble"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions"

    @property
    def val_predictions(self) -> Path:
        return self.out / "predictions-val"

    @property
    def calibration(self) -> Path:
        return self.out / "calibration"

    @property
    def evaluation(self) -> Path:
        return self.out / "evaluation"

    @property
    def gradcam(self) -> Path:
        return self.out / "gradcam"

    @property
    def report(self) -> Path:
        return self.out / "report.html"


@dataclass
class CxrSettings:
    """The knobs of a run (from `Options`: recipe, max_epochs, seed, batch_size, device,
    and the extras tta, processes, train_lung, set (recipe overrides), n_boot)."""

    recipe: str = DEFAULT_RECIPE
    tta: int = DEFAULT_TTA
    processes: int = 1
    max_epochs: int | None = None
    train_lung: bool = False
    overrides: tuple[str, ...] = ()
    n_boot: int = 1000
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 16

    @classmethod
    def from_options(cls, options: Options) -> CxrSettings:
        sets = options.get("set") or ()
        return cls(options.recipe or DEFAULT_RECIPE, int(options.get("tta", DEFAULT_TTA)),
                   int(options.get("processes", 1)), options.max_epochs,
                   bool(options.get("train_lung", False)),
                   (sets,) if isinstance(sets, str) else tuple(sets),
                   int(options.get("n_boot", 1000)), options.seed, options.device,
                   options.batch_size)


def prepare_stores(cohort: CxrCohort, out: str | Path, recipe: str = DEFAULT_RECIPE,
                   lung_model: str | Path | None = None, train_lung: bool = False,
                   workers: int | None = None, overrides: list[str] | None = None
                   ) -> tuple[CxrStores, list[Problem]]:
    """Lung masks of every row from a given or freshly trained U-Net (one crop source;
    without a U-Net the mask files), then every (crop, size) store the recipe's members
    need; also the lung-mask problems."""
    out = Path(out)
    manifest, problems = cohort.manifest, []
    if train_lung and lung_model is None:
        lung_model = train_lung_unet(manifest, out / LUNG_DIR, workers=workers)
    if lung_model is not None:
        manifest, problems = predict_lung_masks(manifest, lung_model, out / LUNG_DIR / "masks")
    stores = stores_for_recipe(load_recipe(recipe, overrides or []), manifest, out,
                               workers=workers)
    return stores, problems


def default_lung_model(stores: Path) -> Path | None:
    """The U-Net `prepare --train-lung` trained beside the stores, if any."""
    path = Path(stores) / LUNG_MODEL
    return path if path.is_file() else None


def _done_with(folder: Path, ensemble: str, **more: Any) -> bool:
    """Done (the one resume rule) by the same ensemble (its ensemble.json hash) and the
    same `more` (e.g. whether it was calibrated)."""
    if not is_done(folder):
        return False
    marker = read_json(folder / DONE_FILE)
    return marker.get("ensemble") == ensemble and \
        all(marker.get(k) == v for k, v in more.items())


#: what run.json's ``calibration`` keeps of calibration.json
RUN_KEYS = ("calibrated", "note", "temperature", "ece_before", "ece_after", "n_calibration",
            "split", "ood", "ood_note", "ood_threshold", "ood_fit_split", "state")


def calibrate_step(ensemble: Path, data: Path, labels: Path | None, out: Path,
                   settings: CxrSettings) -> dict[str, Any]:
    """Temperature and member OOD detectors of the trained ensemble, fitted as `cinelab
    calibrate` does (`calibrate_cxr`: the cohort's val split, OOD on its train split) into
    `out`/calibration.json (``calibrated``: true); without a val split, or when fitting
    fails (e.g. one class only), nothing is fitted, state of an earlier calibration is
    removed and the file says why (``calibrated``: false, ``note``). ``state`` is the digest
    of what predict will read; done once per ensemble.json while that state is unchanged."""
    digest = file_hash(ensemble / ENSEMBLE_FILE)
    if _done_with(out, digest) and \
            is_current(read_json(out / CALIBRATION_JSON), lambda: cxr_state_digest(ensemble)):
        return read_json(out / CALIBRATION_JSON)
    summary = {"pipeline": "cxr", **calibrate_or_note(
        lambda: calibrate_cxr(ensemble, data, out, Options(
            split=CALIBRATION_SPLIT, labels=labels, seed=settings.seed,
            device=settings.device, batch_size=settings.batch_size,
            extra={"tta": settings.tta})),
        lambda: cxr_state_digest(ensemble), lambda: clear_cxr_calibration(ensemble))}
    if not summary["calibrated"]:
        summary["note"] += "; probability is the ensemble's own and there is no OOD flag"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CALIBRATION_JSON, summary)
    mark_done(out, [CALIBRATION_JSON], ensemble=digest)
    return summary


def _predict_split(ensemble: Path, split: str, out: Path, settings: CxrSettings,
                   source: Path, labels: Path | None, calibration: dict[str, Any]) -> None:
    """One split through the pipeline's predict (`predict_with_ood`), run.json saying
    whether it is calibrated (``calibration``); done per ensemble and recorded calibration
    (its ``state`` digest included)."""
    digest = file_hash(ensemble / ENSEMBLE_FILE)
    kept = {k: calibration[k] for k in RUN_KEYS if k in calibration}
    if _done_with(out, digest, calibration=kept):
        return
    predict_with_ood(ensemble, source, out, Options(
        split=split, labels=labels, seed=settings.seed, device=settings.device,
        batch_size=settings.batch_size, extra={"tta": settings.tta}))
    run = read_run(out)
    run["calibration"] = kept
    write_json(out / RUN_FILE, run)
    mark_done(out, CONTRACT, ensemble=digest, calibration=kept)


def run_cxr(data: str | Path, out: str | Path, settings: CxrSettings | None = None,
            labels: str | Path | None = None) -> dict[str, Any]:
    """The chain of the module docstring; returns the test evaluation's headline metrics."""
    settings = settings or CxrSettings()
    paths = CxrPaths(Path(out))
    cohort = load_cxr_cohort(data, labels)
    paths.out.mkdir(parents=True, exist_ok=True)
    write_manifest(cohort.manifest, paths.manifest)
    prepare_stores(cohort, paths.stores, settings.recipe, train_lung=settings.train_lung,
                   overrides=list(settings.overrides))
    train_ensemble(load_recipe(settings.recipe, list(settings.overrides)), paths.stores,
                   paths.ensemble, processes=settings.processes,
                   max_epochs=settings.max_epochs, lung_model=default_lung_model(paths.stores))
    calibration = calibrate_step(paths.ensemble, Path(data), _path(labels), paths.calibration,
                                 settings)
    for split, folder in ((VAL_SPLIT, paths.val_predictions), (TEST_SPLIT, paths.predictions)):
        _predict_split(paths.ensemble, split, folder, settings, Path(data), _path(labels),
                       calibration)
    metrics = evaluate(paths.predictions, paths.evaluation, Options(
        labels=paths.manifest, seed=settings.seed,
        extra={"tune_on": paths.val_predictions, "n_boot": settings.n_boot}))
    metrics = record_calibration(paths.evaluation, metrics, calibration)
    ens = load_cxr_ensemble(paths.ensemble)
    digest = file_hash(paths.ensemble / ENSEMBLE_FILE)
    if not _done_with(paths.gradcam, digest):
        write_gradcams(ens, most_positive(read_predictions(paths.predictions),
                                          DEFAULT_GRADCAMS), paths.gradcam,
                       done={"ensemble": digest})
    report(paths.evaluation, paths.report)
    return metrics


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


def record_calibration(evaluation: Path, metrics: dict[str, Any],
                       calibration: dict[str, Any]) -> dict[str, Any]:
    """`metrics` and the evaluation's metrics.json (what the report shows) with
    ``calibration``: what was fitted, or the note why not (and ``calibrated``)."""
    kept = {k: calibration[k] for k in RUN_KEYS if k in calibration}
    path = evaluation / "metrics.json"
    write_json(path, {**read_json(path), "calibration": kept})
    return {**metrics, "calibrated": bool(kept.get("calibrated")), "calibration": kept}


def run(data: Path, out: Path, options: Options) -> dict[str, Any]:
    """The pipeline's run (`cinelab run cxr DATA --out OUT`): `run_cxr` with `options`."""
    return run_cxr(data, out, CxrSettings.from_options(options), options.labels)
