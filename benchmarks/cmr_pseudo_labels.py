"""Pseudo-label training on synthetic cohorts (the cmr-seg-tl recipe's Kaggle DSB step).

    nice python benchmarks/cmr_pseudo_labels.py [--out DIR] [--teacher 8] [--dsb 30]
        [--test 10] [--teacher-epochs 150] [--epochs 40] [--size 64] [--thresholds 5,10,15]

1. A teacher (`cmr-seg-cpu` at --size px) trains on a small labelled ACDC-like cohort.
2. It predicts a DSB-like DICOM cohort (defects injected, cleaned by `convert_dsb`) on the
   cines' own grids; per cine the confidence score is the larger |% deviation| of predicted
   EDV/ESV from the cohort's train/validate/solution.csv volumes.
3. The ED/ES frames of the cines at or below each threshold (and of all cines, "all") are
   written as PNG image + mask pairs and a student trains on each set from random weights,
   every student for the same number of optimiser steps (--epochs on the largest set).
4. Teacher and students are evaluated on an independent labelled test cohort: Dice per
   class and the EF absolute difference (paper's table: mean, sd, median, IQR).

Prints the confidence distribution, the pairs per threshold and the evaluation tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from cinelab.pipelines.cmr.dsb import convert_dsb
from cinelab.pipelines.cmr.evaluate import evaluate_cmr
from cinelab.pipelines.cmr.mask_sets import mask_index
from cinelab.pipelines.cmr.predict import predict_cmr
from cinelab.pipelines.cmr.prepare import prepare_cmr_folder
from cinelab.pipelines.cmr.pseudo import (
    THRESHOLD_EPS,
    pseudo_labels,
    subset_name,
    threshold_summary,
)
from cinelab.pipelines.cmr.pseudo_pairs import export_pseudo_pairs
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.train.fit import MODEL_FILE, fit
from cinelab.train.recipe import load_recipe

RECIPE = "cmr-seg-cpu"
ALL = 1e9  # a threshold that keeps every scored cine ("all", no filtering)
SEEDS = {"teacher": 11, "dsb": 12, "test": 13}
SHAPE = (96, 80)  # synthetic image rows, columns


def overrides(size: int, epochs: int) -> list[str]:
    """cmr-seg-cpu at `size` px with crops of 3/4 of it, `epochs` epochs."""
    return [f"data.size={size}", f"data.augment.crop={size * 3 // 4}",
            f"trainer.max_epochs={epochs}", f"trainer.val_every={max(1, epochs // 6)}"]


def train(source: Path, out: Path, size: int, epochs: int) -> Path:
    """Prepare `source` at `size` and train the recipe on it (reused when already done)."""
    model = out / "run" / MODEL_FILE
    if not model.exists():
        prepare_cmr_folder(source, out / "store", size=size, workers=1)
        fit(load_recipe(RECIPE, overrides(size, epochs)), out / "store", out / "run",
            progress=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/cinelab-cmr-pseudo"))
    parser.add_argument("--teacher", type=int, default=8, help="labelled patients")
    parser.add_argument("--dsb", type=int, default=30, help="DSB-like patients")
    parser.add_argument("--test", type=int, default=10, help="labelled test patients")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--teacher-epochs", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=40, help="student epochs")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--thresholds", default="5,10,15")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out, start = args.out, time.time()
    thresholds = [float(t) for t in args.thresholds.split(",")] + [ALL]
    cohorts = {name: synth_cmr_cohort(out / name, n=getattr(args, name), seed=seed,
                                      layout="dsb" if name == "dsb" else "acdc",
                                      defects=name == "dsb", n_frames=args.frames, size=SHAPE)
               for name, seed in SEEDS.items()}
    convert_dsb(cohorts["dsb"].dsb_root, out / "conv", max_size=max(SHAPE))
    teacher = train(cohorts["teacher"].acdc_root, out / "teacher", args.size,
                    args.teacher_epochs)
    predict_cmr(teacher, out / "conv", out / "pred", native=True)
    scores = pseudo_labels(out / "pred", cohorts["dsb"].dsb_root, out / "pseudo", thresholds)
    print(f"confidence (% deviation) over {scores['confidence_pct'].notna().sum()} cines: "
          f"median {scores['confidence_pct'].median():.1f}, "
          f"IQR {scores['confidence_pct'].quantile(.25):.1f}-"
          f"{scores['confidence_pct'].quantile(.75):.1f}")
    print(threshold_summary(scores, thresholds).to_string(index=False))
    export = export_pseudo_pairs(mask_index(out / "pred"), scores, out / "pseudo", thresholds)
    print(f"pairs: {len(export.manifest)} written, {len(export.problems)} cine(s) skipped")
    models, trained = {"teacher": teacher}, {}
    n_all = len(export.manifest)
    for t in thresholds:
        name = "all" if t == ALL else f"<= {t:g} %"
        subset = out / "pseudo" / subset_name(t)
        if not (subset / "manifest.csv").exists():
            continue
        ids = frozenset(pd.read_csv(subset / "manifest.csv", usecols=["sample_id"],
                                    dtype=str)["sample_id"])
        if ids not in trained:  # the same pairs as a looser threshold: the same student
            epochs = round(args.epochs * n_all / len(ids))  # equal optimiser steps
            trained[ids] = train(subset, out / f"student_{subset_name(t)}", args.size, epochs)
        models[name] = trained[ids]
    preds = {}
    for name, model in models.items():
        folder = out / "eval" / name.replace(" ", "").replace("<=", "le").replace("%", "pct")
        predict_cmr(model, cohorts["test"].acdc_root, folder, native=True)
        preds[name] = folder
    result = evaluate_cmr(preds, cohorts["test"].acdc_root, out / "evaluation")
    confidence = export.manifest["confidence_pct"]
    print("\ntraining pairs per student:",
          {f"{'all' if t == ALL else f'<= {t:g} %'}": int((confidence <= t + THRESHOLD_EPS).sum())
           for t in thresholds})
    dice = result.summary[result.summary["phase"] == "all"].pivot(index="model",
                                                                   columns="class",
                                                                   values="mean")
    print("\nDice on the test cohort (mean over volumes):")
    print(dice.round(3).to_string())
    print("\n|EF difference| on the test cohort:")
    print(result.ef_table.round(2).to_string(index=False))
    print(f"\n{time.time() - start:.0f} s; report tables in {out / 'evaluation'}")


if __name__ == "__main__":
    pd.set_option("display.width", 120)
    main()
