"""Task "segmentation": EchoNet-Dynamic's binary LV segmentation of the traced ED/ES frames."""

from __future__ import annotations

from cinelab.data.datasets import TracedFrameDataset
from cinelab.data.store import PreparedStore
from cinelab.train.modules import SegmentationModule
from cinelab.train.recipe import Recipe
from cinelab.train.setup import (
    TaskSetup,
    build_model,
    channels_last,
    input_spec,
    normalisation,
    register_task_setup,
)

TASK = "segmentation"
SEGMENTATION_TARGET = "LV"  # InputSpec.target of segmentation models: the LV cavity mask


@register_task_setup(TASK)
def setup_segmentation(recipe: Recipe, store: PreparedStore, train_ids: list[str],
                       val_ids: list[str]) -> TaskSetup:
    """LV masks from the tracing polygons (or store masks) of each traced frame."""
    train, val = TracedFrameDataset(store, train_ids), TracedFrameDataset(store, val_ids)
    mean, std = normalisation(recipe, store)
    module = SegmentationModule(build_model(recipe), mean, std, loss=recipe.loss,
                                optim=recipe.optim, schedule=recipe.schedule,
                                pad=recipe.data.pad, channels_last=channels_last(recipe))
    spec = input_spec(recipe, store, mean, std, target=SEGMENTATION_TARGET)
    return TaskSetup(module, train, val, spec,
                     {"skipped": [list(s) for s in train.skipped + val.skipped]})
