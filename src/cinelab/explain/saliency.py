"""Saliency maps for any 2D model: Grad-CAM, and the weighted Grad-CAM of an ensemble.

Grad-CAM (Selvaraju et al., 2017): the activations A (B, K, h, w) of a convolutional layer
are weighted by the spatial mean of the gradient of the class score with respect to them,
summed over channels and passed through a ReLU: ``relu(sum_k mean(dS/dA_k) * A_k)``. The
map is then upsampled (bilinear) to the input size.

The layer defaults to the *last layer that outputs a spatial feature map* (a 4-D tensor
with h, w > 1) in forward order, found by a probing forward pass: the final feature map of
timm's classifiers (e.g. DenseNet's ``features.norm5``), not a narrow 1x1 convolution deep
inside a block. The implementation is a small pair of hooks (forward hook keeps the
activation, a tensor hook its gradient), so layers that run several times in one forward
pass use their last call, which captum's LayerGradCam does not allow.

Score: for one output (a binary classifier's logit) the logit itself (``target=None`` or
0); ``target=-1`` explains the negative class (minus the logit); for K outputs the logit of
class `target` (argmax when None).

Ensembles: each member's map is computed on that member's own input, brought back onto the
original image (e.g. `cinelab.pipelines.cxr.crop.restore_map`), scaled to [0, 1] by its own maximum
(members' raw Grad-CAM scales are not comparable) and combined with the ensemble weights
(`ensemble_cam`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cinelab.errors import InputError
from cinelab.explain.overlay import overlay_heatmap
from cinelab.io.image import write_image

NEGATIVE_CLASS = -1


def spatial_layers(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the leaf modules whose output is a (B, C, h, w) map with h, w > 1, in the
    order of a forward pass on `x` (each name once, at its last call)."""
    order: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(_recorder(name, order)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    last = {name: i for i, name in enumerate(order)}
    return sorted(last, key=last.__getitem__)


def _recorder(name: str, order: list[str]) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
            order.append(name)
    return hook


def find_cam_layer(model: nn.Module, x: Tensor) -> str:
    """The default Grad-CAM layer: the last spatial feature map of a forward pass."""
    layers = spatial_layers(model, x[:1])
    if not layers:
        raise InputError(None, "layer", "a model with a convolutional feature map (h, w > 1)",
                         f"none in {type(model).__name__} for input {tuple(x.shape)}",
                         "pass layer=<module name> or use a larger input")
    return layers[-1]


def _module(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        raise InputError(None, "layer", "a module name of the model",
                         repr(layer), f"e.g. {find_cam_layer.__name__}() picks one")
    return modules[layer]


def class_score(logits: Tensor, target: int | None) -> Tensor:
    """(B,) scores to explain from the model's (B,) or (B, K) output (module docstring)."""
    logits = logits.reshape(logits.shape[0], -1)
    if logits.shape[1] == 1:
        sign = -1.0 if target == NEGATIVE_CLASS else 1.0
        if target not in (None, 0, NEGATIVE_CLASS):
            raise InputError(None, "target", "None, 0 or -1 for a one-output model", repr(target))
        return sign * logits[:, 0]
    index = logits.argmax(dim=1) if target is None else torch.full(
        (logits.shape[0],), int(target), dtype=torch.long, device=logits.device)
    return logits.gather(1, index[:, None])[:, 0]


def grad_cam(model: nn.Module, x: Tensor, layer: str | nn.Module | None = None,
             target: int | None = None, upsample: bool = True) -> np.ndarray:
    """Grad-CAM maps (B, H, W) float32 >= 0 for a batch `x` (B, C, H, W) (at the layer's
    resolution (B, h, w) when `upsample` is False). The model is left unchanged."""
    if x.ndim != 4:
        raise InputError(None, "x", "a batch (B, C, H, W)", f"shape {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    module = _module(model, find_cam_layer(model, x) if layer is None else layer)
    store: dict[str, Tensor] = {}

    def keep(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
        store["act"] = output
        if output.requires_grad:
            output.register_hook(lambda grad: store.__setitem__("grad", grad))

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inp = x.detach().to(torch.float32).requires_grad_(True)
            class_score(model(inp), target).sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return _cam(store, x.shape[-2:] if upsample else None)


def _cam(store: dict[str, Tensor], size: Sequence[int] | None) -> np.ndarray:
    if "act" not in store or "grad" not in store:
        raise InputError(None, "layer", "a layer on the path from input to score",
                         "no activation or gradient reached it")
    act, grad = store["act"].detach(), store["grad"].detach()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
    if size is not None:
        cam = F.interpolate(cam, size=tuple(int(s) for s in size), mode="bilinear",
                            align_corners=False)
    return cam[:, 0].cpu().numpy().astype(np.float32)


def normalise_map(cam: np.ndarray) -> np.ndarray:
    """A map scaled to [0, 1] by its maximum (all zeros stay zeros)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0)
    top = float(cam.max()) if cam.size else 0.0
    return cam / top if top > 0 else np.zeros_like(cam)


def ensemble_cam(maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of members' maps (same shape, on the original image), each scaled to
    [0, 1] first; weights are renormalised to sum to 1."""
    w = np.asarray(weights, dtype=np.float64)
    if len(maps) != len(w) or not len(maps):
        raise InputError(None, "maps/weights", "one weight per member map",
                         f"{len(maps)} maps, {len(w)} weights")
    shapes = {np.shape(m) for m in maps}
    if len(shapes) != 1:
        raise InputError(None, "maps", "maps of one shape (the original image)", str(shapes))
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
    return np.sum([wi * normalise_map(m) for wi, m in zip(w, maps, strict=True)],
                  axis=0).astype(np.float32)


def write_cam_png(path: str | Path, image: np.ndarray, cam: np.ndarray,
                  alpha: float = 0.4) -> Path:
    """The heatmap over a greyscale/RGB uint8 image (H, W[, C]) as a PNG; returns the path."""
    rgb = overlay_heatmap(np.asarray(image)[None], np.asarray(cam, np.float32)[None],
                          alpha=alpha)[0]
    return write_image(path, rgb)
