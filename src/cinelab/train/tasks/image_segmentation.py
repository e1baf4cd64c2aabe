"""Task "image_segmentation": multi-class 2D segmentation of store slices (cine MRI stacks).

Every (sample, slice) whose store mask is non-empty is a training image (all slices with
``data.empty_slices: true``). Classes come from ``data.classes``, an ordered mapping from
class name to store label value(s), e.g. ``{LV: 3, MYO: 2, RV: 1}`` for ACDC labels: output
channel 0 is background, channel k the k-th class; store labels not listed are background.

Losses take logits (B, K, H, W) and class indices (B, H, W): ``cross_entropy``; ``dice``,
``focal`` and ``dice_ce`` mean their softmax forms here (MONAI, registered below as
``softmax_dice``, ``softmax_focal``, ``softmax_dice_ce``). Augmentation (``data.augment``,
see `cinelab.data.augment`) runs on the batch on the device; validation logs the Dice of
each class over the epoch's pixels (``val/dice_<name>``) and their mean (``val/dice``),
which selects the best checkpoint. Transfer learning (start weights, encoder freezing,
subsets) is in `cinelab.train.transfer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import Tensor, nn
from torchmetrics import Metric

from cinelab.data.augment import RandomAugment, augment_config
from cinelab.data.datasets import StoreDataset
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.train.losses import LOSSES, register_loss
from cinelab.train.modules import TaskModule
from cinelab.train.recipe import Recipe
from cinelab.train.setup import (
    TaskSetup,
    channels_last,
    input_spec,
    normalisation,
    register_task_setup,
)
from cinelab.train.transfer import (
    FreezeEncoder,
    check_subset,
    report_dict,
    start_model,
    subset_ids,
    subset_items,
)

TASK = "image_segmentation"
DEFAULT_CLASSES = {"LV": 3, "MYO": 2, "RV": 1}  # ACDC label values
LABEL_LEVELS = 256
UINT8_MAX = 255.0
MULTICLASS_LOSSES = {"dice": "softmax_dice", "focal": "softmax_focal",
                     "dice_ce": "softmax_dice_ce", "dice+ce": "softmax_dice_ce"}


# -- classes ------------------------------------------------------------------------------------


def class_table(classes: Mapping[str, Any] | None) -> tuple[list[str], np.ndarray]:
    """(class names, lookup table store label -> class index) for ``data.classes``."""
    classes = dict(classes or DEFAULT_CLASSES)
    lut = np.zeros(LABEL_LEVELS, np.uint8)
    for index, (name, labels) in enumerate(classes.items(), start=1):
        values = labels if isinstance(labels, list | tuple) else [labels]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 0 < value < LABEL_LEVELS:
                raise InputError(None, f"data.classes.{name}", "store label values 1-255",
                                 repr(labels))
            lut[value] = index
    return list(classes), lut


def class_labels(classes: Mapping[str, Any] | None) -> np.ndarray:
    """Class index -> the (first) store label of that class; index 0 -> 0 (background)."""
    names, _ = class_table(classes)
    values = [0] + [v[0] if isinstance(v, list | tuple) else v
                    for v in dict(classes or DEFAULT_CLASSES).values()]
    return np.asarray(values[: len(names) + 1], np.uint8)


# -- dataset ------------------------------------------------------------------------------------


class SliceDataset(StoreDataset):
    """(image uint8 (C, H, W), class mask uint8 (H, W)) for each kept (sample, slice)."""

    def __init__(self, store_root: str | Path | PreparedStore, ids: Sequence[str],
                 classes: Mapping[str, Any] | None = None, empty_slices: bool = False) -> None:
        super().__init__(store_root, ids)
        self.names, self.lut = class_table(classes)
        self.skipped: list[tuple[str, str]] = []
        self.items: list[tuple[str, int]] = []
        for sid in self.ids:
            self.items += self._slices(sid, empty_slices)
        if not self.items:
            raise InputError(self.store_root, "mask", "labelled slices in the requested "
                             "samples", f"none among {len(self.ids)} sample(s)",
                             "prepare the store with masks, or set data.empty_slices: true")

    def _slices(self, sample_id: str, empty_slices: bool) -> list[tuple[str, int]]:
        mask = self.store.mask(sample_id)
        if mask is None:
            self.skipped.append((sample_id, "no mask"))
            return []
        labelled = np.asarray(mask).reshape(len(mask), -1).any(axis=1)
        keep = np.arange(len(mask)) if empty_slices else np.flatnonzero(labelled)
        return [(sample_id, int(z)) for z in keep]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        sid, z = self.items[index]
        frames = self.store.frames(sid)
        image = np.array(frames[z] if frames.ndim == 4 else frames[z][..., None])
        mask = self.lut[np.asarray(self.store.mask(sid)[z])]
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)

    def patients(self) -> list[str]:
        """Patients of the kept slices."""
        m = self.store.manifest.set_index(self.store.manifest["sample_id"].astype(str))
        return sorted({str(m.at[sid, "patient_id"]) for sid, _ in self.items})


# -- losses and metrics -------------------------------------------------------------------------


class _ChannelTarget(nn.Module):
    """Adapts a MONAI loss to (logits (B, K, ...), class indices (B, ...)) inputs."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.loss(logits, target[:, None].long())


def _register(name: str, factory: Any) -> None:
    if name not in LOSSES:  # a re-imported module registers once
        register_loss(name)(factory)


_register("softmax_dice", lambda **kw: _ChannelTarget(DiceLoss(
    **{"softmax": True, "to_onehot_y": True, **kw})))
