"""`cinelab run PIPELINE DATA` (the whole chain) and `cinelab demo [PIPELINE]` (synthetic)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cinelab.cliutil import console, friendly, parse_options
from cinelab.pipelines.registry import Options, Pipeline, get_pipeline, list_pipelines
from cinelab.utils import write_json

DEMO_SUMMARY = "demo.json"


def run_cmd(
    pipeline: Annotated[str, typer.Argument(help="Pipeline name (echonet, rvf, cmr, cxr, age).")],
    data: Annotated[Path, typer.Argument(help="Raw cohort folder in one of its layouts.")],
    out: Annotated[Path, typer.Option(help="Folder for every step (resumable).")],
    recipe: Annotated[str | None, typer.Option(help="Recipe (default: the CPU recipe).")]
    = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")]
    = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    option: Annotated[list[str] | None, typer.Option(help="Pipeline option key=value "
                                                          "(repeatable).")] = None,
) -> None:
    """Ingest, prepare, train, predict, evaluate and report one cohort (resumable)."""
    chosen = get_pipeline(pipeline)
    metrics = chosen.run(data, out, Options(recipe=recipe, max_epochs=max_epochs,
                                            device=device, extra=parse_options(option)))
    show_targets([(chosen, metrics, None)], Console())


def demo_cmd(
    pipelines: Annotated[list[str] | None, typer.Argument(help="Pipelines (default: all).")]
    = None,
    out: Annotated[Path, typer.Option(help="Folder for every demo output.")] = Path("runs/demo"),
    n: Annotated[int | None, typer.Option(help="Cohort size (default: the pipeline's).")]
    = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")]
    = None,
) -> None:
    """The synthetic end to end of each pipeline, its metrics printed against its targets."""
    chosen = [get_pipeline(name) for name in pipelines] if pipelines else list_pipelines()
    rows = []
    for pipeline in chosen:
        console.print(f"[bold]{pipeline.name}[/bold]: {pipeline.title}")
        started = time.time()
        metrics = run_demo(pipeline, out / pipeline.name, n=n, seed=seed, max_epochs=max_epochs)
        rows.append((pipeline, metrics, time.time() - started))
    write_json(out / DEMO_SUMMARY, {p.name: {"metrics": m, "seconds": s} for p, m, s in rows})
    show_targets(rows, Console())


def run_demo(pipeline: Pipeline, out: Path, n: int | None = None, seed: int = 0,
             max_epochs: int | None = None) -> dict[str, Any]:
    """Synthesise the pipeline's cohort (kept when already there), then run the chain."""
    base = pipeline.demo_options
    options = dataclasses.replace(base, n=n or base.n, seed=seed,
                                  max_epochs=max_epochs or base.max_epochs)
    root = pipeline.synth(out / "data", int(options.n or 0), seed)
    return pipeline.run(root, out, options)


def show_targets(rows: list[tuple[Pipeline, dict[str, Any], float | None]],
                 out: Console) -> None:
    """One table: each pipeline's target metrics, value, target and met/MISSED."""
    table = Table(title="cinelab: metrics against targets")
    for column in ("pipeline", "metric", "value", "target", "status", "seconds"):
        table.add_column(column)
    for pipeline, metrics, seconds in rows:
        for target in pipeline.targets:
            value = metrics.get(target.metric)
            met = target.met(metrics)
            status = "n/a" if met is None else ("met" if met else "MISSED")
            shown = f"{value:.3f}" if isinstance(value, int | float) else "-"
            table.add_row(pipeline.name, target.metric, shown, f"{target.op} {target.value:g}",
                          status, "" if seconds is None else f"{seconds:.0f}")
    out.print(table)


def register(apps: dict[str, Any]) -> None:
    """Add `run` and `demo` to the main app."""
    apps["main"].command("run")(friendly(run_cmd))
    apps["main"].command("demo")(friendly(demo_cmd))
