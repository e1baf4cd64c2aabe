"""CLI: `cinelab cv` (nested cross-validation of any recipe), `cinelab synth cmr-lax` and the
`cinelab age` group (ingest long-axis cines, fold/view ensembles with age gaps, report)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from cinelab.cliutil import console, friendly, print_problems
from cinelab.errors import CinelabError

age_app = typer.Typer(no_args_is_help=True,
                      help="Age from long-axis cine MRI: ingest, ensembles, report.")
LIGHTNING_LOGGER = "lightning.pytorch"


def _views(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def cv(
    recipe: Annotated[str, typer.Argument(help="Recipe name (e.g. cmr-age-cpu) or YAML path.")],
    data: Annotated[Path, typer.Option(help="Prepared store.")],
    out: Annotated[Path, typer.Option(help="Cross-validation folder (resumes when it exists).")],
    outer: Annotated[int, typer.Option(help="Outer folds (test folds by subject).")] = 5,
    inner: Annotated[int, typer.Option(help="Inner folds (validation, model selection).")] = 2,
    by: Annotated[str | None, typer.Option(help="One model per value of this manifest "
                                                "column, e.g. view.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    bins: Annotated[int, typer.Option(help="Target bins to stratify on.")] = 5,
    tta: Annotated[int, typer.Option(help="Test-time augmentation views (1 = none).")] = 5,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
    device: Annotated[str, typer.Option(help="Device for predictions: cpu, cuda, ...")] = "cpu",
    accelerator: Annotated[str | None, typer.Option(help="Training: cpu, gpu, auto.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
) -> None:
    """Nested K x J cross-validation by subject of any recipe; saves per-fold predictions."""
    from cinelab.train.cv import run_cv
    from cinelab.train.recipe import load_recipe

    logging.getLogger(LIGHTNING_LOGGER).setLevel(logging.WARNING)
    loaded = load_recipe(recipe, set_ or [])
    result = run_cv(loaded, data, out, outer=outer, inner=inner, seed=seed, bins=bins, by=by,
                    tta=tta, device=device, on_event=console.print, accelerator=accelerator,
                    max_epochs=max_epochs, num_workers=num_workers)
    console.print(f"{len(result.trained)} model(s) trained, {len(result.skipped)} finished "
                  f"before; arms {', '.join(result.arms)} -> {out}")


def synth_cmr_lax(
    out: Annotated[Path, typer.Option(help="Folder for dicom/, ages.csv and truth.csv.")],
    n: Annotated[int, typer.Option(help="Number of subjects.")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    views: Annotated[str, typer.Option(help="Long-axis views, comma-separated.")] = "3ch,4ch",
    target: Annotated[str, typer.Option(help="What the images encode (only 'age').")] = "age",
    size: Annotated[int, typer.Option(help="Image rows and columns.")] = 80,
) -> None:
    """Synthetic long-axis cine MRI (3ch/4ch DICOM series) whose anatomy ages, + ages.csv."""
    from cinelab.pipelines.age.synth import synth_cmr_lax_cohort

    if target != "age":
        raise CinelabError(f"--target: expected 'age' (the only target of long-axis "
                           f"cohorts), found {target!r}")
    with console.status(f"synthesising {n} subjects"):
        cohort = synth_cmr_lax_cohort(out, n=n, seed=seed, views=_views(views), size=size)
    console.print(f"wrote {n} subjects to {cohort.dicom_root}, ages to {out / 'ages.csv'}")


@age_app.command("ingest")
@friendly
def age_ingest(
    root: Annotated[Path, typer.Argument(help="Folder of long-axis cine DICOM series.")],
    ages: Annotated[Path, typer.Option(help="CSV: subject, age, optional covariates.")],
    out: Annotated[Path, typer.Option(help="Ingest folder (manifest, series lists, problems).")],
    views: Annotated[str, typer.Option(help="Views to keep, comma-separated.")] = "3ch,4ch",
    mapping: Annotated[Path | None, typer.Option(help="CSV: SeriesDescription or "
                                                      "SeriesInstanceUID -> view.")] = None,
    target: Annotated[str, typer.Option(help="Target column of the ages CSV.")] = "age",
    store: Annotated[Path | None, typer.Option(help="Also prepare a store here.")] = None,
    size: Annotated[int, typer.Option(help="Store frame size (px).")] = 128,
    crop: Annotated[str, typer.Option(help="auto/heart, centre or never.")] = "auto",
    workers: Annotated[int | None, typer.Option(help="Prepare processes.")] = None,
) -> None:
    """Pick 3ch/4ch series per subject, join the ages; optionally prepare 25-frame cines."""
    from cinelab.pipelines.age.layout import ingest_lax

    result = ingest_lax(root, ages, out, views=_views(views), mapping=mapping, target=target)
    print_problems(result.problems)
    counts = result.manifest["view"].value_counts().to_dict() if len(result.manifest) else {}
    console.print(f"{len(result.manifest)} series {counts}, {len(result.problems)} "
                  f"problem(s) -> {out}")
    if result.manifest.empty:
        raise CinelabError(f"{root}: no series of the views {views}")
    if store is not None:
        from cinelab.prep.prepare import PrepSpec, prepare

        summary = prepare(result.manifest, store, PrepSpec(size=size, channels=1, crop=crop),
                          workers=workers)
        print_problems(summary.problems)
        console.print(f"prepared {summary.prepared}, already complete {summary.skipped}, "
                      f"failed {summary.failed} -> {store}")


@age_app.command("ensemble")
@friendly
def age_ensemble(
    cv_dir: Annotated[Path, typer.Argument(help="A `cinelab cv` folder.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default CV_DIR/ensemble).")]
    = None,
    method: Annotated[str, typer.Option(help="View weights: nnls, bmc or mean.")] = "nnls",
    variant: Annotated[str, typer.Option(help="plain, tta or auto (inner validation).")]
    = "auto",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    calibrate: Annotated[bool, typer.Option(help="Per-view linear calibration fitted on "
                                                 "inner validation.")] = True,
) -> None:
    """Fold and view ensembles (weights on inner validation), scores, plots, age-gap table."""
    from cinelab.pipelines.age.evaluate import ensemble_cv

    metrics = ensemble_cv(cv_dir, out, method=method, variant=variant, n_boot=n_boot,
                          calibrate=calibrate)
    head = metrics["headline"]
    for name, value in head["rmse"].items():
        console.print(f"RMSE {name}: {value:.2f}")
    console.print(f"ensemble / training-mean RMSE: {head['rmse_ratio_to_baseline']:.2f}; "
                  f"-> {out or cv_dir / 'ensemble'}")


@age_app.command("report")
@friendly
def age_report(
    path: Annotated[Path, typer.Argument(help="A cv folder or its ensemble folder.")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write.")] = None,
) -> None:
    """One self-contained HTML page of the age ensemble."""
    from cinelab.pipelines.age.report import build_age_report

    console.print(f"report -> {build_age_report(path, out)}")


def register(apps: dict[str, typer.Typer]) -> None:
    """Add `cv`, `synth cmr-lax` and the `age` group to the CLI."""
    apps["main"].command("cv")(friendly(cv))
    apps["synth"].command("cmr-lax")(friendly(synth_cmr_lax))
    apps["main"].add_typer(age_app, name="age")
