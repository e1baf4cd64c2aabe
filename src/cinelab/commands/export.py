"""`cinelab export CKPT --format onnx|torchscript --out FILE`: a checkpoint for other runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, friendly
from cinelab.infer.engines import (
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    FORMAT_SUFFIX,
    export_checkpoint,
    read_sidecar,
    sidecar_path,
)


def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A cinelab checkpoint (model.pt).")],
    format: Annotated[str, typer.Option("--format", help=f"One of: "
                                        f"{', '.join(EXPORT_FORMATS)}.")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="File to write (default: the checkpoint "
                                                  "with .onnx / .ts).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = DEFAULT_OPSET,
) -> None:
    """Export a checkpoint's model (ONNX or TorchScript, dynamic batch) with a JSON sidecar
    (input spec, opset, dynamic axes, checkpoint hash); checked against eager PyTorch."""
    target = out or Path(checkpoint).with_suffix(FORMAT_SUFFIX.get(format, ".out"))
    written = export_checkpoint(checkpoint, target, format, opset=opset)
    side = read_sidecar(written)
    console.print(f"{format}: {written} (+ {sidecar_path(written).name}); max difference vs "
                  f"eager {side['max_relative_difference_vs_eager']:.2g} (tolerance "
                  f"{side['tolerance']:g})", highlight=False)


def register(apps: dict[str, Any]) -> None:
    """Add `export` to the main app."""
    apps["main"].command("export")(friendly(export_cmd))
