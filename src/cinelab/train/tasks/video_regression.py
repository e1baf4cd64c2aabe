"""Task "video_regression" (alias "regression"): one number per video from random clips.

The clips are the store's frames as stored (RGB or grey) when the model takes that many
channels. A model that takes other streams (`data.streams.model_streams`: a plain video model
with 1 input channel on an RGB store is "grey", 2 channels is "flow" (dx, dy), a two_stream
model says its own) trains on stream clips instead: grey averaged from the frames, optical
flow from the store (`cinelab rvf flow STORE`), normalised as for video classification (grey
by the store's statistics, flow by its RMS over the training videos). This is how both streams
of the RVF model are pretrained on EF (``--set model.kwargs.in_channels=2`` for flow).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from cinelab.data.datasets import ClipDataset, labelled_ids, target_values
from cinelab.data.store import PreparedStore
from cinelab.data.streams import StreamClipDataset, model_streams, stream_normalisation
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
    model = build_model(recipe)
    layout = stream_layout(model, store)
    if layout is None:
        train = ClipDataset(store, train_ids, data.frames, data.period, data.target, True, seed)
        val = ClipDataset(store, val_ids, data.frames, data.period, data.target, False, seed)
        mean, std = normalisation(recipe, store)
        extra: dict = {}
    else:
        layout, active = layout
        train = StreamClipDataset(store, train_ids, data.frames, data.period, layout, active,
                                  data.target, True, seed)
        val = StreamClipDataset(store, val_ids, data.frames, data.period, layout, active,
                                data.target, False, seed)
        mean, std = stream_normalisation(store, train_ids, layout, active, data.normalize)
        extra = {"streams": {"layout": list(layout), "active": list(active)}}
    target_mean = float(np.mean(target_values(store, train_ids, data.target)))
    module = VideoRegressionModule(model, mean, std, target_mean=target_mean,
                                   loss=recipe.loss, optim=recipe.optim,
                                   schedule=recipe.schedule, pad=data.pad,
                                   channels_last=channels_last(recipe))
    spec = input_spec(recipe, store, mean, std, frames=data.frames, period=data.period,
                      target=data.target)
    return TaskSetup(module, train, val, spec, {"target_mean": target_mean, **extra})


def _model_channels(model: nn.Module) -> int | None:
    inner = getattr(model, "module", model)
    conv = next((m for m in inner.modules() if isinstance(m, nn.Conv3d | nn.Conv2d)), None)
    return getattr(conv, "in_channels", None)


def stream_layout(model: nn.Module, store: PreparedStore
                  ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(layout, active streams) when `model` trains on stream clips (grey/flow), None when it
    takes the store's frames as they are (its input channels = the store's)."""
    inner = getattr(model, "module", model)
    if not hasattr(inner, "input_layout") and \
            _model_channels(model) in (None, len(store.mean)):
        return None
    return model_streams(model)