_register("softmax_focal", lambda **kw: _ChannelTarget(FocalLoss(
    **{"use_softmax": True, "to_onehot_y": True, **kw})))
_register("softmax_dice_ce", lambda **kw: _ChannelTarget(DiceCELoss(
    **{"softmax": True, "to_onehot_y": True, **kw})))


def multiclass_loss(loss: Any) -> dict[str, Any]:
    """The recipe's loss section with dice/focal/dice_ce mapped to their softmax forms."""
    cfg = loss if isinstance(loss, Mapping) else {"name": loss.name, "kwargs": loss.kwargs}
    name = str(cfg.get("name", "cross_entropy"))
    return {"name": MULTICLASS_LOSSES.get(name, name), "kwargs": dict(cfg.get("kwargs") or {})}


class ClassDice(Metric):
    """Dice per class (1..K-1) over all pixels seen since the last reset (DDP-safe)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.add_state("inter", torch.zeros(n_classes), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(n_classes), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        for k in range(1, self.n_classes):
            p, t = pred == k, target == k
            self.inter[k] += (p & t).sum()
            self.total[k] += p.sum() + t.sum()

    def compute(self) -> Tensor:
        return torch.where(self.total > 0, 2 * self.inter / self.total.clamp_min(1), 1.0)


# -- module -------------------------------------------------------------------------------------


class ImageSegmentationModule(TaskModule):
    """Slices -> class logits (B, K, H, W); per-class validation Dice; batch augmentation."""

    monitor = ("val/dice", "max")

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 class_names: Sequence[str], loss: Any = "cross_entropy", optim: Any = None,
                 schedule: Any = None, augment: Mapping[str, Any] | None = None,
                 freeze_encoder_epochs: int = 0, channels_last: bool = False) -> None:
        super().__init__(model, multiclass_loss(loss if not isinstance(loss, str)
                                                else {"name": loss}),
                         mean, std, optim, schedule, None, channels_last)
        self.class_names = list(class_names)
        config = augment_config(augment)
        self.augment = None if config is None else RandomAugment(config)
        self.freeze_encoder_epochs = int(freeze_encoder_epochs)
        self.val_dice = ClassDice(len(self.class_names) + 1)

    def configure_callbacks(self) -> list[Any]:
        return [FreezeEncoder(self.freeze_encoder_epochs)] if self.freeze_encoder_epochs else []

    def prepare_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        """uint8 images/masks on device -> normalised images; in training, augmented."""
        images, masks = batch
        if self.training and self.augment is not None:
            scaled, masks = self.augment(images.float() / UINT8_MAX, masks)
            images = scaled * UINT8_MAX
        return self._layout(self.normalize(images)), masks.long()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, masks = self.prepare_batch(batch)
        loss = self.loss_fn(self(images).float(), masks)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=len(masks))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, masks = self.prepare_batch(batch)
        logits = self(images).float()
        self.log("val/loss", self.loss_fn(logits, masks), on_epoch=True, prog_bar=True,
                 sync_dist=True, batch_size=len(masks))
        self.val_dice.update(logits.argmax(1), masks)

    def on_validation_epoch_end(self) -> None:
        dice = self.val_dice.compute()[1:]
        for name, value in zip(self.class_names, dice, strict=True):
            self.log(f"val/dice_{name}", value)
        self.log("val/dice", dice.mean(), prog_bar=True)
        self.val_dice.reset()


# -- setup --------------------------------------------------------------------------------------


@register_task_setup(TASK)
def setup_image_segmentation(recipe: Recipe, store: PreparedStore, train_ids: list[str],
                             val_ids: list[str]) -> TaskSetup:
    """Slice datasets (training subset applied), the module, and the input spec."""
    data, seed = recipe.data, recipe.trainer.seed
    subset = check_subset(data.subset)
    train_ids = subset_ids(store, train_ids, subset, seed) if subset else train_ids
    train = SliceDataset(store, train_ids, data.classes, data.empty_slices)
    train.items = subset_items(train.items, subset, seed)
    val = SliceDataset(store, val_ids, data.classes, data.empty_slices)
    model, report = start_model(recipe)
    n_out = _out_channels(model, store)
    if n_out != len(train.names) + 1:
        raise InputError(None, "model.kwargs.out_channels", f"{len(train.names) + 1} (background"
                         f" + classes {train.names})", str(n_out))
    mean, std = normalisation(recipe, store)
    module = ImageSegmentationModule(
        model, mean, std, train.names, loss=recipe.loss, optim=recipe.optim,
        schedule=recipe.schedule, augment=data.augment,
        freeze_encoder_epochs=recipe.model.freeze_encoder_epochs,
        channels_last=channels_last(recipe))
    spec = input_spec(recipe, store, mean, std, target="labels")
    classes = dict(data.classes or DEFAULT_CLASSES)
    extra = {"classes": classes, "prep": store.spec, "train_images": len(train),
             "val_images": len(val),
             "train_patients": len(train.patients()), "train_ids": list(train_ids),
             "start_weights": report_dict(report),
             "skipped": [list(s) for s in train.skipped + val.skipped]}
    return TaskSetup(module, train, val, spec, extra)


def _out_channels(model: nn.Module, store: PreparedStore) -> int:
    """Output channels of a segmentation model, from a tiny forward pass."""
    channels = int(store.frames(store.ids[0]).shape[-1])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, channels, 64, 64))
    model.train(was_training)
    return int((out["out"] if isinstance(out, Mapping) else out).shape[1])
