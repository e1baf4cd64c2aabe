"""The whole EchoNet-Dynamic chain on an EchoNet-layout folder, resumable step by step:

ingest -> prepare -> measure EF from tracings -> train segmentation -> train EF (seg_video on
the trained segmenter for the CPU recipes) -> calibrate on the val split (EF intervals and an
OOD detector stored in ef/model.pt, `calibrate`) -> predict the test split (one clip, all clips,
beat by beat, masks) -> evaluate -> report.

Everything lands under `out`: ingest/, store/, tracings_ef.csv, seg/ and ef/ (so `out` is a
model folder `cinelab predict` accepts), predictions/, evaluation/, report.html and
metrics.json. A step whose done.json lists complete outputs (`cinelab.utils.is_done`) is
skipped; training resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import; then we do)
import pandas as pd

from cinelab.errors import CinelabError, InputError
from cinelab.formats.ingest import ingest, load_ingested, write_ingested
from cinelab.pipelines.echonet.api import (
    EVALUATION,
    PREDICTIONS,
    check_options,
    evaluate_echonet_predictions,
    report_echonet,
)
from cinelab.pipelines.echonet.calibrate import CALIBRATION_JSON, calibrate_echonet
from cinelab.pipelines.echonet.evaluate import METRICS_JSON
from cinelab.pipelines.echonet.predict import predict
from cinelab.pipelines.echonet.report import REPORT_HTML
from cinelab.pipelines.echonet.sources import EF_DIR, MODEL_FILE, SEG_DIR
from cinelab.pipelines.echonet.tracings import measure_cohort_tracings
from cinelab.pipelines.registry import Options, Target
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.synth.echo import synth_echo_cohort
from cinelab.train.fit import fit
from cinelab.train.recipe import Recipe, load_recipe
from cinelab.utils import DONE_FILE, is_done, mark_done, read_json, write_csv, write_json

log = logging.getLogger(__name__)

RECIPES = ("echonet-seg", "echonet-ef", "echonet-seg-cpu", "echonet-ef-cpu")
PAIRS = {"cpu": ("echonet-seg-cpu", "echonet-ef-cpu"), "full": ("echonet-seg", "echonet-ef")}
PRETRAINED_ON_SEG = "seg_video"  # EF models that run the trained segmenter
INGEST, STORE, TRACINGS_EF, REPORT = "ingest", "store", "tracings_ef.csv", REPORT_HTML
CALIBRATION, CALIBRATION_SPLIT = "calibration", "val"
TEST_SPLIT = "test"
RUN_OPTIONS = {
    "size": "frame size of the store and both recipes (default: the recipes' data.size)",
    "workers": "processes preparing the store (default 2)",
    "n_boot": "bootstrap resamples for the CIs (default 1000)",
    "overlays": "write LV-outline overlay videos (default true)",
    "max_beats": "beats averaged beat by beat (default: every beat, as EchoNet-Dynamic)",
    "stride": "step between all-clips start frames (default 1)",
    "layout": "layout of DATA (default auto)",
}
DEMO_OPTIONS = Options(n=150, seed=0, extra={"size": 64, "workers": 2, "n_boot": 1000})
TARGETS = (Target("dice", ">=", 0.85), Target("ef_mae", "<=", 6.0),
           Target("ef_mae_ratio", "<=", 0.7))


def synth(out: Path, n: int, seed: int) -> Path:
    """A synthetic EchoNet-layout cohort of `n` beating-heart phantoms (known EF, tracings);
    kept as it is when `out` already holds the complete cohort of that size and seed."""
    out = Path(out)
    if is_done(out) and {k: read_json(out / DONE_FILE).get(k) for k in ("n", "seed")} == \
            {"n": n, "seed": seed}:
        return out
    synth_echo_cohort(out, n=n, seed=seed)
    mark_done(out, ["FileList.csv", "VolumeTracings.csv"], n=n, seed=seed)
    return out


def recipe_pair(options: Options) -> tuple[Recipe, Recipe]:
    """(segmentation, EF) recipes: ``--recipe`` names either of a pair (echonet-seg[-cpu] or
    echonet-ef[-cpu]); default the CPU pair on a CPU device, the paper's pair otherwise."""
    name = options.recipe or ("echonet-ef-cpu" if options.device == "cpu" else "echonet-ef")
    if name not in RECIPES:
        raise InputError(None, "--recipe", f"one of {', '.join(RECIPES)}", name)
    seg, ef = PAIRS["cpu" if name.endswith("-cpu") else "full"]
    size = options.get("size")
    overrides = [] if size is None else [f"data.size={int(size)}"]
    return load_recipe(seg, overrides), load_recipe(ef, overrides)


