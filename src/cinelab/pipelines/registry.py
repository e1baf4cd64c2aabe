"""The pipeline contract: what one published pipeline declares, and the registry of them.

A pipeline is one package under ``cinelab.pipelines`` (or a third-party package named by a
``cinelab.pipelines`` entry point) whose ``__init__`` builds a `Pipeline` and calls
`register_pipeline`. The generic commands (`cinelab predict/evaluate/explain/report/run/demo`)
only ever talk to these fields, and every `predict` writes the one prediction contract
(`cinelab.infer.contract`): predictions.csv, problems.csv and run.json.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinelab.errors import InputError
from cinelab.infer.contract import read_run
from cinelab.plugins import Registry
from cinelab.train.checkpoint import read_checkpoint_task

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """A demo target: `metric` (a key of the demo's metrics) compared with `value`."""

    metric: str
    op: str
    value: float

    def met(self, metrics: Mapping[str, Any]) -> bool | None:
        """True/False, or None when the metric is absent or not a number."""
        found = metrics.get(self.metric)
        if not isinstance(found, int | float):
            return None
        return bool(_OPS[self.op](float(found), self.value))

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass
class Options:
    """Options of a generic verb: the common ones, plus pipeline-specific ``extra``
    (``--option key=value`` on the command line, parsed as YAML scalars)."""

    split: str | None = None
    device: str = "cpu"
    batch_size: int = 16
    labels: Path | None = None
    recipe: str | None = None
    max_epochs: int | None = None
    n: int | None = None
    seed: int = 0
    method: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A pipeline-specific option (from ``extra``), with a default."""
        return self.extra.get(key, default)


#: predict(model, input, out, options) -> out; writes predictions.csv, problems.csv, run.json
PredictFn = Callable[[Path, Path, Path, Options], Path]
#: evaluate(predictions dir, out, options) -> metrics (labels: options.labels or run.json)
EvaluateFn = Callable[[Path, Path, Options], dict[str, Any]]
#: report(evaluation dir, out html or None) -> html path
ReportFn = Callable[[Path, Path | None], Path]
#: explain(model, input, out, options) -> out folder of saliency maps
ExplainFn = Callable[[Path, Path, Path, Options], Path]
#: run(data, out, options) -> metrics of the whole chain (resumable)
RunFn = Callable[[Path, Path, Options], dict[str, Any]]
#: synth(out, n, seed) -> cohort root
SynthFn = Callable[[Path, int, int], Path]
#: calibrate(model, data, out, options) -> summary: fits uncertainty state (intervals, OOD,
#: probability calibration) on a split training never saw and stores it in the checkpoint
CalibrateFn = Callable[[Path, Path, Path, Options], dict[str, Any]]


@dataclass(frozen=True)
class Pipeline:
    """What one published pipeline declares; everything specific to it hangs off this."""

    name: str
    title: str
    tasks: tuple[str, ...]
    layouts: tuple[str, ...]
    recipes: tuple[str, ...]
    predict: PredictFn
    evaluate: EvaluateFn
    report: ReportFn
    run: RunFn
    synth: SynthFn
    demo_options: Options
    targets: tuple[Target, ...]
    explain: ExplainFn | None = None
    owns_model: Callable[[Path], bool] | None = None
    commands: Callable[[dict[str, Any]], None] | None = None
    calibrate: CalibrateFn | None = None
    #: execution engines its predict takes as ``--option engine=`` (`infer.engines.ENGINES`);
    #: empty: only eager (the generic ``--engine`` is then refused, not ignored)
    engines: tuple[str, ...] = ()

    def claims(self, model: Path) -> bool:
        """Whether `model` (a checkpoint file or a model folder) is one of this pipeline's."""
        if self.owns_model is not None and self.owns_model(model):
            return True
        return model.is_file() and read_checkpoint_task(model) in self.tasks


PIPELINES: Registry[Pipeline] = Registry("pipeline")


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    """Add `pipeline` to the registry (called by the pipeline package's __init__)."""
    return PIPELINES.add(pipeline.name, pipeline)


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called `name`, or a one-line error listing them."""
    return PIPELINES.get(name)


def list_pipelines() -> list[Pipeline]:
    """Every registered pipeline, by name."""
    return [p for _, p in PIPELINES.items()]


def pipeline_for_model(model: str | Path, name: str | None = None) -> Pipeline:
    """The pipeline named `name`, else the one whose checkpoint task or folder `model` is."""
    if name:
        return get_pipeline(name)
    model = Path(model)
    if not model.exists():
        raise InputError(model, "model", "a checkpoint file or model folder", "no such path")
    owners = [p for p in list_pipelines() if p.claims(model)]
    if len(owners) == 1:
        return owners[0]
    found = "no pipeline claims it" if not owners else \
        f"{', '.join(p.name for p in owners)} all claim it"
    raise InputError(model, "model", "a checkpoint or model folder of exactly one pipeline "
                     f"({', '.join(p.name for p in list_pipelines())})", found,
                     fix="name it with --pipeline")


def pipeline_for_predictions(folder: str | Path, name: str | None = None) -> Pipeline:
    """The pipeline that wrote a prediction folder (its run.json), or the one named."""
    if name:
        return get_pipeline(name)
    run = read_run(folder)
    if "pipeline" not in run:
        raise InputError(Path(folder) / "run.json", "pipeline", "the pipeline that wrote it",
                         "no pipeline field", fix="name it with --pipeline")
    return get_pipeline(str(run["pipeline"]))
