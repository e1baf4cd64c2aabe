"""`cinelab predict / evaluate / explain / report`: every pipeline through the one contract.

The pipeline comes from the model (its checkpoint task or model folder), from a prediction
folder's run.json, from an evaluation's metrics.json, or from --pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, finish_predictions, friendly, parse_options
from cinelab.errors import InputError
from cinelab.infer.contract import read_predictions, read_problems
from cinelab.pipelines.registry import (
    Options,
    Pipeline,
    get_pipeline,
    pipeline_for_model,
    pipeline_for_predictions,
)
from cinelab.utils import read_json

PipelineOpt = Annotated[str | None, typer.Option(help="Pipeline name (default: found from "
                                                       "the model or the run).")]
OptionOpt = Annotated[list[str] | None, typer.Option(help="Pipeline option key=value "
                                                          "(repeatable).")]
EVALUATION_DIR = "evaluation"


def predict_cmd(
    model: Annotated[Path, typer.Argument(help="Checkpoint (model.pt) or model folder.")],
    input: Annotated[Path, typer.Argument(help="Store, folder or file to predict.")],
    out: Annotated[Path, typer.Option(help="Folder for predictions.csv, problems.csv, "
                                           "run.json (+ masks, maps).")],
    pipeline: PipelineOpt = None,
    split: Annotated[str | None, typer.Option(help="Only this split of a store.")] = None,
    labels: Annotated[Path | None, typer.Option(help="Label table recorded for evaluate.")]
    = None,
    batch_size: Annotated[int, typer.Option(help="Items per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    option: OptionOpt = None,
    engine: Annotated[str | None, typer.Option(help="eager, compiled or onnx (pipelines that "
                                                    "take --option engine).")] = None,
) -> None:
    """Predict with any pipeline's model; write the prediction contract."""
    chosen = pipeline_for_model(model, pipeline)
    extra = parse_options(option)
    if engine is not None:
        if engine != "eager" and engine not in chosen.engines:
            raise InputError(None, "--engine", f"eager (the {chosen.name} pipeline runs no "
                             f"other engine)" if not chosen.engines else
                             f"one of {', '.join(chosen.engines)}", engine)
        extra["engine"] = engine
    options = Options(split=split, device=device, batch_size=batch_size, labels=labels,
                      extra=extra)
    folder = chosen.predict(model, input, out, options)
    table, problems = read_predictions(folder), read_problems(folder)
    finish_predictions(len(table), problems, folder, input,  # exit 3: something skipped
                       f"{chosen.name}: {len(table)} prediction(s), {len(problems)} "
                       f"problem(s) -> {folder}")


def evaluate_cmd(
    predictions: Annotated[Path, typer.Argument(help="Folder written by `cinelab predict`.")],
    out: Annotated[Path | None, typer.Option(help="Evaluation folder (default: "
                                                  "PREDICTIONS/evaluation).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Truth (label CSV, manifest, store, "
                                                     "layout folder).")] = None,
    pipeline: PipelineOpt = None,
    option: OptionOpt = None,
) -> None:
    """Metrics of a prediction folder against its truth, with CIs and baselines."""
    chosen = pipeline_for_predictions(predictions, pipeline)
    out = out or Path(predictions) / EVALUATION_DIR
    metrics = chosen.evaluate(predictions, out, Options(labels=labels,
                                                        extra=parse_options(option)))
    print_metrics(chosen, metrics)
    console.print(f"metrics -> {out}")


def explain_cmd(
    model: Annotated[Path, typer.Argument(help="Checkpoint (model.pt) or model folder.")],
    input: Annotated[Path, typer.Argument(help="Store, folder or file to explain.")],
    out: Annotated[Path, typer.Option(help="Folder for the saliency maps.")],
    pipeline: PipelineOpt = None,
    split: Annotated[str | None, typer.Option(help="Only this split of a store.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    option: OptionOpt = None,
) -> None:
    """Saliency maps (Grad-CAM or guided backprop, by model type)."""
    chosen = pipeline_for_model(model, pipeline)
    if chosen.explain is None:
        raise InputError(model, "pipeline", "a pipeline with saliency maps",
                         f"{chosen.name} has none")
    folder = chosen.explain(model, input, out, Options(split=split, device=device,
                                                       extra=parse_options(option)))
    console.print(f"{chosen.name}: saliency maps -> {folder}")


def report_cmd(
    evaluation: Annotated[Path, typer.Argument(help="Folder written by `cinelab evaluate` "
                                                    "(or the prediction folder holding it).")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default: EVALUATION/"
                                                  "report.html).")] = None,
    pipeline: PipelineOpt = None,
) -> None:
    """One self-contained HTML report of an evaluation."""
    folder = Path(evaluation)
    if not (folder / "metrics.json").is_file() and (folder / EVALUATION_DIR).is_dir():
        folder = folder / EVALUATION_DIR
    chosen = pipeline_of_evaluation(folder, pipeline)
    console.print(f"report -> {chosen.report(folder, out)}")


def pipeline_of_evaluation(folder: Path, name: str | None) -> Pipeline:
    """--pipeline, else metrics.json's "pipeline", else the run.json beside or above."""
    if name:
        return get_pipeline(name)
    metrics = folder / "metrics.json"
    if metrics.is_file():
        recorded = read_json(metrics)
        if isinstance(recorded, dict) and recorded.get("pipeline"):
            return get_pipeline(str(recorded["pipeline"]))
    for candidate in (folder, folder.parent):
        if (candidate / "run.json").is_file():
            return pipeline_for_predictions(candidate)
    raise InputError(folder, "pipeline", "an evaluation that names its pipeline "
                     "(metrics.json or run.json)", "neither", fix="name it with --pipeline")


def print_metrics(pipeline: Pipeline, metrics: dict[str, Any]) -> None:
    """Headline metrics, each target marked met or missed."""
    targets = {t.metric: t for t in pipeline.targets}
    for key, value in metrics.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        target = targets.get(key)
        mark = "" if target is None else \
            f"  (target {target}: {'met' if target.met(metrics) else 'MISSED'})"
        console.print(f"{key}: {value:.4g}{mark}", highlight=False)


def register(apps: dict[str, Any]) -> None:
    """Add `predict`, `evaluate`, `explain` and `report` to the main app."""
    apps["main"].command("predict")(friendly(predict_cmd))
    apps["main"].command("evaluate")(friendly(evaluate_cmd))
    apps["main"].command("explain")(friendly(explain_cmd))
    apps["main"].command("report")(friendly(report_cmd))
