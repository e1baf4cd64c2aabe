"""`cinelab export CKPT --format onnx|torchscript --out FILE`: a checkpoint for other runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, friendly
from cinelab.infer.engine_outputs import FeatureSpec
from cinelab.infer.engines import (
    AUTO,
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    FORMAT_SUFFIX,
    export_checkpoint,
    read_sidecar,
    sidecar_path,
)

NONE = "none"


def feature_choice(features: str, pool: str) -> FeatureSpec | None | str:
    """``auto`` (the checkpoint's OOD detector's layer, else the penultimate features),
    ``none``, or a module name (its output, pooled by `pool`; ``""`` = penultimate)."""
    if features in (AUTO, NONE):
        return None if features == NONE else AUTO
    return FeatureSpec.request(features or None, None, pool)


def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A cinelab checkpoint (model.pt).")],
    format: Annotated[str, typer.Option("--format", help=f"One of: "
                                        f"{', '.join(EXPORT_FORMATS)}.")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="File to write (default: the checkpoint "
                                                  "with .onnx / .ts).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = DEFAULT_OPSET,
    features: Annotated[str, typer.Option(help="Second output 'features': auto (where the "
                                               "checkpoint's OOD detector takes them), none, "
                                               "or a module name.")] = AUTO,
    pool: Annotated[str, typer.Option(help="Pooling of a named module's features: mean or "
                                           "meanstd.")] = "mean",
) -> None:
    """Export a checkpoint's model (ONNX or TorchScript, dynamic batch) with a JSON sidecar
    (input spec, opset, dynamic axes, checkpoint hash, the OOD features output); checked
    against eager PyTorch."""
    target = out or Path(checkpoint).with_suffix(FORMAT_SUFFIX.get(format, ".out"))
    written = export_checkpoint(checkpoint, target, format, opset=opset,
                                features=feature_choice(features, pool))
    side = read_sidecar(written)
    found = side["features"]
    console.print(f"{format}: {written} (+ {sidecar_path(written).name}); outputs "
                  f"{', '.join(side['output_names'])}; max difference vs eager "
                  f"{side['max_relative_difference_vs_eager']:.2g} (tolerance "
                  f"{side['tolerance']:g})" + ("" if found is None else
                                               f"; features: {FeatureSpec.from_dict(found)}, "
                                               f"dim {found['dim']}"), highlight=False)


def register(apps: dict[str, Any]) -> None:
    """Add `export` to the main app."""
    apps["main"].command("export")(friendly(export_cmd))
