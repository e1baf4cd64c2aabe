"""DeepCOVID-XR: chest X-ray COVID-19 classification by a weighted ensemble of CNNs on lung
crops and whole images (Wehbe et al., Radiology 2021).

Registers the pipeline (`PIPELINE`), its two layouts (the DeepCOVID-XR folder tree and NIH
ChestX-ray14, auto-detected by `cinelab ingest`) and the "cxr" preparer (lung crop + sizes).
"""

from cinelab.formats.ingest import register_layout
from cinelab.pipelines.cxr import commands
from cinelab.pipelines.cxr.cohort import LAYOUTS
from cinelab.pipelines.cxr.crop import prepare_cxr_sample
from cinelab.pipelines.cxr.evaluate import evaluate, report
from cinelab.pipelines.cxr.gradcam import explain
from cinelab.pipelines.cxr.layout import MODALITY
from cinelab.pipelines.cxr.predict import is_cxr_ensemble, predict
from cinelab.pipelines.cxr.run import run
from cinelab.pipelines.cxr.synth import synth_cohort
from cinelab.pipelines.registry import Options, Pipeline, Target, register_pipeline
from cinelab.prep.prepare import register_preparer

register_preparer(MODALITY, prepare_cxr_sample)
for _layout in LAYOUTS:
    register_layout(_layout)

#: `cinelab demo cxr`: 300 synthetic radiographs, the CPU ensemble (3 members, 96 px).
DEMO_OPTIONS = Options(n=300, seed=0, recipe="cxr-ensemble-cpu", extra={"tta": 4})

PIPELINE = register_pipeline(Pipeline(
    name="cxr",
    title="DeepCOVID-XR chest X-ray ensemble",
    tasks=("image_classification",),
    layouts=tuple(layout.name for layout in LAYOUTS),
    recipes=("cxr-ensemble", "cxr-ensemble-cpu", "cxr-lungseg-cpu", "cxr-nih-pretrain-cpu"),
    predict=predict,
    evaluate=evaluate,
    report=report,
    run=run,
    synth=synth_cohort,
    demo_options=DEMO_OPTIONS,
    targets=(Target("auc", ">=", 0.85),),
    explain=explain,
    owns_model=is_cxr_ensemble,
    commands=commands.register,
))
