"""One CXR ensemble member on uint8 images: its checkpoint (binary members only), the batch
it reads, its positive-class probability (mean over TTA views) and, in the same forward
pass, the features its OOD detector scores (an engine's ``features`` output, or hooks on
the eager model)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinelab.data.transforms import Normalize
from cinelab.errors import InputError
from cinelab.infer.engine_outputs import Engine, FeatureSpec, OutputModule
from cinelab.infer.tta import augment_from_recipe, tta_predict
from cinelab.train.checkpoint import LoadedCheckpoint, load_checkpoint

DEFAULT_BATCH = 16


def load_member(path: str | Path) -> LoadedCheckpoint:
    """A member checkpoint, model in eval mode on the CPU; a multi-label model (e.g. the
    14-finding NIH pretraining) is refused rather than read as its first finding."""
    loaded = load_checkpoint(path)
    kwargs = (loaded.recipe.get("model") or {}).get("kwargs") or {}
    outputs = int(kwargs.get("num_outputs", 1))
    if outputs not in (1, 2):
        raise InputError(path, "model.kwargs.num_outputs", "a binary member (1 or 2 outputs)",
                         f"{outputs} outputs", "fine-tune it on the binary task first "
                         "(model.pretrained=<this checkpoint>)")
    return loaded


def to_batch(images: np.ndarray, channels: int) -> torch.Tensor:
    """uint8 (B, H, W[, C]) -> float32 (B, channels, H, W) in 0-255 units."""
    arr = np.asarray(images)
    arr = arr[..., None] if arr.ndim == 3 else arr
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).to(torch.float32)
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    return x.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1).contiguous()


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B,) probability of the positive class: sigmoid of one logit, softmax of two."""
    logits = logits.reshape(logits.shape[0], -1).float()
    if logits.shape[1] == 2:
        return torch.softmax(logits, dim=1)[:, 1]
    return torch.sigmoid(logits[:, 0])


def predict_arrays(loaded: LoadedCheckpoint, images: np.ndarray, tta: int = 1, seed: int = 0,
                   batch_size: int = DEFAULT_BATCH, device: str = "cpu") -> np.ndarray:
    """Probabilities (B,) of one member for uint8 images at its size: the mean over `tta`
    views drawn like the member's training augmentation (`augment_from_recipe`)."""
    return predict_member(loaded, images, tta, seed, batch_size, device)[0]


def feature_runner(model: Any, features: FeatureSpec | None
                   ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]:
    """``x -> (output, features or None)`` of a member: an engine's own ``features`` output
    (InputError when exported with other features), or the eager model's taken by hooks
    (`OutputModule`, the same numbers)."""
    if features is None:
        return lambda x: (model(x), None)
    if isinstance(model, Engine):
        if not model.has_features(features):
            raise InputError(model.info.get("file"), "features", f"features at {features}",
                             str(model.features or "no features output"),
                             "export the member again with its OOD detector's features")
        return model.predict
    wrapped = OutputModule(model, features).eval()
    return lambda x: wrapped(x)[:2]  # type: ignore[return-value]


def predict_member(loaded: LoadedCheckpoint, images: np.ndarray, tta: int = 1, seed: int = 0,
                   batch_size: int = DEFAULT_BATCH, device: str = "cpu",
                   features: FeatureSpec | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities as `predict_arrays`, and with `features` the (B, D) features taken
    there in the same forward pass: of the un-augmented view, the first of `tta_views`)."""
    spec, model = loaded.input_spec, loaded.model.to(device).eval()
    norm = Normalize(spec.mean, spec.std)
    augment = augment_from_recipe(loaded.recipe)
    run = feature_runner(model, features)
    found: list[torch.Tensor] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        out, feats = run(norm(x))
        if feats is not None and len(found) < len(probs) + 1:  # the identity view only
            found.append(feats.detach().float().cpu())
        return positive_probability(out)

    probs: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        x = to_batch(images[start:start + batch_size], spec.channels).to(device)
        probs.append(tta_predict(predict, x, n=tta, seed=seed, augment=augment).cpu().numpy())
    out = np.concatenate(probs) if probs else np.empty(0, np.float32)
    if features is None:
        return out, None
    return out, torch.cat(found).numpy().astype(float) if found else np.empty((0, 0))
