"""Cine MRI short-axis segmentation (ACDC, Kaggle DSB, PNG pairs): LV cavity, myocardium and
RV labels, then EDV/ESV/EF, myocardial mass and RV volumes from the labelled stacks."""

from cinelab.formats.ingest import register_layout
from cinelab.infer.engines import ENGINES
from cinelab.pipelines.cmr import commands, pipeline
from cinelab.pipelines.cmr.calibrate import calibrate_cmr
from cinelab.pipelines.cmr.layouts import CMR_LAYOUTS
from cinelab.pipelines.cmr.prepare import prepare_cmr_sample
from cinelab.pipelines.registry import Options, Pipeline, Target, register_pipeline
from cinelab.prep.prepare import register_preparer

register_preparer("cmr", prepare_cmr_sample)
for _layout in CMR_LAYOUTS:
    register_layout(_layout)

#: demo: `cinelab demo cmr` trains cmr-seg-cpu at 64 px on a synthetic ACDC-like cohort
DEMO_SET = ("data.size=64", "data.augment={}", "data.batch_size=8",
            "model.kwargs.channels=[16, 32, 64]", "model.kwargs.strides=[2, 2]",
            "trainer.val_every=10")

CMR = register_pipeline(Pipeline(
    name="cmr",
    title="Cine MRI short-axis segmentation: LV, myocardium, RV; volumes, EF, mass",
    tasks=(pipeline.TASK,),
    layouts=tuple(layout.name for layout in CMR_LAYOUTS),
    recipes=("cmr-seg", "cmr-seg-cpu"),
    predict=pipeline.predict,
    evaluate=pipeline.evaluate,
    report=pipeline.report,
    run=pipeline.run,
    synth=pipeline.synth,
    demo_options=Options(recipe="cmr-seg-cpu", max_epochs=20, n=10, seed=0,
                         extra={"set": list(DEMO_SET)}),
    targets=(Target("lv_dice", ">=", 0.85), Target("lv_volume_error", "<=", 0.10)),
    commands=commands.register,
    calibrate=calibrate_cmr,
    engines=ENGINES,
))
