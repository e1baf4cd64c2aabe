"""EchoNet-Dynamic's released weight files: their state dicts and the models they fit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cinelab.errors import InputError
from cinelab.models.registry import create_model
from cinelab.models.weights import (
    ECHONET_URL,
    load_weights_file,
    match_state,
    resolve_weights,
    strip_prefix,
)

#: EchoNet-Dynamic released files -> (cinelab model name, builder config).
ECHONET_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "deeplabv3_resnet50_random.pt": ("deeplabv3_resnet50", {"out_channels": 1}),
    "r2plus1d_18_32_2_pretrained.pt": ("r2plus1d_18", {"num_outputs": 1}),
}



def load_echonet_state(path: str | Path) -> dict[str, Tensor]:
    """The state_dict of an EchoNet-Dynamic release file, keys without "module.".

    The files are ``torch.save({"epoch", "state_dict", "opt_dict", "scheduler_dict",
    "best_loss", "loss", ...})`` from a DataParallel model on GPU; they load on CPU here.
    Keys match torchvision's deeplabv3_resnet50(num_classes=1) / r2plus1d_18 (fc 512->1),
    hence cinelab's models of the same names.
    """
    file = resolve_weights(path, _echonet_description(Path(path).name))
    checkpoint = load_weights_file(file, "cpu")
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        found = (f"keys {sorted(map(str, checkpoint))[:8]}" if isinstance(checkpoint, Mapping)
                 else type(checkpoint).__name__)
        raise InputError(file, "state_dict", "an EchoNet-Dynamic checkpoint dict with a "
                         "'state_dict' entry", found)
    return strip_prefix(state, ("module.",))


def _echonet_description(name: str) -> str:
    return f"an EchoNet-Dynamic checkpoint ({ECHONET_URL})"


def load_echonet_model(path: str | Path, model_name: str | None = None,
                       **cfg: Any) -> nn.Module:
    """A cinelab model holding an EchoNet-Dynamic release file's weights (all keys must fit).

    `model_name` defaults from the release file name (see `ECHONET_MODELS`).
    """
    name = Path(path).name
    if model_name is None:
        if name not in ECHONET_MODELS:
            raise InputError(path, "model_name", f"one of the release names "
                             f"{sorted(ECHONET_MODELS)} or an explicit model_name", name)
        model_name, defaults = ECHONET_MODELS[name]
        cfg = {**defaults, **cfg}
    model = create_model(model_name, **cfg)
    state = load_echonet_state(path)
    _, report = match_state(model, state, str(path), adapt_input=False)
    if not report.complete:
        raise InputError(path, "state_dict", f"an EchoNet-Dynamic {model_name} state_dict",
                         report.summary())
    model.load_state_dict(state, strict=True)
    return model
