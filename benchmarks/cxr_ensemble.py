"""The whole CXR ensemble chain on a synthetic cohort: members' test AUCs vs the weighted
ensemble, with and without TTA, and the weights of every fitting method (CPU minutes).

    nice python benchmarks/cxr_ensemble.py --n 500 --recipe cxr-ensemble-cpu --work /tmp/cxre

Steps (each resumes: finished members are not retrained): synthetic DeepCOVID-XR cohort ->
(crop, size) stores -> `train_ensemble` (BMC weights on validation predictions) -> the
test split's raw PNGs through `predict_cxr` (lung crop from the mask files beside them,
Lanczos resize, members, TTA) -> `evaluate_classification` at the Youden threshold of the
validation split's predictions made the same way (same TTA) -> Grad-CAM -> report. The same
test member probabilities are also combined with the weights of nnls, logloss and the plain
mean (all fitted on the same validation predictions). Prints a table and writes
<work>/ensemble_benchmark.csv and <work>/report.html.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cinelab.evaluate.classification import evaluate_classification
from cinelab.evaluate.metrics import roc_auc
from cinelab.infer.ensemble import fit_ensemble_weights
from cinelab.pipelines.cxr.ensemble import train_ensemble
from cinelab.pipelines.cxr.evaluate import member_table
from cinelab.pipelines.cxr.gradcam import most_positive, write_gradcams
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.predict import (
    MEMBER_PREFIX,
    load_cxr_ensemble,
    predict_cxr,
    split_files,
)
from cinelab.pipelines.cxr.prepare import stores_for_recipe
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.report.classification import build_classification_report
from cinelab.train.recipe import load_recipe
from cinelab.utils import write_csv

METHODS = ("bmc", "nnls", "logloss", "mean")
N_BOOT = 500


def _predict(work: Path, files: list[Path], ids: list[str], tta: int,
             split: str = "test") -> pd.DataFrame:
    out = work / f"predictions-{split}-tta{tta}"
    cached, fitted = out / "predictions.csv", work / "ensemble" / "ensemble.json"
    if cached.is_file() and cached.stat().st_mtime > fitted.stat().st_mtime:
        return pd.read_csv(out / "predictions.csv", dtype={"sample_id": str})
    t0 = time.time()
    result = predict_cxr(load_cxr_ensemble(work / "ensemble"), files, out, tta=tta, ids=ids)
    print(f"predict {split} tta={tta}: {len(result.table)} images, "
          f"{len(result.problems)} problems, {time.time() - t0:.0f} s", flush=True)
    return result.table


def _method_rows(work: Path, table: pd.DataFrame, truth: np.ndarray, tta: int) -> list[dict]:
    """Test AUC of every weighting method's ensemble on the same member probabilities."""
    val = pd.read_csv(work / "ensemble" / "val_predictions.csv")
    members = [c for c in val.columns if c.startswith("p_")]
    rows = []
    for method in METHODS:
        ens = fit_ensemble_weights(val[members].to_numpy(float), val["truth"].to_numpy(float),
                                   method=method, task="binary", members=members)
        columns = [MEMBER_PREFIX + m[len("p_"):] for m in members]  # the contract's names
        p = ens.predict(table[columns].to_numpy(float))
        rows.append({"model": f"ensemble ({method})", "tta": tta, "test_auc": roc_auc(truth, p),
                     "weights": " ".join(f"{w:.2f}" for w in ens.weights)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cxr-ensemble-cpu")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--raw-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", type=int, default=8)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/cinelab-cxr-ensemble")
    parser.add_argument("--override", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work, t0 = Path(args.work), time.time()
    recipe = load_recipe(args.recipe, args.override)
    if not (work / "cohort" / "synth.json").exists():
        synth_cxr_cohort(work / "cohort", n=args.n, seed=args.seed, size=args.raw_size)
    cohort = read_cxr_folders(work / "cohort")
    stores_for_recipe(recipe, cohort.manifest, work / "stores", workers=1)
    run = train_ensemble(recipe, work / "stores", work / "ensemble", processes=args.processes)
    print(f"ensemble trained ({len(run.trained)} now, {len(run.skipped)} before): "
          f"{time.time() - t0:.0f} s; validation AUC {run.weights.details['val_auc']:.3f}",
          flush=True)
    files, ids, _ = split_files(cohort, "test")
    val_files, val_ids, _ = split_files(cohort, "val")
    labels = cohort.manifest.set_index("sample_id")["label"]
    rows = []
    for tta in sorted({1, args.tta}):
        table = _predict(work, files, ids, tta)
        val = _predict(work, val_files, val_ids, tta, "val")  # threshold tuned with same TTA
        ev = evaluate_classification(member_table(table), work / f"evaluation-tta{tta}",
                                     labels=cohort.manifest, tune_on=member_table(val),
                                     n_boot=N_BOOT)
        for rec in ev.members.to_dict("records"):
            rows.append({"model": rec["model"], "tta": tta, "test_auc": rec["auc"],
                         "auc_ci": f"{rec['auc_ci_low']:.3f}-{rec['auc_ci_high']:.3f}",
                         "sensitivity": rec["sensitivity"], "specificity": rec["specificity"],
                         "accuracy": rec["accuracy"], "threshold": ev.report["threshold"]})
        rows += _method_rows(work, table, labels.loc[table["sample_id"]].to_numpy(int), tta)
    cams, _ = write_gradcams(work / "ensemble", most_positive(table), work / "gradcam")
    build_classification_report(work / f"evaluation-tta{args.tta}", work / "report.html",
                                work / "ensemble", cams)
    result = pd.DataFrame(rows)
    write_csv(result, work / "ensemble_benchmark.csv")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"total {time.time() - t0:.0f} s; report -> {work / 'report.html'}")


if __name__ == "__main__":
    main()
