"""Age from long-axis cine MRI on a synthetic two-view cohort: the whole pipeline, timed.

    python benchmarks/age_synthetic.py --out runs/age-bench [--n 160] [--outer 5 --inner 2]

Steps (each skipped when its output is already there, so a killed run resumes): synthesise
a cohort (`cinelab synth cmr-lax`), ingest it (3ch + 4ch by SeriesDescription, ages CSV),
prepare a store (25 frames per cycle, heart crop, `--size` px), nested cross-validation of
the `cmr-age-cpu` recipe per view (`cinelab cv --by view`), fold and view ensembles with the
age gap (`cinelab age ensemble`) and the report page. Prints per-view and ensemble RMSE
against predicting the training mean and writes them to <out>/benchmark.json.

Targets (issue 7): ensemble RMSE <= 0.6 x the training-mean RMSE; the view ensemble beats
each single view (compared on the subjects that have both views).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

from cinelab.pipelines.age.evaluate import ensemble_cv
from cinelab.pipelines.age.layout import ingest_lax
from cinelab.pipelines.age.report import build_age_report
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.train.cv import run_cv
from cinelab.train.recipe import load_recipe

TARGET_RATIO = 0.6


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/age-bench"))
    p.add_argument("--n", type=int, default=160, help="subjects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=80, help="synthetic DICOM rows/cols")
    p.add_argument("--size", type=int, default=32, help="prepared frame size")
    p.add_argument("--recipe", default="cmr-age-cpu")
    p.add_argument("--outer", type=int, default=5)
    p.add_argument("--inner", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="prepare processes")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="recipe override, e.g. trainer.max_epochs=5")
    return p.parse_args()


def _timed(timings: dict[str, float], name: str, fn, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    timings[name] = round(time.perf_counter() - start, 1)
    timings[f"{name}_cpu"] = round(time.process_time() - cpu, 1)
    print(f"{name}: {timings[name]} s ({timings[f'{name}_cpu']} s CPU in this process)",
          flush=True)
    return result


def main() -> None:
    args = _args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    out, timings = args.out, {}
    cohort = out / "cohort"
    if not (cohort / "ages.csv").exists():
        _timed(timings, "synth", synth_cmr_lax_cohort, cohort, n=args.n, seed=args.seed,
               size=args.image_size)
    ingested = _timed(timings, "ingest", ingest_lax, cohort / "dicom", cohort / "ages.csv",
                      out / "ingest")
    _timed(timings, "prepare", prepare, ingested.manifest, out / "store",
           PrepSpec(size=args.size, channels=1), workers=args.workers)
    recipe = load_recipe(args.recipe, [f"data.size={args.size}", *args.overrides])
    _timed(timings, "cv", run_cv, recipe, out / "store", out / "cv", outer=args.outer,
           inner=args.inner, seed=args.seed, by="view", on_event=print)
    metrics = _timed(timings, "ensemble", ensemble_cv, out / "cv")
    _timed(timings, "report", build_age_report, out / "cv")
    head = metrics["headline"]
    summary = {"n_subjects": head["n_subjects"], "n_all_views": head["n_all_views"],
               "rmse": head["rmse"], "rmse_all_views": head["rmse_all_views"],
               "rmse_ratio_to_baseline": head["rmse_ratio_to_baseline"],
               "target_ratio_met": head["rmse_ratio_to_baseline"] <= TARGET_RATIO,
               "ensemble_beats_each_view": head["ensemble_beats_each_view"],
               "variant": metrics["variant"], "weights": metrics["weights"],
               "timings_s": timings, "settings": vars(args) | {"out": str(out)}}
    previous = out / "benchmark.json"
    history = json.loads(previous.read_text()).get("timings_history", []) \
        if previous.exists() else []
    summary["timings_history"] = [*history, timings]  # a resumed run skips finished steps
    previous.write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: summary[k] for k in ("rmse", "rmse_all_views",
                                              "rmse_ratio_to_baseline", "target_ratio_met",
                                              "ensemble_beats_each_view", "timings_s")},
                     indent=2))


if __name__ == "__main__":
    main()
