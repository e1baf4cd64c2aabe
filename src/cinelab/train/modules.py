"""LightningModules per task: EF regression on clips, binary LV segmentation on frames.

Batches arrive on the device as uint8 tensors (see `cinelab.data.datasets`); each step's
`prepare_batch` normalises them there and, while training, applies the random translation
(EchoNet's ``pad``) to the whole batch, masks included. The optimiser and schedule come from
the recipe sections (`OptimSpec`, `ScheduleSpec`) or equivalent mappings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanMetric

from cinelab.data.transforms import Normalize, RandomTranslate
from cinelab.models.registry import output_layer
from cinelab.train.losses import create_loss

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
#: Optimisers that take a `momentum` argument.
MOMENTUM_OPTIMIZERS = ("sgd",)
SCHEDULES = ("step", "cosine", "none")
#: Predicted logit above which a pixel counts as LV (sigmoid probability 0.5).
LOGIT_THRESHOLD = 0.0
EMPTY_DICE = 1.0  # Dice when prediction and truth are both empty


def _as_dict(spec: Any) -> dict[str, Any]:
    """A recipe section (dataclass) or mapping as a plain dict."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return dataclasses.asdict(spec)
    return dict(spec or {})


def build_optimizer(params: Any, optim: Any) -> torch.optim.Optimizer:
    """Optimiser named by `optim` (name, lr, momentum, weight_decay, kwargs)."""
    cfg = _as_dict(optim)
    name = cfg.get("name", "adam")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name: expected one of {sorted(OPTIMIZERS)}, found {name!r}")
    kwargs = {"lr": cfg.get("lr", 1e-3), "weight_decay": cfg.get("weight_decay", 0.0),
              **dict(cfg.get("kwargs") or {})}
    if name in MOMENTUM_OPTIMIZERS:
        kwargs.setdefault("momentum", cfg.get("momentum", 0.0))
    return OPTIMIZERS[name](params, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Any,
                    max_epochs: int | None) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch LR schedule: step (step_size, gamma), cosine (T_max = max_epochs), none."""
    cfg = _as_dict(schedule)
    name, kwargs = cfg.get("name", "none"), dict(cfg.get("kwargs") or {})
    if name not in SCHEDULES:
        raise ValueError(f"schedule.name: expected one of {list(SCHEDULES)}, found {name!r}")
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.get("step_size", 1),
                                               gamma=cfg.get("gamma", 0.1), **kwargs)
    if name == "cosine":
        kwargs.setdefault("T_max", max(1, int(max_epochs or 1)))
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **kwargs)
    return None


def init_output_bias(model: nn.Module, value: float | Sequence[float]) -> None:
    """Set the bias of the model's final Linear (e.g. to the training-set EF mean)."""
    layer = output_layer(model)
    with torch.no_grad():
        layer.bias.copy_(torch.as_tensor(value, dtype=layer.bias.dtype).expand_as(layer.bias))


def binary_dice(logits: Tensor, mask: Tensor) -> Tensor:
    """Per-sample Dice of (logits > 0) against mask > 0; 1 where both are empty."""
    pred = (logits > LOGIT_THRESHOLD).flatten(1)
    true = (mask > 0).flatten(1)
    inter = (pred & true).sum(1).float()
    total = (pred.sum(1) + true.sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), EMPTY_DICE)