def _quiet_training_logs() -> None:
    """Keep Lightning's start-up chatter out of the output (warnings still show)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def _step(folder: Path, outputs: list[str], name: str, fn: Callable[[], Any]) -> bool:
    """Run `fn` unless `folder` is done; then mark it done. True when it ran."""
    if is_done(folder):
        log.info("%s: already done, skipped", name)
        return False
    log.info("%s", name)
    fn()
    mark_done(folder, outputs, step=name)
    return True


def _data_steps(data: Path, out: Path, options: Options, size: int) -> dict[str, Any]:
    """ingest/, store/ and tracings_ef.csv; returns the cohort counts."""
    def do_ingest() -> None:
        found = ingest(data, layout=str(options.get("layout", "auto")), labels=options.labels)
        if found.manifest.empty:
            raise CinelabError(f"{data}: no usable video in that cohort")
        write_ingested(found, out / INGEST)

    _step(out / INGEST, ["manifest.csv", "problems.csv"], "ingest", do_ingest)
    cohort = load_ingested(out / INGEST)

    def do_prepare() -> None:
        summary = prepare(cohort.manifest, out / STORE, PrepSpec(size=size),
                          tracings=cohort.tracings, workers=int(options.get("workers", 2)))
        if summary.usable == 0:
            raise CinelabError(f"{data}: no video could be prepared")

    _step(out / STORE, ["store.json", "manifest.csv"], "prepare", do_prepare)
    counts: dict[str, Any] = {"videos": len(cohort.manifest),
                              "prepared": len(pd.read_csv(out / STORE / "manifest.csv"))}
    if cohort.tracings is not None and not cohort.tracings.empty:
        if not (out / TRACINGS_EF).is_file():
            write_csv(measure_cohort_tracings(out / STORE)[0], out / TRACINGS_EF)
        table = pd.read_csv(out / TRACINGS_EF)
        if "label_EF" in table.columns:
            counts["tracing_ef_max_abs_diff"] = float((table["EF"] - table["label_EF"])
                                                      .abs().max())
    return counts


def _train_steps(out: Path, options: Options, seg: Recipe, ef: Recipe) -> None:
    """seg/ then ef/ (each resumes from its last checkpoint when interrupted)."""
    store = out / STORE
    _step(out / SEG_DIR, [MODEL_FILE, "metrics.json"], f"train segmentation ({seg.name})",
          lambda: fit(seg, store, out / SEG_DIR, resume=True, progress=False,
                      max_epochs=options.max_epochs))
    if ef.model.name == PRETRAINED_ON_SEG:
        ef = load_recipe(ef.name, [f"data.size={ef.data.size}",
                                   f"model.pretrained={out / SEG_DIR / MODEL_FILE}"])
    _step(out / EF_DIR, [MODEL_FILE, "metrics.json"], f"train EF ({ef.name})",
          lambda: fit(ef, store, out / EF_DIR, resume=True, progress=False,
                      max_epochs=options.max_epochs))


def _calibration_step(out: Path, options: Options) -> None:
    """calibration/: EF intervals and the OOD detector fitted on the val split and stored in
    ef/model.pt (`calibrate`); ef/ is marked done again for the rewritten checkpoint.
    Skipped when the store has no val split."""
    splits = set(pd.read_csv(out / STORE / "manifest.csv", usecols=["split"])["split"]
                 .astype(str).str.lower())
    if CALIBRATION_SPLIT not in splits:
        log.info("calibrate: no %s split, skipped", CALIBRATION_SPLIT)
        return

    def do_calibrate() -> None:
        calibrate_echonet(out, out / STORE, out / CALIBRATION,
                          Options(split=CALIBRATION_SPLIT, device=options.device,
                                  batch_size=options.batch_size))
        mark_done(out / EF_DIR, [MODEL_FILE, "metrics.json"], step="train EF + calibrate")

    _step(out / CALIBRATION, [CALIBRATION_JSON], "calibrate (EF intervals, OOD)", do_calibrate)


def _predict_split(store: Path, wanted: str | None) -> str | None:
    """The split to predict: the one asked for, else test when the store has one, else all."""
    splits = set(pd.read_csv(store / "manifest.csv", usecols=["split"])["split"].astype(str))
    if wanted is not None:
        if wanted not in splits:
            raise InputError(store, "--split", f"one of {sorted(splits)}", wanted)
        return wanted
    return TEST_SPLIT if TEST_SPLIT in splits else None


def _evaluation_steps(out: Path, options: Options) -> dict[str, Any]:
    """predictions/, evaluation/ and report.html; returns the headline metrics."""
    store, pred, evaluation = out / STORE, out / PREDICTIONS, out / EVALUATION
    split = _predict_split(store, options.split)
    _step(pred, ["predictions.csv", "problems.csv", "run.json"], "predict",
          lambda: predict(out, store, pred, batch_size=options.batch_size,
                          device=options.device, overlays=bool(options.get("overlays", True)),
                          max_beats=options.get("max_beats"),
                          all_clips_stride=options.get("stride", 1), split=split))
    inner = Options(seed=options.seed, extra={"n_boot": options.get("n_boot", 1000)})
    _step(evaluation, [METRICS_JSON], "evaluate",
          lambda: evaluate_echonet_predictions(pred, evaluation, inner))
    if not (out / REPORT).is_file():
        report_echonet(evaluation, out / REPORT)
    return dict(read_json(evaluation / METRICS_JSON)["headline"])


def run_echonet(data: Path, out: Path, options: Options) -> dict[str, Any]:
    """The whole chain (resumable); returns the flat metrics, also written to out/metrics.json.

    Options: recipe (either recipe of a pair), max_epochs, split (default test), device,
    batch_size, labels (for a non-EchoNet layout), seed; extra: see `RUN_OPTIONS`.
    """
    check_options(options, RUN_OPTIONS)
    _quiet_training_logs()
    data, out = Path(data), Path(out)
    seg, ef = recipe_pair(options)
    if seg.data.size != ef.data.size:
        raise InputError(None, "data.size", "the same frame size for both recipes",
                         f"{seg.data.size} and {ef.data.size}", fix="set --option size=N")
    metrics = _data_steps(data, out, options, seg.data.size)
    _train_steps(out, options, seg, ef)
    _calibration_step(out, options)
    metrics.update(_evaluation_steps(out, options))
    metrics.update(recipes=f"{seg.name} + {ef.name}", report=str(out / REPORT))
    write_json(out / "metrics.json", {"pipeline": "echonet", **metrics})
    return metrics
