"""2D U-Nets with ImageNet classification encoders (cine MRI segmentation, cmr-seg-tl).

`unet_resnet34`, `unet_resnet50` and `unet_vgg16` keep torchvision's encoder (ResNet-34,
ResNet-50, VGG16-BN) under ``encoder.`` with torchvision's own parameter names, so the
ImageNet files (``resnet34-b627a593.pth``, ``resnet50-0676ba61.pth``,
``vgg16_bn-6c64b313.pth``) load into it unchanged; the decoder is a chain of MONAI `UpCat`
blocks (upsample, concatenate the skip, two convs) as in MONAI's FlexibleUNet and
segmentation-models-pytorch, then a 3x3 segmentation head. (MONAI's own FlexibleUNet
"resnet34" uses parameter-free "A" shortcuts, which ImageNet ResNet-34 weights do not fit.)

``pretrained=`` (the registry keyword) takes either a torchvision ImageNet file (loaded into
the encoder; the stem is adapted to 1-channel input) or a whole-model file (a cinelab
checkpoint or a Lightning checkpoint: double transfer); every tensor that fits is loaded and
the rest reported. Inputs of any size work: they are zero-padded (bottom, right) to multiples
of 32 (ResNet) or 16 (VGG) and the logits cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from monai.networks.nets.basic_unet import UpCat
from monai.networks.nets.flexible_unet import SegmentationHead
from torch import Tensor, nn
from torchvision.models import resnet34, resnet50, vgg16_bn

from cinelab.models.registry import check_channels, register_model, replace_input_conv
from cinelab.models.weights import (
    DEFAULT_PREFIXES,
    LoadReport,
    _best_keys,
    extract_state_dict,
    load_weights,
    load_weights_file,
)

RESNET_DECODER = (256, 128, 64, 32, 16)
VGG_DECODER = (256, 128, 64, 32)
DECODER_ACT = ("relu", {"inplace": True})
DECODER_NORM = ("batch", {"eps": 1e-3, "momentum": 0.1})
RESNET_STEM = "encoder.conv1"
VGG_STEM = "encoder.features.0"
VGG_POOL = nn.MaxPool2d
RESNET_STRIDE, VGG_STRIDE = 32, 16  # input sides are padded to multiples of these
TV_URL = "https://download.pytorch.org/models/"


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without pooling head: features at strides 2, 4, 8, 16, 32."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.channels = [self.bn1.num_features] + [
            _out_channels(getattr(self, f"layer{i}")) for i in range(1, 5)]
        self.full_resolution = False  # the shallowest feature is at half resolution
        self.stride = RESNET_STRIDE

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features


def _out_channels(layer: nn.Module) -> int:
    """Output channels of a ResNet stage (its last BatchNorm)."""
    return [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


class VggFeatures(nn.Module):
    """torchvision VGG `features` (same indices): the output of each block before its max
    pool, at strides 1, 2, 4, 8, 16 (the final pool is not used)."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        pools = [i for i, m in enumerate(features) if isinstance(m, VGG_POOL)]
        self.features = features[: pools[-1]]  # keep indices: keys stay "features.N.*"
        self.pools = pools[:-1]
        convs = [j for j, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        ends = [max(j for j in convs if j < p) for p in [*self.pools, len(self.features)]]
        self.channels = [self.features[j].out_channels for j in ends]
        self.full_resolution = True
        self.stride = VGG_STRIDE

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, layer in enumerate(self.features):
            if i in self.pools:
                features.append(x)
            x = layer(x)
        return [*features, x]


class SkipDecoder(nn.Module):
    """MONAI UpCat blocks from the deepest feature up, one per skip (deep to shallow), plus a
    final block without a skip when the shallowest feature is at half resolution."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int],
                 final_upsample: bool, dropout: float = 0.0) -> None:
        super().__init__()
        skips = list(encoder_channels[:-1])[::-1] + ([0] if final_upsample else [])
        if len(decoder_channels) != len(skips):
            raise ValueError(f"decoder_channels: expected {len(skips)} values (one per decoder "
                             f"block), found {list(decoder_channels)}")
        inputs = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            UpCat(2, i, s, o, act=DECODER_ACT, norm=DECODER_NORM, bias=False, dropout=dropout,
                  upsample="nontrainable", pre_conv="default", interp_mode="nearest",
                  align_corners=None, halves=s > 0, is_pad=True)
            for i, s, o in zip(inputs, skips, decoder_channels, strict=True))

    def forward(self, features: list[Tensor]) -> Tensor:
        x, skips = features[-1], features[:-1][::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


class EncoderUNet(nn.Module):
    """encoder (a list of features) -> SkipDecoder -> 3x3 head: logits (B, K, H, W)."""

    def __init__(self, encoder: ResNetFeatures | VggFeatures, out_channels: int,
                 decoder_channels: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = SkipDecoder(encoder.channels, decoder_channels,
                                   not encoder.full_resolution, dropout)
        self.segmentation_head = SegmentationHead(2, decoder_channels[-1], out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        step = self.encoder.stride
        padded = F.pad(x, (0, -width % step, 0, -height % step))
        out = self.segmentation_head(self.decoder(self.encoder(padded)))
        return out[..., :height, :width]

    def load_pretrained(self, path: str | Path, description: str) -> LoadReport:
        """Load a whole-model file (cinelab/Lightning checkpoint) into the whole model, or an
        ImageNet classifier file into the encoder: whichever names more tensors."""
        state = extract_state_dict(load_weights_file(path, "cpu", description), path)
        whole = len(set(_best_keys(state, set(self.state_dict()), DEFAULT_PREFIXES))
                    & set(self.state_dict()))
        encoder_keys = set(self.encoder.state_dict())
        inner = len(set(_best_keys(state, encoder_keys, DEFAULT_PREFIXES)) & encoder_keys)
        target = self if whole >= inner else self.encoder
        return load_weights(target, path, description=description)


def _check_out(out_channels: int) -> int:
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels: expected a positive int (classes incl. background), "
                         f"found {out_channels!r}")
    return out_channels


def _resnet_unet(net: nn.Module, in_channels: int, out_channels: int,
                 decoder_channels: Sequence[int], dropout: float) -> nn.Module:
    check_channels(in_channels)
    model = EncoderUNet(ResNetFeatures(net), _check_out(out_channels), decoder_channels,
                        dropout)
    return replace_input_conv(model, RESNET_STEM, in_channels)


@register_model("unet_resnet34", task="segmentation",
                weights_hint=f"torchvision's ImageNet resnet34-b627a593.pth ({TV_URL}) or a "
                             "cinelab unet_resnet34 checkpoint")
def unet_resnet34(in_channels: int = 1, out_channels: int = 4,
                  decoder_channels: Sequence[int] = RESNET_DECODER,
                  dropout: float = 0.0) -> nn.Module:
    """U-Net with a torchvision ResNet-34 encoder (the cmr-seg-tl paper's best network)."""
    return _resnet_unet(resnet34(weights=None), in_channels, out_channels, decoder_channels,
                        dropout)


@register_model("unet_resnet50", task="segmentation",
                weights_hint=f"torchvision's ImageNet resnet50-0676ba61.pth ({TV_URL}) or a "
                             "cinelab unet_resnet50 checkpoint")
def unet_resnet50(in_channels: int = 1, out_channels: int = 4,
                  decoder_channels: Sequence[int] = RESNET_DECODER,
                  dropout: float = 0.0) -> nn.Module:
    """U-Net with a torchvision ResNet-50 encoder."""
    return _resnet_unet(resnet50(weights=None), in_channels, out_channels, decoder_channels,
                        dropout)


@register_model("unet_vgg16", task="segmentation",
                weights_hint=f"torchvision's ImageNet vgg16_bn-6c64b313.pth ({TV_URL}) or a "
                             "cinelab unet_vgg16 checkpoint")
def unet_vgg16(in_channels: int = 1, out_channels: int = 4,
               decoder_channels: Sequence[int] = VGG_DECODER, dropout: float = 0.0) -> nn.Module:
    """U-Net with a torchvision VGG16-BN encoder (skips at strides 1 to 8, bottom at 16)."""
    check_channels(in_channels)
    model = EncoderUNet(VggFeatures(vgg16_bn(weights=None).features),
                        _check_out(out_channels), decoder_channels, dropout)
    return replace_input_conv(model, VGG_STEM, in_channels)
