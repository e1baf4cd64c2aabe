"""`cinelab synth rvf` and `cinelab rvf ...`: the RV-failure pipeline, step by step or at once.

    cinelab synth rvf --out RAW --n 160
    cinelab rvf ingest RAW --classes RAW/classes.csv --splits RAW/splits.csv --out INGEST
    cinelab rvf prepare INGEST --out STORE --size 64        (frames + optical flow)
    cinelab rvf flow STORE --method farneback --force       (flow only)
    cinelab rvf pretrain EF_STORE --out PRE --kinetics k400.pth   (Kinetics -> EF, each stream)
    cinelab rvf train rvf-twostream-cpu --data STORE --out RUN --set model.pretrained=...
    cinelab rvf ensemble rvf-twostream-cpu --data STORE --out ENS --members 5
    cinelab rvf predict RUN/model.pt STORE --out PRED --split test   (= cinelab predict)
    cinelab rvf evaluate PRED --out EVAL                             (= cinelab evaluate)
    cinelab rvf saliency RUN/model.pt STORE --out SAL --predictions PRED (= cinelab explain)
    cinelab rvf report EVAL --saliency SAL --run RUN                 (= cinelab report)
    cinelab rvf run RAW --out OUT  (all of the above; = cinelab run rvf RAW --out OUT;
                                    --members N for an ensemble of N re-splits)

The logic lives in the API modules (layout, prepare, predict, evaluate, explain, report, run);
these verbs only parse options and print. predict/evaluate/saliency/report/run stay here as
aliases of the generic verbs for one release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cinelab.cliutil import console, finish_predictions, friendly, print_problems
from cinelab.errors import CinelabError
from cinelab.infer.contract import read_predictions, read_problems
from cinelab.pipelines.registry import Options
from cinelab.pipelines.rvf.ensemble import DEFAULT_VAL_FRACTION, predict_any, train_ensemble
from cinelab.pipelines.rvf.evaluate import evaluate_rvf
from cinelab.pipelines.rvf.explain import explain_rvf
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import DEFAULT_SIZE, prepare_rvf
from cinelab.pipelines.rvf.pretrain import PRETRAIN_RECIPE, pretrain_streams
from cinelab.pipelines.rvf.report import rvf_report
from cinelab.pipelines.rvf.run import DEFAULT_RECIPE, run_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.prep.flow import prepare_flow
from cinelab.train.fit import fit
from cinelab.train.recipe import load_recipe

__all__ = ["prepare_rvf", "register", "rvf_app"]

rvf_app = typer.Typer(no_args_is_help=True, help="RV failure from echo: ingest, flow, "
                      "two-stream training, clip-averaged prediction, saliency, report.")


def synth_rvf(
    out: Annotated[Path, typer.Option(help="Folder for the DICOMs and the two CSVs.")],
    n: Annotated[int, typer.Option(help="Labelled patients (defects are added).")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    size: Annotated[int, typer.Option(help="Frame size in pixels.")] = 112,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 48,
    positive_fraction: Annotated[float, typer.Option(help="Share of RVF patients.")] = 0.4,
) -> None:
    """Synthetic RV-failure echo DICOMs (class in the RV free-wall motion) with planted PHI."""
    with console.status(f"synthesising {n} RVF patients"):
        root = synth_rvf_cohort(out, n=n, seed=seed, size=size, frames=frames,
                                positive_fraction=positive_fraction)
    console.print(f"wrote {n} patients to {root} (classes.csv, splits.csv)")


@rvf_app.command("ingest")
@friendly
def ingest_cmd(
    dicom_root: Annotated[Path, typer.Argument(help="Folder of echo DICOMs (any nesting).")],
    classes: Annotated[Path, typer.Option(help="CSV: study id -> class.")],
    splits: Annotated[Path, typer.Option(help="CSV: study id -> train/val/test.")],
    out: Annotated[Path, typer.Option(help="Folder for manifest, problems, de-id copies.")],
    idmap: Annotated[Path | None, typer.Option(help="Id map (default: beside the raw data).")]
    = None,
    positive_class: Annotated[str | None, typer.Option(help="Class that is label 1.")] = None,
) -> None:
    """Pseudonymised ingest: manifest + de-identified DICOM copies + problems.csv."""
    manifest, problems = ingest_rvf(dicom_root, classes, splits, out, idmap,
                                    positive_class=positive_class)
    print_problems(problems)
    console.print(f"{len(manifest)} labelled videos, {len(problems)} problem(s) -> {out}")
    if manifest.empty:
        raise CinelabError(f"{dicom_root}: no labelled video found")


@rvf_app.command("prepare")
@friendly
def prepare_cmd(
    ingest_dir: Annotated[Path, typer.Argument(help="Folder written by `cinelab rvf ingest`.")],
    out: Annotated[Path, typer.Option(help="Prepared store folder.")],
    size: Annotated[int, typer.Option(help="Frame size (64 for the CPU recipe).")]
    = DEFAULT_SIZE,
    method: Annotated[str, typer.Option(help="Flow: farneback, tvl1, raft, raft_small.")]
    = "farneback",
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")]
    = None,
    force: Annotated[bool, typer.Option(help="Recompute frames and flow.")] = False,
    raft_weights: Annotated[str | None, typer.Option(help="Local RAFT weights file.")] = None,
    device: Annotated[str, typer.Option(help="Device for RAFT.")] = "cpu",
) -> None:
    """Greyscale frames (sector crop, resize) and optical flow into a prepared store."""
    summary, flow = prepare_rvf(ingest_dir, out, size, method, workers, force, raft_weights,
                                device)
    print_problems(summary.problems + flow.problems)
    console.print(f"frames: prepared {summary.prepared}, kept {summary.skipped}, failed "
                  f"{summary.failed}; flow: computed {flow.computed}, kept {flow.skipped}, "
                  f"failed {flow.failed} -> {out}")


@rvf_app.command("flow")
@friendly
def flow_cmd(
    store: Annotated[Path, typer.Argument(help="Prepared store.")],
    method: Annotated[str, typer.Option(help="farneback, tvl1, raft, raft_small.")]
    = "farneback",
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")]
    = None,
    force: Annotated[bool, typer.Option(help="Recompute complete samples too.")] = False,
    raft_weights: Annotated[str | None, typer.Option(help="Local RAFT weights file.")] = None,
    device: Annotated[str, typer.Option(help="Device for RAFT.")] = "cpu",
) -> None:
    """Optical flow beside the frames of a prepared store (resumable)."""
    summary = prepare_flow(store, method, workers=workers, force=force,
                           raft_weights=raft_weights, device=device)
    print_problems(summary.problems)
    console.print(f"flow ({method}): computed {summary.computed}, kept {summary.skipped}, "
                  f"failed {summary.failed} -> {store}")


@rvf_app.command("train")
@friendly
def train_cmd(
    data: Annotated[Path, typer.Option(help="Prepared store with flow.")],
    out: Annotated[Path, typer.Option(help="Run folder.")],
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")] = DEFAULT_RECIPE,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoints/last.ckpt.")]
    = False,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu, auto.")] = None,
) -> None:
    """Train a video classification recipe (two-stream by default)."""
    result = fit(load_recipe(recipe, set_ or []), data, out, resume=resume,
                 max_epochs=max_epochs, accelerator=accelerator)
    console.print(f"model -> {result.best_checkpoint}; best {result.metrics.get('monitor')} "
                  f"{result.metrics.get('best_score')}")


@rvf_app.command("pretrain")
@friendly
def pretrain_cmd(
    data: Annotated[Path, typer.Argument(help="Prepared EchoNet store with an EF column "
                                              "(flow is computed when missing).")],
    out: Annotated[Path, typer.Option(help="Folder for grey/, flow/, pretrained.json.")],
    kinetics: Annotated[Path | None, typer.Option(help="Local Kinetics-format weights "
                                                  "(stage 1; stem adapted, head dropped).")]
    = None,
    recipe: Annotated[str, typer.Option(help="EF regression recipe.")] = PRETRAIN_RECIPE,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
    stream: Annotated[list[str] | None, typer.Option(help="Only this stream (grey, flow).")]
    = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu, auto.")] = None,
) -> None:
    """Pretrain each stream as the paper did: Kinetics weights, then EF regression on grey
    clips and on flow clips; prints the model.pretrained value for the RVF classifier."""
    result = pretrain_streams(data, out, kinetics, recipe, set_ or [],
                              tuple(stream or ("grey", "flow")), max_epochs,
                              accelerator=accelerator)
    console.print(f"pretrained streams -> {out}; train with "
                  f"--set 'model.pretrained={result['pretrained']}'")


@rvf_app.command("ensemble")
@friendly
def ensemble_cmd(
    data: Annotated[Path, typer.Option(help="Prepared store with flow.")],
    out: Annotated[Path, typer.Option(help="Ensemble folder.")],
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")] = DEFAULT_RECIPE,
    members: Annotated[int, typer.Option(help="Models (seeded patient-wise splits).")] = 5,
    mode: Annotated[str, typer.Option(help="repeated (random val per seed) or folds.")]
    = "repeated",
    seed: Annotated[int, typer.Option(help="Seed of the splits.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Val share of non-test patients "
                                                "(repeated).")] = DEFAULT_VAL_FRACTION,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
) -> None:
    """Train N models on N seeded patient-wise re-splits (test kept); `cinelab rvf predict
    ENS STORE` averages their probabilities."""
    overrides = list(set_ or []) + ([f"trainer.max_epochs={max_epochs}"]
                                    if max_epochs is not None else [])
    info = train_ensemble(load_recipe(recipe, overrides), data, out, members, seed, mode,
                          val_fraction)
    console.print(f"{len(info['members'])} members, threshold {info['threshold']:.3f} "
                  f"({info['threshold_source']}) -> {out}")


@rvf_app.command("predict")
@friendly
def predict_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt of `cinelab rvf train`, or an "
                                                    "ensemble folder (`rvf ensemble`).")],
    store: Annotated[Path, typer.Argument(help="Prepared store with flow (or an ingest "
                                                "folder, or a raw RVF cohort).")],
    out: Annotated[Path, typer.Option(help="Folder for the predictions (the contract).")],
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    clips: Annotated[int | None, typer.Option(help="Random clips per video (recipe's).")]
    = None,
    seed: Annotated[int, typer.Option(help="Seed of the clip draws.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Clips per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    threshold: Annotated[float | None, typer.Option(help="Decision threshold "
                                                    "(default: the checkpoint's, or 0.5).")]
    = None,
) -> None:
    """Probability per video (mean over random clips) and per patient: predictions.csv,
    problems.csv, run.json (alias of `cinelab predict`)."""
    extra = {k: v for k, v in {"clips": clips, "threshold": threshold}.items() if v is not None}
    folder = predict_any(checkpoint, store, out, Options(split=split, seed=seed,
                                                         batch_size=batch_size,
                                                         device=device, extra=extra))
    table, problems = read_predictions(folder), read_problems(folder)
    positive = int(table["prediction"].sum()) if "prediction" in table.columns else 0
    finish_predictions(len(table), problems, folder, store,  # exit 3: an input was skipped
                       f"{len(table)} videos, {positive} predicted positive -> {folder}")


@rvf_app.command("evaluate")
@friendly
def evaluate_cmd(
    predictions: Annotated[Path, typer.Argument(help="Folder of `cinelab rvf predict`.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics, tables and ROC.")],
    labels: Annotated[Path | None, typer.Option(help="Labels (default: the store's).")]
    = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
) -> None:
    """AUC, sensitivity, specificity (bootstrap CIs) per video and per patient."""
    metrics = evaluate_rvf(predictions, out, Options(labels=labels, extra={"n_boot": n_boot}))
    for level in ("video", "patient"):
        auc = metrics.get(level, {}).get("auc")
        if auc:
            console.print(f"{level} AUC {auc['value']:.3f} "
                          f"[{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]")
    console.print(f"metrics -> {out}")


@rvf_app.command("saliency")
@friendly
def saliency_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt of `cinelab rvf train`.")],
    store: Annotated[Path, typer.Argument(help="Prepared store with flow.")],
    out: Annotated[Path, typer.Option(help="Folder for saliency videos and strips.")],
    ids: Annotated[list[str] | None, typer.Option("--id", help="Sample ids to explain.")]
    = None,
    top: Annotated[int, typer.Option(help="Else the N most confident videos.")] = 4,
    predictions: Annotated[Path | None, typer.Option(help="Prediction folder to rank by.")]
    = None,
    split: Annotated[str | None, typer.Option(help="Split to rank without predictions.")]
    = None,
) -> None:
    """Guided backpropagation on both streams: AVI overlays and PNG strips
    (alias of `cinelab explain`)."""
    extra = {"ids": ids, "top": top, "predictions": predictions}
    explain_rvf(checkpoint, store, out, Options(split=split, extra=extra))
    console.print(f"saliency -> {out}")


@rvf_app.command("report")
@friendly
def report_cmd(
    evaluation: Annotated[Path, typer.Argument(help="Folder of `cinelab rvf evaluate`.")],
    saliency: Annotated[Path | None, typer.Option(help="Folder of `cinelab rvf saliency`.")]
    = None,
    run: Annotated[Path | None, typer.Option(help="Training run folder.")] = None,
    out: Annotated[Path | None, typer.Option(help="HTML file (default in the evaluation).")]
    = None,
) -> None:
    """One self-contained HTML report: metrics, ROC, streams, patients, saliency strips."""
    console.print(f"report -> {rvf_report(evaluation, out, saliency, run)}")


@rvf_app.command("run")
@friendly
def run_cmd(
    dicom_root: Annotated[Path, typer.Argument(help="Folder of echo DICOMs.")],
    out: Annotated[Path, typer.Option(help="Folder for every step's output.")],
    classes: Annotated[Path | None, typer.Option(help="CSV: study id -> class "
                                                 "(default: the folder's).")] = None,
    splits: Annotated[Path | None, typer.Option(help="CSV: study id -> train/val/test "
                                                "(default: the folder's).")] = None,
    recipe: Annotated[str, typer.Option(help="Recipe name or YAML path.")] = DEFAULT_RECIPE,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
    size: Annotated[int | None, typer.Option(help="Frame size (default: the recipe's).")]
    = None,
    workers: Annotated[int | None, typer.Option(help="Processes for prepare/flow.")] = None,
    top: Annotated[int, typer.Option(help="Most confident test videos to explain.")] = 4,
    members: Annotated[int, typer.Option(help="N > 1: an ensemble of N seeded patient-wise "
                                         "splits.")] = 1,
) -> None:
    """The whole pipeline, resumable: ingest, prepare + flow, train, threshold on val,
    predict test, evaluate, saliency, report (alias of `cinelab run rvf`)."""
    extra = {k: v for k, v in {"classes": classes, "splits": splits, "set": set_ or [],
                               "size": size, "workers": workers, "top": top,
                               "members": members}.items()
             if v is not None}
    metrics = run_rvf(dicom_root, out, Options(recipe=recipe, max_epochs=max_epochs,
                                               extra=extra))
    low, high = metrics.get("auc_ci_low"), metrics.get("auc_ci_high")
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else \
        " (no CI: too few cases of a class)"
    auc = metrics.get("auc")
    if metrics.get("calibrated") is False:
        console.print(f"[yellow]{metrics.get('calibration_note')}[/yellow]", highlight=False)
    elif metrics.get("ece_raw") is not None:
        console.print(f"calibrated: test ECE {metrics['ece_raw']:.3f} before, "
                      f"{metrics['ece']:.3f} after")
    console.print("test AUC "
                  f"{'n/a' if auc is None else format(auc, '.3f')}{ci}; "
                  f"report -> {metrics['report']}")


def register(apps: dict[str, typer.Typer]) -> None:
    """Add `synth rvf` and the `rvf` command group to the CLI."""
    apps["synth"].command("rvf")(friendly(synth_rvf))
    apps["main"].add_typer(rvf_app, name="rvf")
