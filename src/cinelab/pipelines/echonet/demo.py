"""The end-to-end demo on a synthetic echo cohort, every step an API call printed as it goes:
synthesise -> ingest -> prepare -> measure tracings -> train segmentation -> train EF ->
predict the test split (all clips + beat by beat) -> evaluate -> report.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SEG_RECIPE, EF_RECIPE = "echonet-seg-cpu", "echonet-ef-cpu"
TARGETS = {"dice_overall": (">=", 0.85), "ef_mae": ("<=", 6.0)}


@dataclass
class DemoConfig:
    """Demo sizes: small enough for 2 CPU cores in a few minutes."""

    n_videos: int = 150
    seed: int = 0
    synth_size: int = 112
    store_size: int = 64
    workers: int = 2
    n_boot: int = 1000


@dataclass
class DemoResult:
    """Paths and metrics of a demo run."""

    out: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        """The HTML report of the run."""
        return self.out / "run" / "report.html"


def _step(result: DemoResult, console: Console, name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    with console.status(name):
        value = fn()
    result.timings[name] = time.perf_counter() - start
    console.print(f"[green]done[/green] {name} ({result.timings[name]:.0f} s)")
    return value


def _quiet_training_logs() -> None:
    """Keep Lightning's start-up chatter out of the demo's output (warnings still show)."""
    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import; then we do)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def run_demo(out: str | Path, config: DemoConfig | None = None,
             console: Console | None = None) -> DemoResult:
    """Run the whole EchoNet pipeline on a synthetic cohort; returns its metrics."""
    _quiet_training_logs()
    config = config or DemoConfig()
    console = console or Console()
    result = DemoResult(Path(out))
    store = _data_steps(result, config, console)
    run = result.out / "run"
    _model_steps(result, store, run, console)
    metrics = _evaluation_steps(result, store, run, config, console)
    result.metrics.update(_headline(metrics))
    from cinelab.utils import write_json

    write_json(result.out / "demo_metrics.json", result.metrics)
    _print_metrics(console, result)
    return result


def _data_steps(result: DemoResult, config: DemoConfig, console: Console) -> Path:
    from cinelab.formats.ingest import ingest, write_ingested
    from cinelab.pipelines.echonet.tracings import measure_cohort_tracings
    from cinelab.prep.prepare import PrepSpec, prepare
    from cinelab.synth.echo import synth_echo_cohort
    from cinelab.utils import write_csv

    out = result.out
    cohort = _step(result, console, f"synthesise {config.n_videos} echo videos",
                   lambda: synth_echo_cohort(out / "cohort", n=config.n_videos,
                                             seed=config.seed, size=config.synth_size))
    ingested = _step(result, console, "ingest", lambda: ingest(cohort))
    write_ingested(ingested, out / "ingest")
    summary = _step(result, console, "prepare the store",
                    lambda: prepare(ingested.manifest, out / "store",
                                    PrepSpec(size=config.store_size),
                                    tracings=ingested.tracings, workers=config.workers))
    table, _ = _step(result, console, "measure EF from tracings",
                     lambda: measure_cohort_tracings(out / "store"))
    write_csv(table, out / "ef_from_tracings.csv")
    result.metrics.update({
        "videos": len(ingested.manifest), "prepared": summary.usable,
        "tracing_ef_max_abs_diff": float((table["EF"] - table["label_EF"]).abs().max()),
    })
    return out / "store"


def _model_steps(result: DemoResult, store: Path, run: Path, console: Console) -> None:
    from cinelab.train.fit import fit
    from cinelab.train.recipe import load_recipe

    seg = _step(result, console, f"train segmentation ({SEG_RECIPE})",
                lambda: fit(load_recipe(SEG_RECIPE), store, run / "seg", resume=True,
                            progress=False))
    ef_recipe = load_recipe(EF_RECIPE, [f"model.pretrained={seg.best_checkpoint}"])
    _step(result, console, f"train EF ({EF_RECIPE})",
          lambda: fit(ef_recipe, store, run / "ef", resume=True, progress=False))


def _evaluation_steps(result: DemoResult, store: Path, run: Path, config: DemoConfig,
                      console: Console) -> dict[str, Any]:
    from cinelab.pipelines.echonet.predict import predict
    from cinelab.pipelines.echonet.runs import PREDICTIONS, evaluate_run, report_run

    _step(result, console, "predict the test split (all clips + beat by beat)",
          lambda: predict(run, store, run / PREDICTIONS, split="test", overlays=True))
    metrics = _step(result, console, "evaluate",
                    lambda: evaluate_run(run, n_boot=config.n_boot, seed=config.seed))
    _step(result, console, "report", lambda: report_run(run))
    return metrics


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Dice and EF errors on the test split, from metrics.json."""
    out: dict[str, Any] = {"test_videos": metrics["summary"].get("n_evaluated")}
    seg = metrics.get("segmentation", {})
    for key in ("dice_overall", "dice_ed", "dice_es", "dice_all_frames"):
        if key in seg:
            out[key] = seg[key]["value"]
    for column, report in metrics.get("ef", {}).items():
        out[f"ef_mae_{column.removeprefix('ef_')}"] = report["mae"]["value"]
    beats = "ef_mae_beats" if "ef_mae_beats" in out else "ef_mae_all_clips"
    out["ef_mae"] = out.get(beats)
    return out


def meets_targets(metrics: dict[str, Any]) -> dict[str, bool]:
    """Which demo targets (Dice >= 0.85, EF MAE <= 6) the metrics meet."""
    ok = {}
    for key, (op, bound) in TARGETS.items():
        value = metrics.get(key)
        ok[key] = value is not None and (value >= bound if op == ">=" else value <= bound)
    return ok


def _print_metrics(console: Console, result: DemoResult) -> None:
    table = Table(title="cinelab demo: EchoNet-Dynamic pipeline on a synthetic cohort")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    table.add_row("total time (s)", f"{sum(result.timings.values()):.0f}")
    console.print(table)
    for key, ok in meets_targets(result.metrics).items():
        op, bound = TARGETS[key]
        console.print(f"target {key} {op} {bound}: {'[green]met' if ok else '[red]missed'}")
    console.print(f"report: {result.report.resolve()}")
