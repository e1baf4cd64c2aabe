"""The `cinelab` command line: a thin typer app over the API functions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cinelab.cliutil import console, friendly, print_problems
from cinelab.errors import CinelabError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Deep learning on cardiac and chest imaging: echo, cine MRI, chest X-ray.")
synth_app = typer.Typer(no_args_is_help=True, help="Write synthetic cohorts with known truth.")
measure_app = typer.Typer(no_args_is_help=True, help="Clinical measurements (EF, volumes).")
import_app = typer.Typer(no_args_is_help=True, help="Turn published weights into checkpoints.")
app.add_typer(synth_app, name="synth")
app.add_typer(measure_app, name="measure")
app.add_typer(import_app, name="import")

@synth_app.command("echo")
@friendly
def synth_echo(
    out: Annotated[Path, typer.Option(help="Folder to write the EchoNet-layout cohort into.")],
    n: Annotated[int, typer.Option(help="Number of videos.")] = 120,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    size: Annotated[int, typer.Option(help="Frame size in pixels.")] = 112,
    dicom: Annotated[bool, typer.Option(help="Also write multi-frame ultrasound DICOMs.")] = False,
) -> None:
    """Synthetic apical-4-chamber echo cohort in the EchoNet-Dynamic layout."""
    from cinelab.synth.echo import synth_echo_cohort

    with console.status(f"synthesising {n} echo videos"):
        root = synth_echo_cohort(out, n=n, seed=seed, size=size, dicom=dicom)
    console.print(f"wrote {n} videos to {root}")


@synth_app.command("cxr")
@friendly
def synth_cxr(
    out: Annotated[Path, typer.Option(help="Folder to write the chest X-ray cohort into.")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 256,
    layout: Annotated[str, typer.Option(help="folders (DeepCOVID-XR tree) or nih.")] = "folders",
    positive_fraction: Annotated[float, typer.Option(help="Share of positive cases.")] = 0.5,
) -> None:
    """Synthetic chest X-rays with lung masks (COVID-like opacities or NIH findings)."""
    from cinelab.pipelines.cxr.synth import synth_cxr_cohort

    with console.status(f"synthesising {n} chest X-rays"):
        root = synth_cxr_cohort(out, n=n, seed=seed, size=size, layout=layout,
                                positive_fraction=positive_fraction)
    console.print(f"wrote {n} images to {root}")


@app.command()
@friendly
def ingest(
    root: Annotated[Path, typer.Argument(help="Cohort folder (EchoNet layout, DICOMs, videos).")],
    out: Annotated[Path, typer.Option(help="Folder for manifest.csv, tracings.csv, problems.csv")],
    layout: Annotated[str, typer.Option(help="auto, echonet, dicom or videos.")] = "auto",
    labels: Annotated[Path | None, typer.Option(help="Label CSV (DICOM/video folders).")] = None,
) -> None:
    """Read a cohort layout into a validated manifest and a problems report."""
    from cinelab.formats.ingest import ingest as ingest_api
    from cinelab.formats.ingest import write_ingested

    result = ingest_api(root, layout=layout, labels=labels)
    write_ingested(result, out)
    print_problems(result.problems)
    console.print(f"{result.layout}: {len(result.manifest)} samples, "
                  f"{len(result.problems)} problem(s) -> {out}")
    if result.manifest.empty:
        raise CinelabError(f"{root}: no usable sample found")


@app.command()
@friendly
def prepare(
    source: Annotated[Path, typer.Argument(help="An ingest folder, a manifest CSV, or a cohort.")],
    out: Annotated[Path, typer.Option(help="Prepared store folder.")],
    size: Annotated[int, typer.Option(help="Output frame size.")] = 112,
    channels: Annotated[int, typer.Option(help="3 (RGB) or 1 (greyscale).")] = 3,
    crop: Annotated[str, typer.Option(help="auto, always or never crop to the sector.")] = "auto",
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address.")] = None,
    force: Annotated[bool, typer.Option(help="Recompute complete samples too.")] = False,
) -> None:
    """Decode every sample once into a memory-mappable, resumable prepared store."""
    from rich.progress import Progress

    from cinelab.prep.prepare import PrepSpec
    from cinelab.prep.prepare import prepare as prepare_api

    cohort = _load_cohort(source)
    spec = PrepSpec(size=size, channels=channels, crop=crop)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("preparing", total=len(cohort.manifest))
        summary = prepare_api(cohort.manifest, out, spec, tracings=cohort.tracings,
                              workers=workers, scheduler=scheduler, force=force,
                              on_result=lambda _: progress.advance(task))
    print_problems(summary.problems)
    console.print(f"prepared {summary.prepared}, already complete {summary.skipped}, "
                  f"failed {summary.failed} -> {out}")
    if summary.usable == 0:
        raise CinelabError(f"{source}: nothing usable was produced")


@measure_app.command("tracings")
@friendly
def measure_tracings(
    source: Annotated[Path, typer.Argument(help="EchoNet folder, ingest folder or store.")],
    out: Annotated[Path, typer.Option(help="CSV to write (one row per video).")],
) -> None:
    """EDV, ESV and EF by the method of discs from VolumeTracings, beside FileList values."""
    from cinelab.pipelines.echonet.tracings import measure_cohort_tracings

    table, problems = measure_cohort_tracings(source)
    from cinelab.utils import write_csv

    write_csv(table, out)
    print_problems(problems)
    console.print(f"{len(table)} videos measured -> {out}")


@app.command()
@friendly
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe name (e.g. echonet-ef-cpu) or YAML path.")],
    data: Annotated[Path, typer.Option(help="Prepared store to train on.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, logs, model.pt.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoints/last.ckpt.")]
    = False,
    precision: Annotated[str | None, typer.Option(help="32-true, bf16-mixed, 16-mixed.")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices: 1, 2, auto, ...")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu, auto.")] = None,
    strategy: Annotated[str | None, typer.Option(help="auto, ddp, ...")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    best_params: Annotated[Path | None, typer.Option(help="best_params.yaml of `cinelab tune`; "
                                                          "--set still wins.")] = None,
) -> None:
    """Train a recipe on a prepared store (Lightning: checkpoints, resume, logs, DDP)."""
    from cinelab.train.fit import fit
    from cinelab.train.recipe import load_recipe

    tuned: list[str] = []
    if best_params is not None:
        from cinelab.train.tune import overrides_from_best

        tuned = overrides_from_best(best_params)
    loaded = load_recipe(recipe, tuned + (set_ or []))
    result = fit(loaded, data, out, resume=resume, precision=precision,
                 devices=_devices(devices), accelerator=accelerator, strategy=strategy,
                 max_epochs=max_epochs, num_workers=num_workers)
    console.print(f"model -> {result.best_checkpoint}; metrics {result.metrics}")


def _devices(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


@import_app.command("echonet")
@friendly
def import_echonet(
    out: Annotated[Path, typer.Option(help="Folder for echonet-seg.pt and echonet-ef.pt.")],
    seg: Annotated[Path | None, typer.Option(help="deeplabv3_resnet50_random.pt")] = None,
    ef: Annotated[Path | None, typer.Option(help="r2plus1d_18_32_2_pretrained.pt")] = None,
    data: Annotated[Path | None, typer.Option(help="Store whose mean/std to record.")] = None,
    mean: Annotated[str | None, typer.Option(help="Per-channel mean, 0-255: 'a,b,c'.")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std, 0-255: 'a,b,c'.")] = None,
    frames: Annotated[int, typer.Option(help="Frames per clip of the EF model.")] = 32,
    period: Annotated[int, typer.Option(help="Sampling period of the EF model.")] = 2,
) -> None:
    """Import EchoNet-Dynamic's released weights as self-describing cinelab checkpoints."""
    from cinelab.pipelines.echonet.importers import import_echonet as import_api

    written = import_api(seg, ef, out, frames=frames, period=period, mean=_floats(mean),
                         std=_floats(std), store=data)
    for name, path in written.items():
        console.print(f"{name} -> {path}")


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(v) for v in text.split(",")]


