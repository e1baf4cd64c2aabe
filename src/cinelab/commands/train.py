"""`cinelab train`: fit any registered task's recipe on a prepared store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, friendly
from cinelab.train.fit import fit
from cinelab.train.recipe import load_recipe
from cinelab.train.tune import overrides_from_best


def train_cmd(
    recipe: Annotated[str, typer.Argument(help="Recipe name (e.g. echonet-ef-cpu) or YAML path.")],
    data: Annotated[Path, typer.Option(help="Prepared store to train on.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, logs, model.pt.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoints/last.ckpt.")]
    = False,
    precision: Annotated[str | None, typer.Option(help="32-true, bf16-mixed, 16-mixed.")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices: 1, 2, auto, ...")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu, auto.")] = None,
    strategy: Annotated[str | None, typer.Option(help="auto, ddp, ...")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    best_params: Annotated[Path | None, typer.Option(help="best_params.yaml of `cinelab tune`; "
                                                          "--set still wins.")] = None,
) -> None:
    """Train a recipe on a prepared store (Lightning: checkpoints, resume, logs, DDP)."""
    tuned: list[str] = []
    if best_params is not None:
        tuned = overrides_from_best(best_params)
    loaded = load_recipe(recipe, tuned + (set_ or []))
    result = fit(loaded, data, out, resume=resume, precision=precision,
                 devices=_devices(devices), accelerator=accelerator, strategy=strategy,
                 max_epochs=max_epochs, num_workers=num_workers)
    console.print(f"model -> {result.best_checkpoint}; metrics {result.metrics}")


def _devices(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def register(apps: dict[str, Any]) -> None:
    """Add `train` to the main app."""
    apps["main"].command("train")(friendly(train_cmd))
