"""`cinelab calibrate MODEL --data STORE --out DIR [--split val]`: know when not to trust it.

Fits a trained model's uncertainty state (prediction intervals, OOD detector, probability
calibration: whatever its pipeline provides) on a split training never saw, and stores it in
the checkpoint, so that every later `cinelab predict` adds ``<output>_lo``/``<output>_hi``,
``ood_score``/``ood_flag`` and calibrated probabilities. Dispatches through the pipeline
registry (`Pipeline.calibrate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, friendly, parse_options
from cinelab.errors import InputError
from cinelab.pipelines.registry import Options, list_pipelines, pipeline_for_model


def calibrate_cmd(
    model: Annotated[Path, typer.Argument(help="Checkpoint (model.pt) or model folder.")],
    data: Annotated[Path, typer.Option(help="Labelled data holding the calibration split "
                                            "(a prepared store; cmr: any labelled source).")],
    out: Annotated[Path, typer.Option(help="Folder for the calibration predictions and "
                                           "calibration.json.")],
    split: Annotated[str, typer.Option(help="Split training never saw (\"\": every "
                                            "sample).")] = "val",
    pipeline: Annotated[str | None, typer.Option(help="Pipeline name (default: found from "
                                                      "the model).")] = None,
    batch_size: Annotated[int, typer.Option(help="Items per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    option: Annotated[list[str] | None, typer.Option(help="Pipeline option key=value "
                                                          "(repeatable).")] = None,
) -> None:
    """Fit intervals / OOD / calibration on a held-out split and store them in MODEL."""
    chosen = pipeline_for_model(model, pipeline)
    if chosen.calibrate is None:
        able = [p.name for p in list_pipelines() if p.calibrate is not None]
        raise InputError(model, "pipeline", f"one that calibrates ({', '.join(able)})",
                         chosen.name)
    options = Options(split=split, device=device, batch_size=batch_size,
                      extra=parse_options(option))
    summary = chosen.calibrate(model, data, out, options)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in summary.items() if k not in ("checkpoint", "store"))
    console.print(f"{chosen.name}: {shown}", highlight=False)
    console.print(f"stored in {summary.get('checkpoint', model)}; summary -> {out}")


def register(apps: dict[str, Any]) -> None:
    """Add `calibrate` to the main app."""
    apps["main"].command("calibrate")(friendly(calibrate_cmd))
