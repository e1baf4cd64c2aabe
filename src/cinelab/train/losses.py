"""Losses by name: a small registry that recipes use (``loss: {name: ..., kwargs: {...}}``).

Every loss takes ``(prediction, target)``. Segmentation losses take logits (no activation in
the model): binary masks are (B, 1, H, W) float targets; `cross_entropy` takes (B, K, ...)
logits and (B, ...) long class targets. Pipelines add theirs with `register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import nn

LossFactory = Callable[..., nn.Module]


def _dice(**kwargs: Any) -> nn.Module:
    """MONAI DiceLoss on sigmoid probabilities (binary logits) unless kwargs say otherwise."""
    return DiceLoss(**{"sigmoid": True, **kwargs})


def _bce_dice(**kwargs: Any) -> nn.Module:
    """BCE-with-logits + Dice (MONAI DiceCELoss: BCE for one output channel)."""
    return DiceCELoss(**{"sigmoid": True, **kwargs})


def _focal(**kwargs: Any) -> nn.Module:
    """MONAI FocalLoss on sigmoid probabilities (binary logits)."""
    return FocalLoss(**kwargs)


LOSSES: dict[str, LossFactory] = {
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "bce": nn.BCEWithLogitsLoss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
    "dice": _dice,
    "bce+dice": _bce_dice,
    "cross_entropy": nn.CrossEntropyLoss,
    "focal": _focal,
}


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Decorator: register ``factory(**kwargs) -> nn.Module`` as loss `name`."""

    def decorate(factory: LossFactory) -> LossFactory:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = factory
        return factory

    return decorate


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """The loss registered as `name`, built with `kwargs` (e.g. reduction="sum")."""
    if name not in LOSSES:
        raise ValueError(f"loss: expected one of {sorted(LOSSES)}, found {name!r}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: bad keyword arguments {sorted(kwargs)} ({exc})") \
            from exc
