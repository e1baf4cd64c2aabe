"""Grad-CAM overlays of a CXR ensemble: the pipeline's `explain`, and the examples a run
draws (the most positive test images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.transforms import Normalize
from cinelab.errors import InputError, Problem
from cinelab.explain.saliency import ensemble_cam, grad_cam, write_cam_png
from cinelab.infer.contract import write_problems
from cinelab.pipelines.cxr.crop import CxrVariants, restore_map
from cinelab.pipelines.cxr.predict import (
    CxrEnsemble,
    input_files,
    list_inputs,
    load_cxr_model,
    prepare_image,
    to_batch,
)
from cinelab.pipelines.registry import Options
from cinelab.utils import mark_done

DEFAULT_GRADCAMS = 6
STAGE = "gradcam"
PROBLEMS_CSV = "problems.csv"


def variant_transform(variants: CxrVariants, crop: str, size: int) -> dict[str, Any]:
    """The transform dict `restore_map` needs for one variant."""
    box = variants.box if crop == "crop" else None
    return {"box": None if box is None else list(box), "size": size, "fit": "stretch",
            "original_shape": list(variants.original_shape)}


def cxr_gradcam(ensemble: CxrEnsemble | str | Path, path: str | Path,
                out_png: str | Path | None = None, member: str | None = None,
                mask_source: str = "auto", alpha: float = 0.4) -> np.ndarray:
    """Grad-CAM of one member (by name) or of the weighted ensemble on the original image
    (H, W) float32; also written as an overlay PNG when `out_png` is given."""
    ens = ensemble if isinstance(ensemble, CxrEnsemble) else load_cxr_model(ensemble)
    chosen = ens.members if member is None else [m for m in ens.members if m.name == member]
    if not chosen:
        raise InputError(None, "member", f"one of {[m.name for m in ens.members]}",
                         repr(member))
    image, variants = prepare_image(ens, path, mask_source)
    maps = []
    for m in chosen:
        spec = m.loaded.input_spec
        x = Normalize(spec.mean, spec.std)(to_batch(variants.images[(m.crop, m.size)][None],
                                                    spec.channels))
        cam = grad_cam(m.loaded.model, x)[0]
        maps.append(restore_map(cam, variant_transform(variants, m.crop, m.size)))
    weights = [ens.weights.weights[ens.members.index(m)] for m in chosen]
    cam = ensemble_cam(maps, weights)
    if out_png is not None:
        write_cam_png(out_png, image, cam, alpha)
    return cam


def most_positive(predictions: pd.DataFrame, limit: int = DEFAULT_GRADCAMS) -> list[Path]:
    """Files of the `limit` highest ensemble probabilities (Grad-CAM examples)."""
    top = predictions.sort_values("probability", ascending=False).head(limit)
    return [Path(p) for p in top["file"]]


def write_gradcams(ensemble: CxrEnsemble | str | Path, files: list[Path], out: str | Path,
                   member: str | None = None, limit: int = DEFAULT_GRADCAMS,
                   done: dict[str, Any] | None = None) -> tuple[list[Path], list[Problem]]:
    """Grad-CAM overlays (PNG) of the first `limit` readable files, and the problems of the
    files skipped; problems.csv and done.json (with `done`'s fields) go beside the PNGs."""
    ens = ensemble if isinstance(ensemble, CxrEnsemble) else load_cxr_model(ensemble)
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
    mark_done(out, [p.name for p in written] + [PROBLEMS_CSV], **(done or {}))
    return written, problems


def explain(model: Path, source: Path, out: Path, options: Options) -> Path:
    """The pipeline's explain: Grad-CAM of the weighted ensemble (or ``member``) over the
    original radiographs of `source` (or of a cohort's ``options.split``), at most ``limit``
    of them."""
    chosen, _, _ = input_files(source, options)
    files = chosen if isinstance(chosen, list) else list_inputs(chosen)[1]
    write_gradcams(model, files, out, options.get("member"),
                   int(options.get("limit", DEFAULT_GRADCAMS)))
    return Path(out)
