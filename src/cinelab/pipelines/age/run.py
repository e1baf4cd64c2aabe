"""The whole age chain on a long-axis cohort, resumable: `run_age(data, out, options)`.

    out/ingest/       manifest of 3ch/4ch series + ages (skipped when done.json is complete)
    out/store/        25-frame cines at the recipe's size (prepare resumes per sample)
    out/cv/           nested outer x inner cross-validation per view (resumes per unit)
    out/cv/ensemble/  fold and view ensembles, age gaps (redone when a unit was trained)
    out/cv/<unit>/    + run/ood.json, ood_scores.csv: each model's OOD detector (`ood`;
                      fitted once per model version)
    out/predictions/  the out-of-fold predictions in the prediction contract, with each
                      subject's fold training mean as ``age_baseline`` and its
                      ``ood_score`` / ``ood_flag`` from its outer fold's models
    out/evaluation/   metrics.json (rmse, mae, r2 with CIs, rmse_baseline, rmse_ratio) and
                      report.html

`data` is a cohort root: long-axis DICOM series (under ``dicom/`` when present) and the ages
CSV (``ages.csv`` or ``options.labels``). Options (``--option key=value``): outer (5), inner
(2), tta (5), views ("3ch,4ch"), size (prepared px, default the recipe's), method (view
weights, "nnls"), n_boot (1000), workers (prepare processes, 1), set (recipe overrides, a
list or ";"-separated text), coverage (of the age_lo/age_hi intervals, 0.9: split-conformal on
the out-of-fold residuals, `uncertainty`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError
from cinelab.formats.ingest import Ingested, load_ingested
from cinelab.infer.contract import run_record, write_contract
from cinelab.pipelines.age.evaluate import DEFAULT_METHOD, ENSEMBLE_DIR, ensemble_cv
from cinelab.pipelines.age.layout import AGES_FILE, dicom_root, ingest_lax
from cinelab.pipelines.age.metrics import BASELINE_COLUMN, evaluate_age
from cinelab.pipelines.age.ood import add_ood_columns, ood_step, oof_ood_scores
from cinelab.pipelines.age.predict import PIPELINE, TARGET, TASK, option_views
from cinelab.pipelines.age.report import report_age
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.pipelines.age.uncertainty import (
    UNCERTAINTY_FILE,
    cross_conformal,
    fit_age_intervals,
    write_age_state,
)
from cinelab.pipelines.registry import Options
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.train.cv import run_cv
from cinelab.train.recipe import load_recipe
from cinelab.utils import is_done, mark_done

DEFAULT_RECIPE = "cmr-age-cpu"
LIGHTNING_LOGGER = "lightning.pytorch"
INGEST_OUTPUTS = ("manifest.csv", "problems.csv")
ENSEMBLE_OUTPUTS = ("metrics.json", "predictions.csv", "age_gap.csv", UNCERTAINTY_FILE)


def _overrides(options: Options) -> list[str]:
    found = options.get("set", [])
    items = found.split(";") if isinstance(found, str) else list(found)
    if options.get("size") is not None:
        items.append(f"data.size={int(options.get('size'))}")
    return [str(i).strip() for i in items if str(i).strip()]


def ingest_step(data: Path, out: Path, labels: Path, options: Options) -> Ingested:
    """Ingest the cohort into `out` once (done.json marks it complete)."""
    if is_done(out):
        return load_ingested(out)
    result = ingest_lax(dicom_root(data), labels, out, views=option_views(options), target=TARGET)
    mark_done(out, INGEST_OUTPUTS, layout=result.layout)
    return result


def ensemble_step(cv_dir: Path, retrained: bool, options: Options) -> None:
    """Fold and view ensembles of the cv folder, unless already done with the same units,
    and the age interval state fitted on their out-of-fold residuals (`UNCERTAINTY_FILE`)."""
    folder = cv_dir / ENSEMBLE_DIR
    if is_done(folder) and not retrained:
        return
    ensemble_cv(cv_dir, folder, method=str(options.get("method", DEFAULT_METHOD)),
                n_boot=int(options.get("n_boot", 1000)), seed=options.seed)
    table = pd.read_csv(folder / "predictions.csv")
    write_age_state(folder, fit_age_intervals(table[TARGET], table["pred"], _coverage(options)))
    mark_done(folder, ENSEMBLE_OUTPUTS)


def _coverage(options: Options) -> float:
    """The ``coverage`` option of the age intervals (default 0.9)."""
    return float(options.get("coverage", 0.9))


def oof_predictions(cv_dir: Path, out: Path, data: Path, labels: Path, problems: list,
                    started: float, recipe: str, coverage: float = 0.9) -> Path:
    """The ensemble's out-of-fold predictions written as the prediction contract, with
    cross-conformal ``age_lo`` / ``age_hi`` (each outer fold from the others' residuals)."""
    table = pd.read_csv(cv_dir / ENSEMBLE_DIR / "predictions.csv", dtype={"subject": str})
    views = [c.removeprefix("pred_") for c in table.columns
             if c.startswith("pred_") and c != "pred_corrected"]  # per view, calibrated
    contract = table[["subject"]].rename(columns={"subject": "sample_id"})
    contract["patient_id"] = table["subject"]
    contract[TARGET] = table["pred"]
    for view in views:
        contract[f"{TARGET}_{view}"] = table[f"pred_{view}"]
    contract[f"{TARGET}_lo"], contract[f"{TARGET}_hi"] = cross_conformal(table, coverage)
    contract[BASELINE_COLUMN] = table["baseline"]
    contract["outer"] = table["outer"]
    ood = oof_ood_scores(cv_dir)
    if ood is not None:
        contract = add_ood_columns(contract, ood[0])
    run = run_record(PIPELINE, TASK, None, data, started, model=str(cv_dir), recipe=recipe,
                     labels=str(Path(labels).resolve()), target=TARGET, views=views,
                     model_kind="cv ensemble, out of fold",
                     uncertainty={"intervals": [TARGET], "coverage": coverage,
                                  "method": "cross-conformal over the outer folds"},
                     ood=None if ood is None else {**ood[1], "scored_by": "the subject's "
                                                   "outer fold models (out of fold)"})
    return write_contract(out, contract, problems, run)


def run_age(data: Path, out: Path, options: Options) -> dict[str, Any]:
    """The pipeline's run (see the module docstring); the evaluation's metrics."""
    started, data, out = time.time(), Path(data), Path(out)
    labels = Path(options.labels) if options.labels else data / AGES_FILE
    if not labels.is_file():
        raise InputError(labels, "labels", "an ages CSV (subject, age) for the cohort",
                         "no such file", f"put {AGES_FILE} in the cohort or give --labels")
    logging.getLogger(LIGHTNING_LOGGER).setLevel(logging.WARNING)
    ingested = ingest_step(data, out / "ingest", labels, options)
    manifest = ingested.manifest.dropna(subset=[TARGET])
    if manifest.empty:
        raise InputError(data, "series", "long-axis series of subjects with an age", "none")
    recipe_name = options.recipe or DEFAULT_RECIPE
    recipe = load_recipe(recipe_name, _overrides(options))
    size = recipe.data.size if isinstance(recipe.data.size, int) else recipe.data.size[0]
    summary = prepare(manifest, out / "store", PrepSpec(size=int(size), channels=1,
                                                         crop=str(options.get("crop", "auto"))),
                      workers=int(options.get("workers", 1)))
    accelerator = "gpu" if str(options.device).startswith("cuda") else None
    result = run_cv(recipe, out / "store", out / "cv", outer=int(options.get("outer", 5)),
                    inner=int(options.get("inner", 2)), seed=options.seed, by="view",
                    tta=int(options.get("tta", 5)), device=options.device,
                    max_epochs=options.max_epochs, accelerator=accelerator)
    ensemble_step(out / "cv", bool(result.trained), options)
    ood_step(out / "cv", batch_size=options.batch_size, device=options.device)
    oof_predictions(out / "cv", out / "predictions", data, labels,
                    [*ingested.problems, *summary.problems], started, recipe_name,
                    _coverage(options))
    metrics = evaluate_age(out / "predictions", out / "evaluation",
                           Options(extra={"n_boot": options.get("n_boot", 1000)}))
    report_age(out / "evaluation", None)
    return metrics


def synth_age(out: Path, n: int, seed: int) -> Path:
    """The pipeline's synth: a two-view long-axis cohort (dicom/, ages.csv) -> its root; a
    cohort already there with `n` subjects is kept (a rerun demo resumes)."""
    out = Path(out)
    ages = out / AGES_FILE
    if ages.is_file() and (out / "truth.csv").is_file() and len(pd.read_csv(ages)) == n:
        return out
    return synth_cmr_lax_cohort(out, n=n, seed=seed).root
