"""CLI: `cinelab synth cmr-lax` and the `cinelab age` group (ingest long-axis cines, fold/view
ensembles with age gaps, report). The generic `cinelab cv` lives in `cinelab.commands.cv`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cinelab.cliutil import console, friendly, print_problems
from cinelab.errors import InputError
from cinelab.pipelines.age.evaluate import ensemble_cv
from cinelab.pipelines.age.layout import ingest_lax
from cinelab.pipelines.age.ood import ood_step, oof_flag_metrics
from cinelab.pipelines.age.report import build_age_report
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.prep.prepare import PrepSpec, prepare

age_app = typer.Typer(no_args_is_help=True,
                      help="Age from long-axis cine MRI: ingest, ensembles, report.")


def _views(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def synth_cmr_lax(
    out: Annotated[Path, typer.Option(help="Folder for dicom/, ages.csv and truth.csv.")],
    n: Annotated[int, typer.Option(help="Number of subjects.")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    views: Annotated[str, typer.Option(help="Long-axis views, comma-separated.")] = "3ch,4ch",
    target: Annotated[str, typer.Option(help="What the images encode (only 'age').")] = "age",
    size: Annotated[int, typer.Option(help="Image rows and columns.")] = 80,
) -> None:
    """Synthetic long-axis cine MRI (3ch/4ch DICOM series) whose anatomy ages, + ages.csv."""
    if target != "age":
        raise InputError(None, "--target", "'age' (the only target of long-axis cohorts)",
                         repr(target))
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
    result = ingest_lax(root, ages, out, views=_views(views), mapping=mapping, target=target)
    print_problems(result.problems)
    counts = result.manifest["view"].value_counts().to_dict() if len(result.manifest) else {}
    console.print(f"{len(result.manifest)} series {counts}, {len(result.problems)} "
                  f"problem(s) -> {out}")
    if result.manifest.empty:
        raise InputError(root, "series", f"series of the views {views}", "no series",
                         "check the SeriesDescriptions or give --mapping")
    if store is not None:
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
    ood: Annotated[bool, typer.Option(help="Fit each model's OOD detector as `cinelab run` "
                                           "does (ood.json beside model.pt; resumes).")] = True,
    device: Annotated[str, typer.Option(help="Device for the OOD features.")] = "cpu",
) -> None:
    """Fold and view ensembles (weights on inner validation), scores, plots, age-gap table;
    each model's OOD detector (`ood_step`, as the age run fits them)."""
    metrics = ensemble_cv(cv_dir, out, method=method, variant=variant, n_boot=n_boot,
                          calibrate=calibrate)
    if ood:
        fitted = ood_step(cv_dir, device=device)
        flags = oof_flag_metrics(cv_dir)
        console.print(f"OOD detectors: {fitted} fitted" + (
            "; none usable (see the warnings)" if flags is None else
            f"; out of fold {flags['ood_flagged']:.1%} of {flags['ood_n']} subjects "
            "flagged"))
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
    console.print(f"report -> {build_age_report(path, out)}")


def register(apps: dict[str, typer.Typer]) -> None:
    """Add `synth cmr-lax` and the `age` group to the CLI."""
    apps["synth"].command("cmr-lax")(friendly(synth_cmr_lax))
    apps["main"].add_typer(age_app, name="age")