class TaskModule(L.LightningModule):
    """Shared plumbing: model, loss, on-device transforms, optimiser and schedule."""

    #: (metric, mode) that selects the best checkpoint.
    monitor: tuple[str, str] = ("val/loss", "min")

    def __init__(self, model: nn.Module, loss: nn.Module | str | Mapping[str, Any],
                 mean: Sequence[float], std: Sequence[float], optim: Any = None,
                 schedule: Any = None, pad: int | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = _make_loss(loss)
        self.normalize = Normalize(mean, std)
        self.translate = RandomTranslate(int(pad)) if pad else None
        self.optim_cfg, self.schedule_cfg = _as_dict(optim), _as_dict(schedule)
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        """Model output for a normalised batch (a dict output's "out" entry)."""
        out = self.model(x)
        return out["out"] if isinstance(out, Mapping) else out

    def _layout(self, x: Tensor) -> Tensor:
        if self.channels_last and x.ndim == 5:
            return x.contiguous(memory_format=torch.channels_last_3d)
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def setup(self, stage: str) -> None:
        # before the strategy wraps the model (DDP) and the optimisers are built
        if self.channels_last:
            fmt = torch.channels_last_3d if self._is_3d() else torch.channels_last
            self.model.to(memory_format=fmt)

    def _is_3d(self) -> bool:
        return any(isinstance(m, nn.Conv3d) for m in self.model.modules())

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.model.parameters(), self.optim_cfg)
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        scheduler = build_scheduler(optimizer, self.schedule_cfg, max_epochs)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _make_loss(loss: nn.Module | str | Mapping[str, Any]) -> nn.Module:
    if isinstance(loss, nn.Module):
        return loss
    if isinstance(loss, str):
        return create_loss(loss)
    cfg = _as_dict(loss)
    return create_loss(cfg["name"], **dict(cfg.get("kwargs") or {}))


class VideoRegressionModule(TaskModule):
    """Clip -> value regression (EF): MSE by default; logs train/loss, val/loss, val/mae.

    `target_mean` (the training-set mean of the target) initialises the output bias, as
    EchoNet-Dynamic does, so training starts from predicting the mean.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 target_mean: float | Sequence[float] | None = None,
                 loss: nn.Module | str | Mapping[str, Any] = "mse", optim: Any = None,
                 schedule: Any = None, pad: int | None = None,
                 channels_last: bool = False) -> None:
        super().__init__(model, loss, mean, std, optim, schedule, pad, channels_last)
        if target_mean is not None:
            init_output_bias(model, target_mean)
        self.val_mae = MeanAbsoluteError()

    def prepare_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        """uint8 clips on device -> normalised (and, in training, translated) float clips."""
        clips, target = batch
        clips = self.normalize(clips)
        if self.training and self.translate is not None:
            clips = self.translate(clips)
        return self._layout(clips), target

    def _predict(self, clips: Tensor, target: Tensor) -> Tensor:
        return self(clips).float().reshape(target.shape)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        clips, target = self.prepare_batch(batch)
        loss = self.loss_fn(self._predict(clips, target), target)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=len(target))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        clips, target = self.prepare_batch(batch)
        pred = self._predict(clips, target)
        self.val_mae.update(pred, target)
        self.log("val/loss", self.loss_fn(pred, target), on_epoch=True, prog_bar=True,
                 sync_dist=True, batch_size=len(target))
        self.log("val/mae", self.val_mae, on_epoch=True, prog_bar=True)


class SegmentationModule(TaskModule):
    """Frame -> binary LV logits (B, 1, H, W): BCE (EchoNet) or Dice; logs val/dice."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 loss: nn.Module | str | Mapping[str, Any] = "bce", optim: Any = None,
                 schedule: Any = None, pad: int | None = None,
                 channels_last: bool = False) -> None:
        super().__init__(model, loss, mean, std, optim, schedule, pad, channels_last)
        self.val_dice = MeanMetric()

    def prepare_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        """uint8 frames/masks on device -> normalised frames; in training, both translated."""
        frames, masks = batch
        frames = self.normalize(frames)
        if self.training and self.translate is not None:
            shift = self.translate.draw(len(frames))
            frames, masks = shift(frames), shift(masks, fill=0)
        return self._layout(frames), masks

    def _loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        if logits.shape[1] == 1:
            return self.loss_fn(logits.float(), masks.float())
        return self.loss_fn(logits.float(), masks[:, 0].long())

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        frames, masks = self.prepare_batch(batch)
        loss = self._loss(self(frames), masks)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=len(masks))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        frames, masks = self.prepare_batch(batch)
        logits = self(frames)
        self.log("val/loss", self._loss(logits, masks), on_epoch=True, prog_bar=True,
                 sync_dist=True, batch_size=len(masks))
        if logits.shape[1] == 1:
            self.val_dice.update(binary_dice(logits, masks))
            self.log("val/dice", self.val_dice, on_epoch=True, prog_bar=True)
