"""Task setups: the registry of trainable tasks and the pieces every setup shares.

A task setup turns (recipe, store, train ids, val ids) into a LightningModule, the train and
validation datasets and the input spec recorded in the checkpoint. Generic task types live in
`cinelab.train.tasks`; a pipeline registers its own with `register_task_setup`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.models.registry import create_model
from cinelab.plugins import Registry
from cinelab.train.checkpoint import InputSpec
from cinelab.train.modules import TaskModule
from cinelab.train.recipe import Recipe


@dataclass
class TaskSetup:
    """A task's module, datasets and input spec."""

    module: TaskModule
    train: Dataset
    val: Dataset
    input_spec: InputSpec
    extra: dict[str, Any] = field(default_factory=dict)


TaskSetupFn = Callable[[Recipe, PreparedStore, list[str], list[str]], TaskSetup]
TASK_SETUPS: Registry[TaskSetupFn] = Registry("task")


def register_task_setup(*names: str) -> Callable[[TaskSetupFn], TaskSetupFn]:
    """Register a task setup (recipe, store, train ids, val ids) -> TaskSetup under names."""
    return TASK_SETUPS.register(*names)


def normalisation(recipe: Recipe, store: PreparedStore) -> tuple[list[float], list[float]]:
    """Mean/std (0-255 units) that the model sees: the store's, or identity for "none"."""
    mode = recipe.data.normalize
    if mode == "dataset":
        return store.mean.tolist(), store.std.tolist()
    if mode == "none":
        channels = len(store.mean)
        return [0.0] * channels, [1.0] * channels
    raise InputError(None, "data.normalize", "'dataset' or 'none'", repr(mode))


def build_model(recipe: Recipe) -> torch.nn.Module:
    """The recipe's model from the registry (with its local pretrained weights)."""
    return create_model(recipe.model.name, pretrained=recipe.model.pretrained,
                        **dict(recipe.model.kwargs))


def input_spec(recipe: Recipe, store: PreparedStore, mean: list[float], std: list[float],
               **kw: Any) -> InputSpec:
    """The input spec of a model trained by `recipe` on `store`."""
    return InputSpec(task=recipe.task, size=store_size(recipe, store),
                     channels=len(mean), mean=mean, std=std, **kw)


def channels_last(recipe: Recipe) -> bool:
    """Whether the recipe asks for channels_last memory format."""
    return bool(getattr(recipe.trainer, "channels_last", False))


def store_size(recipe: Recipe, store: PreparedStore) -> int:
    """The store's frame side, checked against the recipe's data.size."""
    height, width = store.frames(store.ids[0]).shape[1:3]
    wanted = recipe.data.size
    wanted_hw = list(wanted) if isinstance(wanted, list) else [wanted, wanted]
    if [height, width] != wanted_hw:
        raise InputError(store.root, "data.size", f"frames of {wanted_hw[0]}x{wanted_hw[1]} px "
                         "(the recipe's data.size)", f"{height}x{width} px in the store",
                         f"override data.size={height} or prepare the store at that size")
    return int(height)
