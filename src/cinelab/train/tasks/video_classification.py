"""Task "video_classification": a binary label from clips of grey frames and/or optical flow.

The model says which streams it takes (`data.streams.model_streams`): two_stream models take
grey + flow and use the streams of their ``streams`` keyword; a plain video model takes grey
(1 input channel), flow (2) or both (3). So the two-stream model and its single-stream
baselines train with this same code and differ only in the recipe's model section.

Recipe keys used:
- ``data.target`` (default "label"): a 0/1 manifest column; ``data.frames``, ``data.period``,
  ``data.pad`` (random translation), ``data.normalize`` ("dataset": grey mean/std of the
  store, flow scaled by its RMS over the training videos);
- class imbalance: ``loss.kwargs.pos_weight`` ("balanced" = negatives / positives of the
  training set, a number, or null) for a weighted BCE loss, and/or
  ``data.augment.sampler: balanced`` (each epoch a class-balanced resample of the videos);
- ``loss.name``: bce (default for this task) or focal;
- ``loss.kwargs.stream_weight`` (default 0): for two-stream models with per-stream logits,
  add this times the mean of the streams' own losses (deep supervision: each stream must
  classify on its own, so a fast stream does not leave the other one idle).
Validation logs val/loss and val/auc (one clip per video); the best checkpoint has the lowest
val/loss (on a validation set of a few dozen videos the AUC saturates at 1.0 within a few
epochs and would keep an undertrained early checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC

from cinelab.data.datasets import labelled_ids, target_values
from cinelab.data.store import PreparedStore
from cinelab.data.streams import StreamClipDataset, model_streams, stream_normalisation
from cinelab.errors import InputError
from cinelab.models.registry import create_model
from cinelab.train.checkpoint import InputSpec
from cinelab.train.losses import create_loss
from cinelab.train.modules import TaskModule
from cinelab.train.recipe import Recipe
from cinelab.train.setup import TaskSetup, register_task_setup, store_size

TASK = "video_classification"
DEFAULT_TARGET = "label"
BALANCED = "balanced"
SAMPLERS = ("none", BALANCED)
BCE_NAMES = ("bce", "bce_with_logits")
CLASS_COLUMN = "class"
STREAM_WEIGHT = "stream_weight"


class VideoClassificationModule(TaskModule):
    """Clip -> one logit (binary): BCE-with-logits (optionally weighted); logs val/auc."""

    monitor = ("val/loss", "min")

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 loss: nn.Module | str | Mapping[str, Any] = "bce", optim: Any = None,
                 schedule: Any = None, pad: int | None = None,
                 channels_last: bool = False, stream_weight: float = 0.0) -> None:
        super().__init__(model, loss, mean, std, optim, schedule, pad, channels_last)
        self.val_auc = BinaryAUROC()
        self.stream_weight = float(stream_weight)
        if self.stream_weight and not getattr(model, "stream_logits", False):
            raise InputError(None, "loss.kwargs.stream_weight", "a two_stream model whose "
                             "streams output logits (fusion other than 'features')",
                             type(model).__name__)

    def prepare_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Clips on device -> normalised (and, in training, translated) clips."""
        clips, target = batch
        clips = self.normalize(clips)
        if self.training and self.translate is not None:
            clips = self.translate(clips)
        return self._layout(clips), target

    def logits(self, clips: Tensor) -> Tensor:
        """(B,) logits of the positive class."""
        out = self(clips).float()
        if out.ndim != 2 or out.shape[1] != 1:
            raise ValueError(f"model output: expected (B, 1) logits for a binary label, "
                             f"found shape {tuple(out.shape)} (set model num_outputs: 1)")
        return out[:, 0]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        clips, target = self.prepare_batch(batch)
        if not self.stream_weight:
            loss = self.loss_fn(self.logits(clips), target)
        else:
            outs = self.model.stream_outputs(clips)
            loss = self.loss_fn(self.model.fuse(outs).float()[:, 0], target)
            aux = torch.stack([self.loss_fn(o.float()[:, 0], target) for o in outs.values()])
            self.log("train/stream_loss", aux.mean(), on_epoch=True, batch_size=len(target))
            loss = loss + self.stream_weight * aux.mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=len(target))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        clips, target = self.prepare_batch(batch)
        logits = self.logits(clips)
        self.val_auc.update(logits.sigmoid(), target.long())
        self.log("val/loss", self.loss_fn(logits, target), on_epoch=True, prog_bar=True,
                 sync_dist=True, batch_size=len(target))
        self.log("val/auc", self.val_auc, on_epoch=True, prog_bar=True)


def binary_labels(store: PreparedStore, ids: Sequence[str], target: str) -> np.ndarray:
    """0/1 labels of `ids` (float32), or an error naming the values found."""
    values = target_values(store, ids, target)
    bad = sorted(set(np.unique(values).tolist()) - {0.0, 1.0})
    if bad:
        raise InputError(store.root / "manifest.csv", target, "binary labels 0/1",
                         f"values {bad[:5]}")
    return values


