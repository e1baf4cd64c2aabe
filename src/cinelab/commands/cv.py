"""`cinelab cv`: nested cross-validation of any recipe on a prepared store (resumable)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from cinelab.cliutil import console, friendly
from cinelab.train.cv import run_cv
from cinelab.train.recipe import load_recipe

LIGHTNING_LOGGER = "lightning.pytorch"


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
    logging.getLogger(LIGHTNING_LOGGER).setLevel(logging.WARNING)
    loaded = load_recipe(recipe, set_ or [])
    result = run_cv(loaded, data, out, outer=outer, inner=inner, seed=seed, bins=bins, by=by,
                    tta=tta, device=device, on_event=console.print, accelerator=accelerator,
                    max_epochs=max_epochs, num_workers=num_workers)
    console.print(f"{len(result.trained)} model(s) trained, {len(result.skipped)} finished "
                  f"before; arms {', '.join(result.arms)} -> {out}")


def register(apps: dict[str, typer.Typer]) -> None:
    """Add `cinelab cv` to the main app."""
    apps["main"].command("cv")(friendly(cv))
