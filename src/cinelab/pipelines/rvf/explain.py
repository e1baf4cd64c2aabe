"""RVF explain: guided backpropagation on both streams (videos + PNG strips, saliency.csv).

Which videos: options "ids" (a list), else the `top` (option, default 4) most confident of a
prediction folder (option "predictions", the contract's predictions.csv), else of the
store/split (one middle clip each).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cinelab.explain.guided import DEFAULT_TOP, explain_videos
from cinelab.infer.contract import read_predictions
from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf.predict import PREPARED_DIR, SCORE, checkpoint_path
from cinelab.pipelines.rvf.prepare import store_for
from cinelab.train.checkpoint import load_checkpoint


def ranking_table(predictions: str | Path | None) -> pd.DataFrame | None:
    """The contract's predictions as the table explain ranks by (sample_id, prob)."""
    if predictions is None:
        return None
    table = read_predictions(predictions)
    return pd.DataFrame({"sample_id": table["sample_id"].astype(str),
                         "prob": table[SCORE].astype(float)})


def explain_rvf(model: Path, input_path: Path, out: Path, options: Options) -> Path:
    """The pipeline's explain: saliency maps of chosen videos into `out`; returns `out`."""
    loaded = load_checkpoint(checkpoint_path(model))
    size = loaded.input_spec.size
    size = size if isinstance(size, int) else int(size[0])
    store = store_for(input_path, Path(out) / PREPARED_DIR, size, options.extra)
    ids = options.get("ids")
    explain_videos(loaded, store, out, sample_ids=None if ids is None else list(ids),
                   top=int(options.get("top", DEFAULT_TOP)),
                   predictions=ranking_table(options.get("predictions")),
                   split=options.split)
    return Path(out)
