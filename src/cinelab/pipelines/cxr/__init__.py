"""DeepCOVID-XR: chest X-ray COVID-19 classification by a weighted ensemble of CNNs on lung
crops and whole images (Wehbe et al., Radiology 2021).

Registers the pipeline (`PIPELINE`), its two layouts (the DeepCOVID-XR folder tree and NIH
ChestX-ray14, auto-detected by `cinelab ingest`) and the "cxr" preparer (lung crop + sizes).
"""

from cinelab.formats.ingest import register_layout
from cinelab.infer.engines import ENGINES
from cinelab.pipelines.cxr import commands
from cinelab.pipelines.cxr.calibrate import calibrate_cxr
from cinelab.pipelines.cxr.cohort import LAYOUTS
from cinelab.pipelines.cxr.crop import prepare_cxr_sample
from cinelab.pipelines.cxr.evaluate import evaluate, report
from cinelab.pipelines.cxr.gradcam import explain
from cinelab.pipelines.cxr.layout import MODALITY
from cinelab.pipelines.cxr.ood import predict_with_ood
from cinelab.pipelines.cxr.predict import is_cxr_ensemble
from cinelab.pipelines.cxr.run import run
from cinelab.pipelines.cxr.synth import synth_cohort
from cinelab.pipelines.registry import Options, Pipeline, Target, register_pipeline
from cinelab.prep.prepare import register_preparer

register_preparer(MODALITY, prepare_cxr_sample)
for _layout in LAYOUTS:
    register_layout(_layout)

#: `cinelab demo cxr` (and the learning test): 200 synthetic radiographs, two resnet10t
#: members (lung crop, whole image) at 64 px, batches of 8, 6 epochs on the CPU.
DEMO_OPTIONS = Options(n=200, seed=0, recipe="cxr-ensemble-cpu", max_epochs=6, extra={
    "tta": 1, "n_boot": 200, "set": [
        "ensemble.members=[{model: resnet10t, size: 64, crop: crop}, "
        "{model: resnet10t, size: 64, crop: uncrop}]", "data.batch_size=8"]})

PIPELINE = register_pipeline(Pipeline(
    name="cxr",
    title="DeepCOVID-XR chest X-ray ensemble",
    tasks=("image_classification",),
    layouts=tuple(layout.name for layout in LAYOUTS),
    recipes=("cxr-ensemble", "cxr-ensemble-cpu", "cxr-lungseg-cpu", "cxr-nih-pretrain-cpu"),
    predict=predict_with_ood,
    evaluate=evaluate,
    report=report,
    run=run,
    synth=synth_cohort,
    demo_options=DEMO_OPTIONS,
    targets=(Target("auc", ">=", 0.85),),
    explain=explain,
    owns_model=is_cxr_ensemble,
    commands=commands.register,
    calibrate=calibrate_cxr,
    engines=ENGINES,
))