def pos_weight_of(setting: Any, labels: np.ndarray) -> float | None:
    """BCE pos_weight: "balanced" -> negatives/positives, a number as is, None -> None."""
    if setting is None:
        return None
    if setting == BALANCED:
        n_pos = float(labels.sum())
        if n_pos == 0 or n_pos == len(labels):
            raise InputError(None, "loss.kwargs.pos_weight", "both classes in the training "
                             "set for 'balanced'", f"{int(n_pos)} positive of {len(labels)}")
        return (len(labels) - n_pos) / n_pos
    if isinstance(setting, int | float) and not isinstance(setting, bool) and setting > 0:
        return float(setting)
    raise InputError(None, "loss.kwargs.pos_weight", "'balanced', a positive number or null",
                     repr(setting))


def build_loss(recipe: Recipe, labels: np.ndarray) -> tuple[nn.Module, float | None]:
    """The recipe's loss with its class weighting resolved, and the pos_weight used."""
    kwargs = dict(recipe.loss.kwargs)
    setting = kwargs.pop("pos_weight", None)
    kwargs.pop(STREAM_WEIGHT, None)
    name = recipe.loss.name
    if name == "mse":  # the recipe default: this task's natural loss is BCE
        name = "bce"
    weight = pos_weight_of(setting, labels)
    if weight is not None:
        if name not in BCE_NAMES:
            raise InputError(None, "loss.kwargs.pos_weight", f"a loss among {BCE_NAMES}",
                             repr(name), "use data.augment.sampler: balanced instead")
        kwargs["pos_weight"] = torch.tensor(weight, dtype=torch.float32)
    return create_loss(name, **kwargs), weight


def _stream_weight(recipe: Recipe) -> float:
    value = recipe.loss.kwargs.get(STREAM_WEIGHT, 0.0) or 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InputError(None, f"loss.kwargs.{STREAM_WEIGHT}", "a number >= 0", repr(value))
    return float(value)


def sampler_of(recipe: Recipe) -> str:
    """data.augment.sampler: "none" (default) or "balanced"."""
    value = recipe.data.augment.get("sampler", "none") or "none"
    if value not in SAMPLERS:
        raise InputError(None, "data.augment.sampler", f"one of {list(SAMPLERS)}", repr(value))
    return str(value)


def class_names(store: PreparedStore) -> list[str]:
    """Class names by label (0, 1) from the manifest's class column, else ["0", "1"]."""
    m = store.manifest
    if CLASS_COLUMN not in m.columns or "label" not in m.columns:
        return ["0", "1"]
    pairs = m[["label", CLASS_COLUMN]].dropna().drop_duplicates()
    names = {int(k): str(v) for k, v in zip(pairs["label"], pairs[CLASS_COLUMN], strict=True)}
    return [names.get(i, str(i)) for i in (0, 1)]


@register_task_setup(TASK)
def setup_video_classification(recipe: Recipe, store: PreparedStore, train_ids: list[str],
                               val_ids: list[str]) -> TaskSetup:
    """Datasets, module and input spec of a binary video classification recipe."""
    data = recipe.data
    target = data.target or DEFAULT_TARGET
    if not isinstance(target, str) or data.frames is None:
        raise InputError(None, "data.target/data.frames", "one label column and a clip "
                         "length for video classification", f"{target!r}, {data.frames!r}")
    train_ids = labelled_ids(store, train_ids, target)
    val_ids = labelled_ids(store, val_ids, target)
    labels = binary_labels(store, train_ids, target)
    binary_labels(store, val_ids, target)
    model = create_model(recipe.model.name, pretrained=recipe.model.pretrained,
                         **dict(recipe.model.kwargs))
    layout, active = model_streams(model)
    seed = recipe.trainer.seed
    train = StreamClipDataset(store, train_ids, data.frames, data.period, layout, active,
                              target, True, seed, balance=sampler_of(recipe) == BALANCED)
    val = StreamClipDataset(store, val_ids, data.frames, data.period, layout, active, target,
                            False, seed)
    mean, std = stream_normalisation(store, train_ids, layout, active, data.normalize)
    loss, weight = build_loss(recipe, labels)
    module = VideoClassificationModule(model, mean, std, loss=loss, optim=recipe.optim,
                                       schedule=recipe.schedule, pad=data.pad,
                                       channels_last=bool(recipe.trainer.channels_last),
                                       stream_weight=_stream_weight(recipe))
    spec = InputSpec(task=recipe.task, size=store_size(recipe, store), channels=len(mean),
                     frames=data.frames, period=data.period, mean=mean, std=std,
                     target=target)
    extra = {"streams": {"layout": list(layout), "active": list(active)},
             "class_names": class_names(store), "pos_weight": weight,
             "train_counts": {"n": len(labels), "positive": int(labels.sum())}}
    return TaskSetup(module, train, val, spec, extra)
