"""Task "image_classification": one image per store sample -> binary or multi-label logits.

Targets come from manifest label columns: ``data.target: label`` (binary, one logit) or a
list (multi-label, one logit each, e.g. the 14 NIH ChestX-ray14 findings); every label uses
BCE-with-logits (``loss.name: bce_with_logits``). Samples with a missing label are left out.

Fine-tuning (DeepCOVID-XR): ``model.freeze_epochs: N`` trains only the head (the registered
output Linear, after the model's dropout ``model.kwargs.drop_rate``) for the first N epochs,
with the backbone frozen (no gradients, BatchNorm statistics fixed), then the whole network.
``model.pretrained`` may be timm's ImageNet file or a cinelab checkpoint of the same
architecture (e.g. NIH pretraining): every tensor that fits is loaded, the head is skipped
when its size differs and keeps its fresh initialisation.

Class imbalance (``data.balance``): ``pos_weight`` weighs each label's positives by
negatives/positives of the training split; ``sampler`` draws each epoch's training images
with replacement, weighted by the inverse frequency of their (first) label.

Augmentation (``data.augment``, `cinelab.data.augment`) runs on the batch on the device.
Validation logs val/loss and val/auc (mean ROC AUC over labels with both classes present,
torchmetrics' binary AUROC), which selects the best checkpoint. ``schedule.name:
plateau`` multiplies the rate by ``gamma`` after ``step_size`` epochs without AUC gain.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from cinelab.data.augment import RandomAugment, augment_config
from cinelab.data.datasets import StoreDataset, labelled_ids, target_values
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.models.classification import classifier_input, set_backbone_trainable
from cinelab.models.registry import output_layer
from cinelab.train.modules import TaskModule, build_optimizer
from cinelab.train.recipe import Recipe
from cinelab.train.setup import (
    TaskSetup,
    channels_last,
    input_spec,
    normalisation,
    register_task_setup,
)
from cinelab.train.transfer import report_dict, start_model

log = logging.getLogger(__name__)

TASK = "image_classification"
LABEL_SEPARATOR = "|"  # InputSpec.target of a multi-label model: the labels joined
UINT8_MAX = 255.0
UNDEFINED_AUC = 0.5  # logged when no label has both classes in the validation set
PLATEAU = "plateau"
MONITOR = ("val/auc", "max")


def target_columns(target: str | Sequence[str] | None) -> list[str]:
    """``data.target`` as a list of label columns (at least one)."""
    columns = [target] if isinstance(target, str) else list(target or [])
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise InputError(None, "data.target", "a label column or a list of them (e.g. label)",
                         repr(target))
    return columns


def complete_ids(store: PreparedStore, ids: Sequence[str], columns: Sequence[str]) -> list[str]:
    """The ids among `ids` with a finite value in every label column."""
    keep = list(ids)
    for column in columns:
        keep = labelled_ids(store, keep, column)
    return keep


# -- datasets -----------------------------------------------------------------------------------


class ImageDataset(StoreDataset):
    """(image uint8 (C, H, W), labels float32 (K,)) for each sample's single frame."""

    def __init__(self, store_root: str | Path | PreparedStore, ids: Sequence[str],
                 columns: Sequence[str]) -> None:
        super().__init__(store_root, ids)
        self.columns = list(columns)
        self.labels = np.stack([target_values(self.store, self.ids, c) for c in self.columns],
                               axis=1)
        self.order = np.arange(len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = int(self.order[index])
        frames = self.store.frames(self.ids[i])
        image = np.array(frames[0])  # (H, W, C): one image per sample
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(self.labels[i])


class BalancedImageDataset(ImageDataset):
    """An ImageDataset whose epochs draw images with replacement, weighted by the inverse
    frequency of their first label's class (reproducible per seed and epoch)."""

    def __init__(self, store_root: str | Path | PreparedStore, ids: Sequence[str],
                 columns: Sequence[str], seed: int = 0) -> None:
        super().__init__(store_root, ids, columns)
        self.seed = seed
        self.set_epoch(0)

    def sample_weights(self) -> np.ndarray:
        """Per-image probabilities: each class of the first label gets an equal share."""
        y = self.labels[:, 0] > 0.5
        counts = np.array([(~y).sum(), y.sum()], np.float64)
        weights = 1.0 / np.maximum(counts[y.astype(int)], 1.0)
        return weights / weights.sum()

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's images."""
        rng = np.random.default_rng([self.seed, epoch])
        self.order = rng.choice(len(self.ids), size=len(self.ids), p=self.sample_weights())


def positive_weights(labels: np.ndarray) -> list[float]:
    """negatives / positives of each label column (1 where a class is absent)."""
    pos = (labels > 0.5).sum(axis=0).astype(np.float64)
    neg = len(labels) - pos
    return [float(n / p) if p > 0 and n > 0 else 1.0 for n, p in zip(neg, pos, strict=True)]


# -- freezing -----------------------------------------------------------------------------------


class FreezeBackbone(L.Callback):
    """Train only the head for the first `epochs` epochs, then the whole network."""

    def __init__(self, epochs: int) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise InputError(None, "model.freeze_epochs", "an integer >= 0", repr(epochs))
        self.epochs = epochs

    def frozen(self, epoch: int) -> bool:
        """True while epoch `epoch` (0-based) keeps the backbone fixed."""
        return epoch < self.epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = self.frozen(trainer.current_epoch)
        set_backbone_trainable(pl_module.model, not frozen)
        log.info("epoch %d: backbone %s", trainer.current_epoch, "frozen" if frozen else "trains")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self.frozen(trainer.current_epoch):  # Lightning sets train mode after validation
            set_backbone_trainable(pl_module.model, False)


# -- module -------------------------------------------------------------------------------------


def mean_auc(truth: np.ndarray, probs: np.ndarray) -> float:
    """Mean ROC AUC over label columns with both classes present (NaN when none)."""
    values = []
    for k in range(truth.shape[1]):
        y = truth[:, k] > 0.5
        if 0 < y.sum() < len(y):
            values.append(float(binary_auroc(torch.as_tensor(probs[:, k], dtype=torch.float32),
                                             torch.as_tensor(y.astype(np.int64)))))
    return float(np.mean(values)) if values else float("nan")


class ImageClassificationModule(TaskModule):
    """Images -> logits (B, K); BCE per label; validation AUC selects the best checkpoint."""

    monitor = MONITOR

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 labels: Sequence[str], loss: Any = "bce_with_logits", optim: Any = None,
                 schedule: Any = None, augment: Mapping[str, Any] | None = None,
                 freeze_epochs: int = 0, pos_weight: Sequence[float] | None = None,
                 channels_last: bool = False) -> None:
        super().__init__(model, _with_pos_weight(loss, pos_weight), mean, std, optim,
                         schedule, None, channels_last)
        self.labels = list(labels)
        config = augment_config(augment)
        self.augment = None if config is None else RandomAugment(config)
        self.freeze_epochs = int(freeze_epochs)
        self._val: list[tuple[Tensor, Tensor]] = []

    def configure_callbacks(self) -> list[Any]:
        return [FreezeBackbone(self.freeze_epochs)] if self.freeze_epochs else []

    def configure_optimizers(self) -> Any:
        if self.schedule_cfg.get("name") != PLATEAU:
            return super().configure_optimizers()
        optimizer = build_optimizer(self.model.parameters(), self.optim_cfg)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=float(self.schedule_cfg.get("gamma", 0.1)),
            patience=int(self.schedule_cfg.get("step_size", 1)))
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": scheduler, "interval": "epoch", "monitor": MONITOR[0]}}

    def prepare_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        """uint8 images on device -> normalised float images (augmented while training)."""
        images, labels = batch
        if self.training and self.augment is not None:
            blank = torch.zeros_like(images[:, 0])
            scaled, _ = self.augment(images.float() / UINT8_MAX, blank)
            images = scaled * UINT8_MAX
        return self._layout(self.normalize(images)), labels.float()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = self.prepare_batch(batch)
        loss = self.loss_fn(self(images).float(), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=len(labels))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = self.prepare_batch(batch)
        logits = self(images).float()
        self.log("val/loss", self.loss_fn(logits, labels), on_epoch=True, prog_bar=True,
                 sync_dist=True, batch_size=len(labels))
        self._val.append((torch.sigmoid(logits).detach(), labels.detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs = torch.cat([p for p, _ in self._val])
        truth = torch.cat([t for _, t in self._val])
        self._val.clear()
        if self.trainer.world_size > 1:
            probs, truth = (self.all_gather(x).flatten(0, 1) for x in (probs, truth))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auc = mean_auc(truth.cpu().numpy(), probs.cpu().numpy())
        self.log("val/auc", UNDEFINED_AUC if np.isnan(auc) else auc, prog_bar=True)


def _with_pos_weight(loss: Any, pos_weight: Sequence[float] | None) -> Any:
    """The loss section with BCE's pos_weight tensor added (when balancing by weights)."""
    if pos_weight is None:
        return loss
    cfg = loss if isinstance(loss, Mapping) else {"name": getattr(loss, "name", loss),
                                                  "kwargs": dict(getattr(loss, "kwargs", {}))}
    kwargs = {**dict(cfg.get("kwargs") or {}), "pos_weight": torch.tensor(pos_weight)}
    return {"name": cfg.get("name", "bce_with_logits"), "kwargs": kwargs}


# -- setup --------------------------------------------------------------------------------------


@register_task_setup(TASK)
def setup_image_classification(recipe: Recipe, store: PreparedStore, train_ids: list[str],
                               val_ids: list[str]) -> TaskSetup:
    """Image datasets (balanced if asked), the module, and the input spec."""
    data, seed = recipe.data, recipe.trainer.seed
    columns = target_columns(data.target)
    train_ids, val_ids = complete_ids(store, train_ids, columns), \
        complete_ids(store, val_ids, columns)
    train = BalancedImageDataset(store, train_ids, columns, seed) \
        if data.balance == "sampler" else ImageDataset(store, train_ids, columns)
    val = ImageDataset(store, val_ids, columns)
    _check_frozen_start(recipe)
    model, report = start_model(recipe)
    _check_channels(model, store)
    _check_outputs(model, columns)
    mean, std = normalisation(recipe, store)
    pos_weight = positive_weights(train.labels) if data.balance == "pos_weight" else None
    module = ImageClassificationModule(
        model, mean, std, columns, loss=recipe.loss, optim=recipe.optim,
        schedule=recipe.schedule, augment=data.augment, freeze_epochs=recipe.model.freeze_epochs,
        pos_weight=pos_weight, channels_last=channels_last(recipe))
    spec = input_spec(recipe, store, mean, std, target=LABEL_SEPARATOR.join(columns))
    extra = {"labels": columns, "crop": data.crop, "train_images": len(train_ids),
             "val_images": len(val_ids), "pos_weight": pos_weight,
             "train_positives": (train.labels > 0.5).sum(axis=0).astype(int).tolist(),
             "start_weights": report_dict(report),
             "crop_source": store.info.get("crop_source")}  # where the crop masks came from
    return TaskSetup(module, train, val, spec, extra)


def _check_frozen_start(recipe: Recipe) -> None:
    """A frozen backbone needs start weights: frozen random features teach the head nothing."""
    if recipe.model.freeze_epochs and not recipe.model.pretrained:
        raise InputError(None, "model.pretrained",
                         f"start weights for a backbone frozen {recipe.model.freeze_epochs} "
                         "epoch(s) (model.freeze_epochs)", "none (random initialisation)",
                         "pass model.pretrained=<file> (per member: --set "
                         "ensemble.pretrained.<arch>=<file>) or model.freeze_epochs=0")


def _check_channels(model: nn.Module, store: PreparedStore) -> None:
    channels = int(store.frames(store.ids[0]).shape[-1])
    wanted = classifier_input(model)
    if wanted is not None and wanted != channels:
        raise InputError(store.root, "model.kwargs.in_channels", f"{channels} (the store's "
                         "channels)", str(wanted), f"override model.kwargs.in_channels={channels}"
                         " or prepare the store with that many channels")


def _check_outputs(model: nn.Module, columns: Sequence[str]) -> None:
    n_out = output_layer(model).out_features
    if n_out != len(columns):
        raise InputError(None, "model.kwargs.num_outputs", f"{len(columns)} (one per label in "
                         f"data.target {list(columns)})", str(n_out))
