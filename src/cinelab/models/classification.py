"""2D image classifiers (timm): input (B, C, H, W) -> logits (B, num_outputs).

The six DeepCOVID-XR architectures under their paper names, built with timm 1.x names:

=====================  ========================  ==========================================
cinelab name           timm name                 note
=====================  ========================  ==========================================
densenet121            densenet121
efficientnet_b2        efficientnet_b2
inception_v3           inception_v3              inputs >= 75 px
inception_resnet_v2    inception_resnet_v2       inputs >= 75 px
resnet50               resnet50
xception               legacy_xception           Chollet's Xception as in Keras (timm's
                                                 port of the Keras weights); timm's
                                                 ``xception41/65/71`` are the deeper
                                                 DeepLab "aligned" variants
resnet10t              resnet10t                 small, for CPU recipes
regnetx_002            regnetx_002               small, for CPU recipes (fast on CPU)
mobilenetv3_small      mobilenetv3_small_100     small (depthwise convs: slow on CPU)
=====================  ========================  ==========================================

Every builder takes ``num_outputs``, ``in_channels`` (1 or 3: timm's ``in_chans``) and
``drop_rate`` (dropout on the pooled features, right before the final Linear, which
`set_head` records). Parameter names are timm's, so timm's ImageNet files load directly:
``pretrained=`` a local ``model.safetensors`` / ``pytorch_model.bin`` (from the Hugging Face
repo ``timm/<timm name>.<tag>``) or a cinelab checkpoint (e.g. an NIH-pretrained model).
Tensors whose shapes do not fit (the 1000-class or 14-label head) are skipped and stay
freshly initialised; a 3-channel stem is summed to 1 channel (timm's rule). Nothing is ever
downloaded.
"""

from __future__ import annotations

import types
from pathlib import Path

import timm
from torch import Tensor, nn

from cinelab.errors import InputError
from cinelab.models.registry import check_channels, output_layer, register_model, set_head
from cinelab.models.weights import (
    LoadReport,
    extract_state_dict,
    load_weights,
    load_weights_file,
    match_state,
    resolve_weights,
    strip_prefix,
)

#: cinelab name -> (timm name, smallest input side in px; 0: no limit below 32 px).
TIMM_MODELS: dict[str, tuple[str, int]] = {
    "densenet121": ("densenet121", 0),
    "efficientnet_b2": ("efficientnet_b2", 0),
    "inception_v3": ("inception_v3", 75),
    "inception_resnet_v2": ("inception_resnet_v2", 75),
    "resnet50": ("resnet50", 0),
    "xception": ("legacy_xception", 0),
    "resnet10t": ("resnet10t", 0),
    "regnetx_002": ("regnetx_002", 0),
    "mobilenetv3_small": ("mobilenetv3_small_100", 0),
}
SAFETENSORS_SUFFIX = ".safetensors"
DEFAULT_OUTPUTS = 1
DEFAULT_CHANNELS = 3


def timm_name(name: str) -> str:
    """The timm architecture behind cinelab classifier `name`."""
    return TIMM_MODELS[name][0]


def _weights_hint(name: str) -> str:
    return (f"timm's ImageNet weights for {timm_name(name)} (model.safetensors or "
            f"pytorch_model.bin of the Hugging Face repo timm/{timm_name(name)}.*), or a "
            f"cinelab {name} checkpoint (e.g. one pretrained on NIH ChestX-ray14)")


def build_timm_classifier(arch: str, num_outputs: int = DEFAULT_OUTPUTS,
                          in_channels: int = DEFAULT_CHANNELS,
                          drop_rate: float = 0.0) -> nn.Module:
    """A randomly initialised timm classifier with its head recorded and a local-weights
    loader (`load_pretrained`) that reads safetensors too."""
    check_channels(in_channels)
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs: expected a positive int, found {num_outputs!r}")
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ValueError(f"drop_rate: expected a probability in [0, 1), found {drop_rate!r}")
    model = timm.create_model(arch, pretrained=False, num_classes=num_outputs,
                              in_chans=in_channels, drop_rate=float(drop_rate))
    set_head(model, head_path(model))
    model.load_pretrained = types.MethodType(load_classifier_weights, model)
    return model


def head_path(model: nn.Module) -> str:
    """Attribute path of a timm model's classifier Linear."""
    head = model.get_classifier()
    for path, module in model.named_modules():
        if module is head and path:
            return path
    raise TypeError(f"{type(model).__name__}: its classifier is not a named submodule")


def read_state(path: str | Path, description: str | None = None) -> dict[str, Tensor]:
    """Tensors of a local weights file: safetensors, a state_dict or a checkpoint dict."""
    file = resolve_weights(path, description)
    if file.suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except SafetensorError as exc:
            raise InputError(file, "weights", "a safetensors file", str(exc)) from exc

    return extract_state_dict(load_weights_file(file, "cpu", description), file)


def load_classifier_weights(model: nn.Module, path: str | Path,
                            description: str | None = None) -> LoadReport:
    """Load every tensor of `path` that fits `model` (head mismatches are skipped)."""
    if Path(str(path)).suffix != SAFETENSORS_SUFFIX:
        return load_weights(model, path, description=description)
    state = read_state(path, description)
    names = set(model.state_dict())
    state = {k if k in names else strip_prefix({k: 0}).popitem()[0]: v for k, v in state.items()}
    usable, report = match_state(model, state, str(path))
    if not usable:
        raise InputError(path, "state_dict", f"tensors named like {type(model).__name__}'s",
                         f"no matching keys (file keys start {sorted(state)[:3]})",
                         "check that the file belongs to this architecture")
    model.load_state_dict(usable, strict=False)
    return report


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter outside the recorded head (what a frozen phase keeps fixed)."""
    head = {id(p) for p in output_layer(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) everything but the head; frozen BatchNorm layers stay in eval
    mode (their running statistics do not move, as in Keras' trainable=False)."""
    for p in backbone_parameters(model):
        p.requires_grad_(trainable)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(model.training and trainable)


def _register(name: str) -> None:
    arch, min_size = TIMM_MODELS[name]

    def build(num_outputs: int = DEFAULT_OUTPUTS, in_channels: int = DEFAULT_CHANNELS,
              drop_rate: float = 0.0) -> nn.Module:
        return build_timm_classifier(arch, num_outputs, in_channels, drop_rate)

    build.__name__ = name
    build.__doc__ = f"timm {arch}: (B, C, H, W) -> logits (B, num_outputs); dropout before " \
                    "the head."
    register_model(name, task="classification", weights_hint=_weights_hint(name),
                   min_size=min_size)(build)


for _name in TIMM_MODELS:
    _register(_name)


def classifier_input(model: nn.Module) -> int | None:
    """Input channels of a 2D CNN's first convolution (None without one)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else int(first.in_channels)


__all__ = ["TIMM_MODELS", "backbone_parameters", "build_timm_classifier", "classifier_input",
           "head_path", "load_classifier_weights", "read_state", "set_backbone_trainable",
           "timm_name"]
