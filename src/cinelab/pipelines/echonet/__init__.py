"""EchoNet-Dynamic: LV segmentation, EF regression, beat-by-beat EF (Ouyang et al. 2020).

The `Pipeline` declared here is what the generic verbs use: predict/evaluate/report over the
prediction contract (`api`), the whole resumable chain and its demo (`run`), and the two
EchoNet-only verbs `cinelab measure tracings` and `cinelab import echonet` (`commands`).
"""

from __future__ import annotations

from pathlib import Path

from cinelab.formats.ingest import Layout, register_layout
from cinelab.infer.engines import ENGINES
from cinelab.pipelines.echonet import commands, seg_video, tasks  # noqa: F401  (model, task)
from cinelab.pipelines.echonet.api import (
    evaluate_echonet_predictions,
    predict_echonet,
    report_echonet,
)
from cinelab.pipelines.echonet.calibrate import calibrate_echonet
from cinelab.pipelines.echonet.layout import ingest_echonet, is_echonet
from cinelab.pipelines.echonet.run import DEMO_OPTIONS, RECIPES, TARGETS, run_echonet, synth
from cinelab.pipelines.echonet.sources import EF_DIR, MODEL_FILE, SEG_DIR
from cinelab.pipelines.registry import Pipeline, register_pipeline

#: checkpoint tasks of this pipeline: EF regression (video) and LV segmentation
TASKS = ("video_regression", "regression", "segmentation")

register_layout(Layout("echonet", is_echonet, ingest_echonet,
                       "EchoNet-Dynamic: FileList.csv, VolumeTracings.csv, Videos/",
                       label_ranges={"EF": (0.0, 100.0)}))


def owns_model(model: Path) -> bool:
    """A run folder holding ef/model.pt and seg/model.pt (what `cinelab run echonet` trains)."""
    model = Path(model)
    return (model / EF_DIR / MODEL_FILE).is_file() and (model / SEG_DIR / MODEL_FILE).is_file()


PIPELINE = register_pipeline(Pipeline(
    name="echonet",
    title="EchoNet-Dynamic: LV segmentation and beat-by-beat ejection fraction from echo",
    tasks=TASKS,
    layouts=("echonet",),
    recipes=RECIPES,
    predict=predict_echonet,
    evaluate=evaluate_echonet_predictions,
    report=report_echonet,
    run=run_echonet,
    synth=synth,
    demo_options=DEMO_OPTIONS,
    targets=TARGETS,
    owns_model=owns_model,
    commands=commands.register,
    calibrate=calibrate_echonet,
    engines=ENGINES,
))
