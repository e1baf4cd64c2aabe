"""Run folders: evaluate and report what `predict` wrote, finding labels where it recorded them.

A run folder holds seg/ and ef/ (training outputs with model.pt), predictions/ (predict),
evaluation/ (evaluate) and report.html (report). Each step also accepts its own folder alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError
from cinelab.utils import read_json

PREDICTIONS, EVALUATION, REPORT = "predictions", "evaluation", "report.html"


def prediction_dir(run_dir: str | Path) -> Path:
    """run_dir/predictions when present, else run_dir itself (a bare prediction folder)."""
    run_dir = Path(run_dir)
    pred = run_dir / PREDICTIONS
    pred = pred if (pred / "predictions.csv").exists() else run_dir
    if not (pred / "predictions.csv").exists():
        raise InputError(run_dir, "predictions.csv", "a folder written by `cinelab predict`",
                         "no predictions.csv there or in its predictions/ folder")
    return pred


def recorded_input(pred_dir: Path) -> Path | None:
    """The input `predict` recorded in input.json, when it still exists."""
    path = pred_dir / "input.json"
    if not path.exists():
        return None
    source = Path(read_json(path)["input"])
    return source if source.exists() else None


def recorded_split(pred_dir: Path) -> str | None:
    """The store split `predict` was restricted to, if any."""
    path = pred_dir / "input.json"
    return read_json(path).get("split") if path.exists() else None


def labels_from(data: str | Path | None, labels: str | Path | None,
                pred_dir: Path) -> dict[str, Any]:
    """Labels (sample_id, EF), tracings and truth masks from a store, a label CSV, or the
    input that predict recorded."""
    from cinelab.data.store import PreparedStore, sample_files

    if labels is not None:
        from cinelab.pipelines.echonet.sources import read_labels

        table = read_labels(labels)
        return {"labels": table, "tracings": None, "truth_masks": None}
    source = Path(data) if data is not None else recorded_input(pred_dir)
    if source is None or not (source / "store.json").exists():
        preds = pd.read_csv(pred_dir / "predictions.csv", dtype={"sample_id": str})
        if "EF" not in preds.columns:
            raise InputError(pred_dir, "labels", "--data STORE or --labels CSV with EF",
                             "no labels recorded with the predictions")
        return {"labels": preds[["sample_id", "EF"]], "tracings": None, "truth_masks": None}
    store = PreparedStore(source)
    m = store.manifest
    split = recorded_split(pred_dir) if data is None else None
    if split is not None:
        m = m[m["split"] == split]
    masks = pd.DataFrame({"sample_id": m["sample_id"].astype(str),
                          "mask_path": [str(sample_files(store.root, s)["mask"]) for s in
                                        m["sample_id"].astype(str)]})
    masks = masks[[Path(p).exists() for p in masks["mask_path"]]]
    return {"labels": m[["sample_id", "EF", "split"]], "tracings": store.tracings,
            "truth_masks": masks if len(masks) else None, "store": store}


def evaluate_run(run_dir: str | Path, data: str | Path | None = None,
                 labels: str | Path | None = None, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Evaluate a run's predictions; writes run_dir/evaluation/."""
    from cinelab.pipelines.echonet.evaluate import evaluate_echonet

    pred = prediction_dir(run_dir)
    found = labels_from(data, labels, pred)
    out = Path(run_dir) / EVALUATION
    return evaluate_echonet(pred, found["labels"], tracings=found["tracings"],
                            truth_masks=found["truth_masks"], out_dir=out, n_boot=n_boot,
                            seed=seed)


def report_run(run_dir: str | Path, data: str | Path | None = None) -> Path:
    """Write run_dir/report.html from the run's predictions and evaluation."""
    from cinelab.pipelines.echonet.report import build_echonet_report

    run_dir = Path(run_dir)
    pred = prediction_dir(run_dir)
    eval_dir = run_dir / EVALUATION
    if not (eval_dir / "metrics.json").exists():
        raise InputError(run_dir, "evaluation/metrics.json", "an evaluated run",
                         "no evaluation yet (run `cinelab evaluate` first)")
    source = Path(data) if data is not None else recorded_input(pred)
    frames_source = None
    if source is not None and (source / "store.json").exists():
        from cinelab.data.store import PreparedStore

        frames_source = PreparedStore(source).frames
    return build_echonet_report(run_dir, pred, eval_dir, frames_source=frames_source)
