"""RV-failure pipeline on a synthetic cohort: grey-only, flow-only and two-stream test AUCs.

Synthesises an RVF cohort (DICOMs with planted PHI + the two CSVs), ingests it
(pseudonymised), prepares greyscale frames and Farneback flow, then trains the CPU recipe
once per variant, changing only the model's streams (grey, flow, fused; the same task, data
and code; "fused_aux" adds the streams' own losses, loss.kwargs.stream_weight; "ensemble" trains
--members fused models on seeded patient-wise re-splits and averages them), predicts the
test split (probability averaged over the recipe's random clips per video, then per patient)
and prints the AUCs with bootstrap CIs. With --external N, every variant also predicts all
videos of a second, independent cohort of N patients (another seed): tighter CIs than the
small test split. Every step is resumable: a rerun with the same --out reuses what exists.
Prints numbers; asserts nothing.

    nice python benchmarks/rvf_synthetic.py --out /tmp/rvf-bench [--n 160] [--seed 0]
        [--external 120] [--recipe rvf-twostream-cpu] [--set trainer.max_epochs=10]
        [--variants fused,grey,ensemble] [--members 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf.ensemble import predict_any, train_ensemble
from cinelab.pipelines.rvf.evaluate import evaluate_rvf
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.train.fit import fit
from cinelab.train.recipe import load_recipe

VARIANTS = {"grey": ["model.kwargs.streams=[grey]"],
            "flow": ["model.kwargs.streams=[flow]"],
            "fused": [],
            "fused_aux": ["loss.kwargs.stream_weight=1.0"],
            "ensemble": []}


EXTERNAL_SEED_OFFSET = 1000


def cohort(out: Path, n: int, seed: int, size: int, workers: int) -> tuple[Path, float]:
    """Synthesise (once), ingest and prepare frames + flow; the store and the seconds taken."""
    start = time.perf_counter()
    raw = out / "raw"
    if not (raw / "phi_planted.json").exists():
        synth_rvf_cohort(raw, n=n, seed=seed)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", out / "ingest")
    prepare_rvf(out / "ingest", out / "store", size=size, workers=workers)
    return out / "store", time.perf_counter() - start


def _aucs(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for level in ("video", "patient"):
        if "auc" not in metrics[level]:
            continue
        auc = metrics[level]["auc"]
        row[f"{prefix}_auc_{level}"] = round(auc["value"], 3)
        row[f"{prefix}_ci_{level}"] = [round(auc["ci_low"], 3), round(auc["ci_high"], 3)]
        row[f"{prefix}_n_{level}"] = metrics[level]["n"]
    return row


def run_variant(name: str, store: Path, out: Path, recipe: str, overrides: list[str],
                n_boot: int, external: Path | None = None, members: int = 3
                ) -> dict[str, Any]:
    """Train (or resume) one variant, predict the test split (and the external cohort);
    its AUCs and timings."""
    start = time.perf_counter()
    if name == "ensemble":
        train_ensemble(load_recipe(recipe, overrides), store, out / name, members)
        model, info = out / name, {"members": members}
    else:
        result = fit(load_recipe(recipe, overrides + VARIANTS[name]), store, out / name,
                     resume=True, progress=False)
        model = result.best_checkpoint
        info = {"best_epoch": result.metrics.get("best_epoch"),
                result.metrics.get("monitor", "best"): result.metrics.get("best_score"),
                "last_val_auc": result.metrics.get("val/auc")}
    fit_s = time.perf_counter() - start
    pred = _predict(model, store, out / name / "test", "test", n_boot)
    row: dict[str, Any] = {"variant": name, "fit_s": round(fit_s, 1), **info,
                           **_aucs(pred, "test")}
    if external is not None:
        ext = _predict(model, external, out / name / "external", None, n_boot)
        row.update(_aucs(ext, "external"))
    return row


def _predict(model: Path, store: Path, out: Path, split: str | None,
             n_boot: int) -> dict[str, Any]:
    """Predict (the contract) and evaluate against the store's labels; the metrics."""
    predict_any(model, store, out / "predictions", Options(split=split))
    return evaluate_rvf(out / "predictions", out / "evaluation",
                        Options(extra={"n_boot": n_boot}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=160, help="labelled patients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--external", type=int, default=0,
                        help="patients of an independent external test cohort (0: none)")
    parser.add_argument("--recipe", default="rvf-twostream-cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variants", default="fused,flow,grey")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--members", type=int, default=3, help="models of the ensemble")
    args = parser.parse_args()
    store, prep_s = cohort(args.out, args.n, args.seed, args.size, args.workers)
    print(f"cohort: {args.n} patients, seed {args.seed}, prepared in {prep_s:.0f} s")
    external = None
    if args.external:
        external, ext_s = cohort(args.out / "external", args.external,
                                 args.seed + EXTERNAL_SEED_OFFSET, args.size, args.workers)
        print(f"external cohort: {args.external} patients, prepared in {ext_s:.0f} s")
    rows = []
    for name in args.variants.split(","):
        rows.append(run_variant(name, store, args.out / "runs", args.recipe, args.overrides,
                                args.n_boot, external, args.members))
        print(json.dumps(rows[-1]))
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print_table(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per variant and evaluation set: AUCs per video and patient with CIs."""
    print(f"{'variant':8s} {'set':9s} {'AUC video [95% CI]':26s} {'AUC patient [95% CI]':26s}"
          " fit s")
    for r in rows:
        for prefix in ("test", "external"):
            if f"{prefix}_auc_patient" in r:
                print(f"{r['variant']:8s} {prefix:9s} {r[f'{prefix}_auc_video']:.3f} "
                      f"{r[f'{prefix}_ci_video']!s:20s} {r[f'{prefix}_auc_patient']:.3f} "
                      f"{r[f'{prefix}_ci_patient']!s:20s} {r['fit_s']:.0f}")


if __name__ == "__main__":
    main()
