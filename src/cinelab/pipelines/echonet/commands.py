"""EchoNet-specific verbs: `cinelab measure tracings` and `cinelab import echonet`.

The generic verbs (predict, evaluate, report, run, demo) reach this pipeline through its
`Pipeline` declaration; these two have no generic counterpart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, friendly, print_problems
from cinelab.errors import InputError
from cinelab.pipelines.echonet.importers import import_echonet as import_api
from cinelab.pipelines.echonet.tracings import measure_cohort_tracings
from cinelab.utils import write_csv


@friendly
def measure_tracings(
    source: Annotated[Path, typer.Argument(help="EchoNet folder, ingest folder or store.")],
    out: Annotated[Path, typer.Option(help="CSV to write (one row per video).")],
) -> None:
    """EDV, ESV and EF by the method of discs from VolumeTracings, beside FileList values."""
    table, problems = measure_cohort_tracings(source)
    write_csv(table, out)
    print_problems(problems)
    console.print(f"{len(table)} videos measured -> {out}")


def _floats(name: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(None, f"--{name}", "comma-separated numbers, e.g. '31.8,32.0,32.4'",
                         repr(text)) from None


@friendly
def import_echonet(
    out: Annotated[Path, typer.Option(help="Folder for echonet-seg.pt and echonet-ef.pt.")],
    seg: Annotated[Path | None, typer.Option(help="deeplabv3_resnet50_random.pt")] = None,
    ef: Annotated[Path | None, typer.Option(help="r2plus1d_18_32_2_pretrained.pt")] = None,
    data: Annotated[Path | None, typer.Option(help="Store whose mean/std to record.")] = None,
    mean: Annotated[str | None, typer.Option(help="Per-channel mean, 0-255: 'a,b,c'.")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std, 0-255: 'a,b,c'.")] = None,
    frames: Annotated[int, typer.Option(help="Frames per clip of the EF model.")] = 32,
    period: Annotated[int, typer.Option(help="Sampling period of the EF model.")] = 2,
) -> None:
    """Import EchoNet-Dynamic's released weights as self-describing cinelab checkpoints."""
    written = import_api(seg, ef, out, frames=frames, period=period,
                         mean=_floats("mean", mean), std=_floats("std", std), store=data)
    for name, path in written.items():
        console.print(f"{name} -> {path}")


def register(apps: dict[str, Any]) -> None:
    """Add `measure tracings` and `import echonet` to the CLI's groups."""
    apps["measure"].command("tracings")(measure_tracings)
    apps["import"].command("echonet")(import_echonet)
