"""Self-describing cinelab checkpoints: weights + recipe + input spec + versions.

`predict` needs nothing but the checkpoint and the input: the model is rebuilt from the
registry by the recipe's model name and kwargs, and the input spec says how to feed it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cinelab.errors import CinelabError, InputError
from cinelab.models.registry import create_model
from cinelab.models.weights import load_weights_file
from cinelab.utils import atomic_path, versions

CHECKPOINT_FORMAT = "cinelab-checkpoint/1"


@dataclass
class InputSpec:
    """What the model expects: task, clip length, sampling period, size, channels, mean/std."""

    task: str
    size: int
    channels: int = 3
    frames: int | None = None
    period: int | None = None
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for storage."""
        return asdict(self)


@dataclass
class LoadedCheckpoint:
    """A model ready for inference with everything recorded beside its weights."""

    model: nn.Module
    recipe: dict[str, Any]
    input_spec: InputSpec
    info: dict[str, Any]


def save_checkpoint(path: str | Path, model: nn.Module, recipe: dict[str, Any],
                    input_spec: InputSpec, extra: dict[str, Any] | None = None) -> Path:
    """Write a cinelab checkpoint atomically (weights on CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": state, "recipe": recipe,
               "input_spec": input_spec.to_dict(), "versions": versions(),
               "extra": extra or {}}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (loaded weights-only), checked for the cinelab format."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint", "a cinelab checkpoint file", "nothing at that path")
    payload = load_weights_file(path, "cpu", "a cinelab checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(path, "format", CHECKPOINT_FORMAT, repr(found),
                         "import foreign weights with `cinelab import` first")
    return payload


def update_checkpoint_extra(path: str | Path, extra: dict[str, Any]) -> Path:
    """Merge `extra` (tensors, numbers, strings, lists, dicts) into a checkpoint's ``extra``
    and rewrite it atomically (e.g. uncertainty state fitted after training)."""
    payload = read_checkpoint(path)
    payload["extra"] = {**(payload.get("extra") or {}), **extra}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint_task(path: str | Path) -> str | None:
    """The task a cinelab checkpoint file was trained for; None for any other file."""
    try:
        return str(read_checkpoint(path)["input_spec"]["task"])
    except (CinelabError, KeyError, TypeError):
        return None


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model from the registry and load its weights (CPU, eval mode)."""
    payload = read_checkpoint(path)
    model_cfg = dict(payload["recipe"]["model"])
    model = create_model(model_cfg["name"], **dict(model_cfg.get("kwargs") or {}))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return LoadedCheckpoint(model, payload["recipe"], InputSpec(**payload["input_spec"]),
                            {k: v for k, v in payload.items()
                             if k not in ("state_dict", "recipe", "input_spec")})