@app.command()
@friendly
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="EF (or segmentation) checkpoint, or a run "
                                                    "folder with ef/ and seg/.")],
    input: Annotated[Path, typer.Argument(help="Prepared store, video folder, AVI or DICOM.")],
    out: Annotated[Path, typer.Option(help="Folder for the prediction CSVs and masks.")],
    seg: Annotated[Path | None, typer.Option(help="Segmentation checkpoint.")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split of a store.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Label CSV (e.g. FileList.csv).")] = None,
    batch_size: Annotated[int, typer.Option(help="Clips or frames per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    overlays: Annotated[bool, typer.Option(help="Write LV-outline overlay videos.")] = False,
    max_beats: Annotated[int, typer.Option(help="Beats averaged beat by beat.")] = 5,
    stride: Annotated[int, typer.Option(help="Step between all-clips start frames.")] = 1,
) -> None:
    """EF from one clip, all clips and beat by beat, with LV masks and ED/ES frames."""
    from rich.progress import Progress

    from cinelab.pipelines.echonet.predict import predict as predict_api

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("predicting", total=None)
        predict_api(checkpoint, input, out, seg_checkpoint=seg, batch_size=batch_size,
                    device=device, overlays=overlays, max_beats=max_beats,
                    all_clips_stride=stride, labels=labels, split=split,
                    progress=lambda *_: progress.advance(task))
    console.print(f"predictions -> {out}")


@app.command()
@friendly
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="Run folder or prediction folder.")],
    data: Annotated[Path | None, typer.Option(help="Prepared store with the labels.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Label CSV (sample_id/FileName, EF).")]
    = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
) -> None:
    """Dice, EF MAE/RMSE/R² with bootstrap CIs, AUCs, ED/ES frame error, plots."""
    from cinelab.pipelines.echonet.runs import evaluate_run

    metrics = evaluate_run(run_dir, data=data, labels=labels, n_boot=n_boot)
    for name, report in metrics.get("ef", {}).items():
        console.print(f"{name}: MAE {report['mae']['value']:.2f}, "
                      f"R² {report['r2']['value']:.3f}")
    seg_metrics = metrics.get("segmentation", {})
    if "dice_overall" in seg_metrics:
        console.print(f"Dice overall {seg_metrics['dice_overall']['value']:.3f}")
    console.print(f"metrics -> {Path(run_dir) / 'evaluation'}")


