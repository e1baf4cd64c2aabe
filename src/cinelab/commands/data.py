"""`cinelab ingest` and `cinelab prepare`: any registered layout in, a prepared store out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from cinelab.cliutil import console, friendly, parse_options, print_problems
from cinelab.errors import CinelabError
from cinelab.formats.ingest import LAYOUTS, Ingested, ingest, load_ingested, write_ingested
from cinelab.prep.deid_ingest import protect_dicom_ingest
from cinelab.prep.prepare import PrepSpec, prepare

DICOM_LAYOUT = "dicom"


def ingest_cmd(
    root: Annotated[Path, typer.Argument(help="Cohort folder in any registered layout.")],
    out: Annotated[Path, typer.Option(help="Folder for manifest.csv, tracings.csv, problems.csv")],
    layout: Annotated[str, typer.Option(help="auto (detected) or a layout name; "
                                             "`cinelab layouts` lists them.")] = "auto",
    labels: Annotated[Path | None, typer.Option(help="Label CSV (DICOM/video folders).")] = None,
    option: Annotated[list[str] | None, typer.Option(help="Layout option key=value "
                                                          "(repeatable).")] = None,
) -> None:
    """Read a cohort layout into a validated manifest and a problems report. A DICOM folder
    (layout dicom) with --option pseudonymise=true [--option idmap=PATH] gets keyed pseudonyms
    and de-identified copies (`cinelab.prep.deid_ingest`); burned-in annotation is flagged."""
    options = {"out": out, **parse_options(option)}  # layouts that de-identify write beside it
    result = ingest(root, layout=layout, labels=labels, options=options)
    if result.layout == DICOM_LAYOUT:  # pseudonymise=true: no names, raw ids or raw paths
        result = protect_dicom_ingest(result, root, out, bool(options.get("pseudonymise")),
                                      options.get("idmap"))
    write_ingested(result, out)
    print_problems(result.problems)
    console.print(f"{result.layout}: {len(result.manifest)} samples, "
                  f"{len(result.problems)} problem(s) -> {out}")
    if result.manifest.empty:
        raise CinelabError(f"{root}: no usable sample found")


def layouts_cmd() -> None:
    """List every layout `cinelab ingest` reads."""
    for name, layout in LAYOUTS.items():
        console.print(f"{name:12s} {layout.description}", highlight=False)


def prepare_cmd(
    source: Annotated[Path, typer.Argument(help="An ingest folder, a manifest CSV, or a cohort.")],
    out: Annotated[Path, typer.Option(help="Prepared store folder.")],
    size: Annotated[int, typer.Option(help="Output frame size.")] = 112,
    channels: Annotated[int, typer.Option(help="3 (RGB) or 1 (greyscale).")] = 3,
    crop: Annotated[str, typer.Option(help="auto, always or never crop to the sector.")] = "auto",
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address.")] = None,
    force: Annotated[bool, typer.Option(help="Recompute complete samples too.")] = False,
) -> None:
    """Decode every sample once into a memory-mappable, resumable prepared store."""
    cohort = _load_cohort(source)
    spec = PrepSpec(size=size, channels=channels, crop=crop)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("preparing", total=len(cohort.manifest))
        summary = prepare(cohort.manifest, out, spec, tracings=cohort.tracings,
                          workers=workers, scheduler=scheduler, force=force,
                          on_result=lambda _: progress.advance(task))
    print_problems(summary.problems)
    console.print(f"prepared {summary.prepared}, already complete {summary.skipped}, "
                  f"failed {summary.failed} -> {out}")
    if summary.usable == 0:
        raise CinelabError(f"{source}: nothing usable was produced")


def _load_cohort(source: Path) -> Ingested:
    if source.is_file() or (source / "manifest.csv").exists():
        return load_ingested(source)
    return ingest(source)


def register(apps: dict[str, Any]) -> None:
    """Add `ingest`, `layouts` and `prepare` to the main app."""
    apps["main"].command("ingest")(friendly(ingest_cmd))
    apps["main"].command("layouts")(friendly(layouts_cmd))
    apps["main"].command("prepare")(friendly(prepare_cmd))
