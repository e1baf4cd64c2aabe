"""The rvf pipeline: right-ventricular failure from echo (Shad et al., Nat Commun 2021).

Two-stream (greyscale + optical flow) 3D CNN video classifier, probabilities averaged over
random clips per video and over videos per patient. Modules: layout (DICOM folder + class
CSV + split CSV -> pseudonymised manifest), discover (the registered layout "rvf"),
prepare (frames + flow), predict (the contract), evaluate, explain (guided backprop),
report, calibrate + uncertainty (temperature, member disagreement, OOD flag), run (the
whole chain, resumable), pretrain (Kinetics -> EF pretraining of
each stream), ensemble (repeated patient-wise splits, averaged members), synth
(synthetic cohorts with known class and planted PHI), commands (`cinelab rvf ...`).
"""

from __future__ import annotations

from pathlib import Path

from cinelab.infer.engines import ENGINES
from cinelab.pipelines.registry import Options, Pipeline, Target, register_pipeline
from cinelab.pipelines.rvf.calibrate import calibrate_rvf
from cinelab.pipelines.rvf.commands import register
from cinelab.pipelines.rvf.discover import LAYOUT_NAME
from cinelab.pipelines.rvf.ensemble import is_ensemble, predict_any
from cinelab.pipelines.rvf.evaluate import evaluate_rvf
from cinelab.pipelines.rvf.explain import explain_rvf
from cinelab.pipelines.rvf.predict import MODEL_FILE, TASK
from cinelab.pipelines.rvf.report import report_rvf
from cinelab.pipelines.rvf.run import DEFAULT_RECIPE, run_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.train.checkpoint import read_checkpoint_task
from cinelab.utils import DONE_FILE, is_done, mark_done, read_json

#: A demo cohort small enough for 2 CPU cores (about a minute end to end).
DEMO_N = 100
DEMO_SYNTH = {"size": 64, "frames": 32}
SYNTH_FILES = ("classes.csv", "splits.csv", "truth.csv", "phi_planted.json")
DEMO_OPTIONS = Options(recipe=DEFAULT_RECIPE, max_epochs=20, n=DEMO_N, seed=0,
                       extra={"set": ["data.size=32", "data.frames=8"], "n_boot": 200,
                              "top": 2, "workers": 1})


def synth_demo(out: Path, n: int = DEMO_N, seed: int = 0) -> Path:
    """A synthetic RVF cohort (64 px, 32 frames) for the demo and the learning test (kept
    when the same cohort is already there)."""
    out = Path(out)
    if is_done(out) and read_json(out / DONE_FILE).get("cohort") == [n, seed]:
        return out
    synth_rvf_cohort(out, n=n, seed=seed, **DEMO_SYNTH)
    mark_done(out, SYNTH_FILES, cohort=[n, seed])
    return out


def owns_model(model: Path) -> bool:
    """A training run folder whose model.pt is a video classifier, or an rvf ensemble."""
    if is_ensemble(model):
        return True
    path = Path(model) / MODEL_FILE
    return Path(model).is_dir() and path.is_file() and read_checkpoint_task(path) == TASK


PIPELINE = register_pipeline(Pipeline(
    name="rvf",
    title="RV failure from echo: two-stream (greyscale + optical flow) video classifier",
    tasks=(TASK,),
    layouts=(LAYOUT_NAME,),
    recipes=("rvf-twostream", "rvf-twostream-cpu", "rvf-stream-pretrain-cpu"),
    predict=predict_any,
    evaluate=evaluate_rvf,
    report=report_rvf,
    run=run_rvf,
    synth=synth_demo,
    demo_options=DEMO_OPTIONS,
    targets=(Target("auc", ">=", 0.8),),
    explain=explain_rvf,
    calibrate=calibrate_rvf,
    owns_model=owns_model,
    commands=register,
    engines=ENGINES,
))
