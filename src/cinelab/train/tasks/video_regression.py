"""Task "video_regression" (alias "regression"): one number per video from random clips."""

from __future__ import annotations

import numpy as np

from cinelab.data.datasets import ClipDataset, labelled_ids, target_values
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.train.modules import VideoRegressionModule
from cinelab.train.recipe import Recipe
from cinelab.train.setup import (
    TaskSetup,
    build_model,
    channels_last,
    input_spec,
    normalisation,
    register_task_setup,
)

TASK = "video_regression"


@register_task_setup(TASK, "regression")
def setup_video_regression(recipe: Recipe, store: PreparedStore, train_ids: list[str],
                           val_ids: list[str]) -> TaskSetup:
    """MSE regression of `data.target` on random clips; the output bias starts at the mean."""
    data = recipe.data
    if not isinstance(data.target, str) or data.frames is None:
        raise InputError(None, "data.target/data.frames", "one target column and a clip "
                         "length for video regression", f"{data.target!r}, {data.frames!r}")
    train_ids = labelled_ids(store, train_ids, data.target)
    val_ids = labelled_ids(store, val_ids, data.target)
    seed = recipe.trainer.seed
    train = ClipDataset(store, train_ids, data.frames, data.period, data.target, True, seed)
    val = ClipDataset(store, val_ids, data.frames, data.period, data.target, False, seed)
    target_mean = float(np.mean(target_values(store, train_ids, data.target)))
    mean, std = normalisation(recipe, store)
    module = VideoRegressionModule(build_model(recipe), mean, std, target_mean=target_mean,
                                   loss=recipe.loss, optim=recipe.optim,
                                   schedule=recipe.schedule, pad=data.pad,
                                   channels_last=channels_last(recipe))
    spec = input_spec(recipe, store, mean, std, frames=data.frames, period=data.period,
                      target=data.target)
    return TaskSetup(module, train, val, spec, {"target_mean": target_mean})
