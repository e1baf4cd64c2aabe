"""Grad-CAM overlays of a CXR ensemble: the pipeline's `explain`, and the examples a run
draws (the most positive test images)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cinelab.errors import Problem
from cinelab.infer.contract import write_problems
from cinelab.pipelines.cxr.predict import CxrEnsemble, cxr_gradcam, list_inputs, load_cxr_ensemble
from cinelab.pipelines.registry import Options
from cinelab.utils import mark_done

DEFAULT_GRADCAMS = 6
STAGE = "gradcam"
PROBLEMS_CSV = "problems.csv"


def most_positive(predictions: pd.DataFrame, limit: int = DEFAULT_GRADCAMS) -> list[Path]:
    """Files of the `limit` highest ensemble probabilities (Grad-CAM examples)."""
    top = predictions.sort_values("probability", ascending=False).head(limit)
    return [Path(p) for p in top["file"]]


def write_gradcams(ensemble: CxrEnsemble | str | Path, files: list[Path], out: str | Path,
                   member: str | None = None, limit: int = DEFAULT_GRADCAMS
                   ) -> tuple[list[Path], list[Problem]]:
    """Grad-CAM overlays (PNG) of the first `limit` readable files, and the problems of the
    files skipped; problems.csv and done.json are written beside the PNGs."""
    ens = ensemble if isinstance(ensemble, CxrEnsemble) else load_cxr_ensemble(ensemble)
    written: list[Path] = []
    problems: list[Problem] = []
    for path in files:
        if len(written) >= limit:
            break
        target = Path(out) / f"{Path(path).stem}{'-' + member if member else ''}.png"
        try:
            cxr_gradcam(ens, path, target, member=member)
            written.append(target)
        except Exception as exc:  # one bad file is reported and skipped
            problems.append(Problem.from_exception(path, STAGE, exc))
    write_problems(Path(out) / PROBLEMS_CSV, problems)
    mark_done(out, [p.name for p in written] + [PROBLEMS_CSV])
    return written, problems


def explain(model: Path, source: Path, out: Path, options: Options) -> Path:
    """The pipeline's explain: Grad-CAM of the weighted ensemble (or ``member``) over the
    original radiographs of `source`, at most ``limit`` of them."""
    _, files, _ = list_inputs(source)
    write_gradcams(model, files, out, options.get("member"),
                   int(options.get("limit", DEFAULT_GRADCAMS)))
    return Path(out)
