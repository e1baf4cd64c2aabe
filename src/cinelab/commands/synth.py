"""`cinelab synth echo|cxr`: synthetic cohorts with known truth (other pipelines add theirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, friendly
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.synth.echo import synth_echo_cohort


def synth_echo(
    out: Annotated[Path, typer.Option(help="Folder to write the EchoNet-layout cohort into.")],
    n: Annotated[int, typer.Option(help="Number of videos.")] = 120,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    size: Annotated[int, typer.Option(help="Frame size in pixels.")] = 112,
    dicom: Annotated[bool, typer.Option(help="Also write multi-frame ultrasound DICOMs.")] = False,
) -> None:
    """Synthetic apical-4-chamber echo cohort in the EchoNet-Dynamic layout."""
    with console.status(f"synthesising {n} echo videos"):
        root = synth_echo_cohort(out, n=n, seed=seed, size=size, dicom=dicom)
    console.print(f"wrote {n} videos to {root}")


def synth_cxr(
    out: Annotated[Path, typer.Option(help="Folder to write the chest X-ray cohort into.")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 256,
    layout: Annotated[str, typer.Option(help="folders (DeepCOVID-XR tree) or nih.")] = "folders",
    positive_fraction: Annotated[float, typer.Option(help="Share of positive cases.")] = 0.5,
) -> None:
    """Synthetic chest X-rays with lung masks (COVID-like opacities or NIH findings)."""
    with console.status(f"synthesising {n} chest X-rays"):
        root = synth_cxr_cohort(out, n=n, seed=seed, size=size, layout=layout,
                                positive_fraction=positive_fraction)
    console.print(f"wrote {n} images to {root}")


def register(apps: dict[str, Any]) -> None:
    """Add `synth echo` and `synth cxr`."""
    apps["synth"].command("echo")(friendly(synth_echo))
    apps["synth"].command("cxr")(friendly(synth_cxr))
