"""Model registry and factory (timm's `_registry.py` + `_factory.py`, in one small file).

Builders register under a name and a task; recipes name a model and `create_model` builds it.
Nothing else in cinelab switches on model-name strings.

Conventions every builder follows:

- it is a plain function ``fn(**cfg) -> nn.Module`` with keyword defaults;
- ``pretrained`` (a local file path or a bare file name in `default_weights_dir()`) is handled
  here, by the registration wrapper, for every model: builders never see it;
- models whose output is a final ``nn.Linear`` record its attribute path with `set_head`, so
  `output_layer(model)` finds it (training sets its bias, e.g. from the training-set EF mean).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from cinelab.errors import CinelabError
from cinelab.models.weights import load_weights
from cinelab.plugins import load_pipelines

log = logging.getLogger(__name__)

Builder = Callable[..., nn.Module]

#: Known tasks and the tensor contract each model of that task honours.
TASKS: dict[str, str] = {
    "segmentation": "input (B, C, H, W) -> logits (B, K, H, W)",
    "video": "input (B, C, T, H, W) -> outputs (B, num_outputs)",
    "classification": "input (B, C, H, W) -> logits (B, num_outputs)",
}

#: Attribute (a string, not a module) that names a model's final Linear layer.
HEAD_ATTR = "cinelab_head"

#: Attributes under which wrappers hold the real model (DataParallel/DDP, torch.compile).
WRAPPER_ATTRS = ("module", "_orig_mod")


class UnknownModelError(CinelabError, KeyError):
    """A model name is not registered (the message lists the registered names)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model."""

    name: str
    task: str
    builder: Builder
    weights_hint: str
    doc: str
    min_size: int = 0  # smallest input side (px) the network accepts; 0: no limit known


_REGISTRY: dict[str, ModelEntry] = {}


def register_task(task: str, contract: str) -> None:
    """Declare a new task (e.g. "fusion") and its tensor contract, before registering models."""
    if task in TASKS and TASKS[task] != contract:
        raise ValueError(f"task {task!r} is already declared with contract {TASKS[task]!r}")
    TASKS[task] = contract


def register_model(name: str, task: str, weights_hint: str = "",
                   min_size: int = 0) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn(**cfg) -> nn.Module`` as model `name` of `task`.

    `weights_hint` describes the usual pretrained file (used in missing-weights errors);
    `min_size` the smallest input side in pixels the network accepts (0: no known limit).
    The returned function accepts an extra ``pretrained`` keyword (local weights file).
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not declared; known tasks: {sorted(TASKS)} "
                         "(declare it first with register_task)")

    def decorate(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered "
                             f"(by {_REGISTRY[name].builder.__module__})")
        wrapped = _with_pretrained(fn, name, weights_hint)
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, task, wrapped, weights_hint, doc[0] if doc else "",
                                     min_size)
        return wrapped

    return decorate


def _with_pretrained(fn: Builder, name: str, weights_hint: str) -> Builder:
    """Wrap a builder so that ``pretrained=<file>`` loads local weights after building.

    A model with a ``load_pretrained(path, description)`` method (e.g. one built around
    another registered network) decides itself where the file's weights go.
    """

    @functools.wraps(fn)
    def build(*, pretrained: str | Path | None = None, **cfg: object) -> nn.Module:
        model = fn(**cfg)
        if pretrained:
            hint = weights_hint or f"weights for cinelab model {name!r}"
            loader = getattr(model, "load_pretrained", None)
            report = loader(pretrained, hint) if callable(loader) else \
                load_weights(model, pretrained, description=hint)
            log.info("model %s: %s", name, report.summary())
        return model

    return build


def create_model(name: str, **cfg: object) -> nn.Module:
    """Build registered model `name` with keyword config (``pretrained=`` a local file)."""
    return get_entry(name).builder(**cfg)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name`, or an error listing the registered names."""
    _ensure_builtin_models()
    if name not in _REGISTRY:
        raise UnknownModelError(_unknown_message(name))
    return _REGISTRY[name]


def _unknown_message(name: str) -> str:
    by_task = {task: list_models(task) for task in TASKS}
    listing = "; ".join(f"{task}: {', '.join(names) or '(none)'}"
                        for task, names in by_task.items())
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"model: expected a registered model name, found {name!r}{hint}. "
            f"Known models by task: {listing}")


def list_models(task: str | None = None) -> list[str]:
    """Registered model names (sorted), optionally only those of `task`."""
    _ensure_builtin_models()
    if task is not None and task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, found {task!r}")
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)


def model_task(name: str) -> str:
    """The task a registered model belongs to."""
    return get_entry(name).task


def _ensure_builtin_models() -> None:
    """Import the built-in builder modules and the pipelines so that they register."""
    importlib.import_module("cinelab.models")
    load_pipelines()


# -- builder conventions ---------------------------------------------------------------------


def set_head(model: nn.Module, path: str) -> nn.Module:
    """Record that `model.get_submodule(path)` is the final Linear layer; returns `model`."""
    if not isinstance(model.get_submodule(path), nn.Linear):
        raise TypeError(f"{type(model).__name__}.{path} is not an nn.Linear")
    object.__setattr__(model, HEAD_ATTR, path)
    return model


def output_layer(model: nn.Module) -> nn.Linear:
    """The final Linear layer of a registered video/classification model."""
    for wrapper_attr in WRAPPER_ATTRS:
        inner = getattr(model, wrapper_attr, None)
        if not hasattr(model, HEAD_ATTR) and isinstance(inner, nn.Module):
            model = inner
    path = getattr(model, HEAD_ATTR, None)
    if path is None:
        raise TypeError(f"{type(model).__name__} records no output layer "
                        f"(builders call cinelab.models.registry.set_head(model, 'fc'))")
    layer = model.get_submodule(path)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{type(model).__name__}.{path} is {type(layer).__name__}, not Linear")
    return layer


def replace_input_conv(model: nn.Module, path: str, in_channels: int) -> nn.Module:
    """Replace the conv at `path` by an identical one taking `in_channels` inputs."""
    conv = model.get_submodule(path)
    if not isinstance(conv, nn.Conv2d | nn.Conv3d):
        raise TypeError(f"{type(model).__name__}.{path} is {type(conv).__name__}, not a conv")
    if conv.in_channels == in_channels:
        return model
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                     padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)
    return model


def check_channels(in_channels: int, allowed: tuple[int, ...] = (1, 2, 3)) -> int:
    """Validate an `in_channels` argument (typed error naming the parameter)."""
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels: expected a positive int (usually one of {allowed}), "
                         f"found {in_channels!r}")
    return in_channels
