"""`cinelab serve CONFIG`: the DICOM node + HTTP service (`cinelab.serve`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import friendly
from cinelab.serve.config import load_config
from cinelab.serve.service import serve


def serve_cmd(
    config: Annotated[Path, typer.Argument(help="Serve configuration (YAML), e.g. "
                                                "examples/serve.yaml.")],
) -> None:
    """Receive studies over DICOM and HTTP, run the routed models, answer in DICOM SR/SEG,
    JSON and a review page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(load_config(config))


def register(apps: dict[str, Any]) -> None:
    """Add `serve` to the main app."""
    apps["main"].command("serve")(friendly(serve_cmd))