@app.command()
@friendly
def report(
    run_dir: Annotated[Path, typer.Argument(help="An evaluated run folder.")],
    data: Annotated[Path | None, typer.Option(help="Store with the frames for overlays.")]
    = None,
) -> None:
    """One self-contained HTML report of a run."""
    from cinelab.pipelines.echonet.runs import report_run

    console.print(f"report -> {report_run(run_dir, data=data)}")


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(help="Folder for every demo output.")] = Path("runs/demo"),
    n: Annotated[int, typer.Option(help="Videos in the synthetic cohort.")] = 150,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """The end-to-end demo on a synthetic echo cohort, printing its metrics."""
    from cinelab.pipelines.echonet.demo import DemoConfig, run_demo

    run_demo(out, DemoConfig(n_videos=n, seed=seed), console=Console())


def _load_cohort(source: Path) -> Any:
    from cinelab.formats.ingest import ingest as ingest_api
    from cinelab.formats.ingest import load_ingested

    if source.is_file() or (source / "manifest.csv").exists():
        return load_ingested(source)
    return ingest_api(source)


def _register_pipeline_commands() -> None:
    """Add each cinelab.commands module's commands (one file per pipeline)."""
    import importlib
    import pkgutil

    import cinelab.commands as commands

    apps = {"main": app, "synth": synth_app, "measure": measure_app, "import": import_app}
    for info in pkgutil.iter_modules(commands.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(apps)


_register_pipeline_commands()

if __name__ == "__main__":
    app()
