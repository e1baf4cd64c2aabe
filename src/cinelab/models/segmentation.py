"""2D segmentation models: input (B, C, H, W) -> logits (B, K, H, W).

`deeplabv3_resnet50` keeps torchvision's parameter names (``backbone.*``, ``classifier.*``), so
EchoNet-Dynamic's published ``deeplabv3_resnet50_random.pt`` loads into it directly.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet
from torch import Tensor, nn
from torchvision.models.segmentation import deeplabv3_resnet50 as tv_deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabV3

from cinelab.models.registry import check_channels, register_model, replace_input_conv

#: Path of the first convolution of the torchvision ResNet-50 backbone.
DEEPLAB_STEM = "backbone.conv1"

#: Channels and strides of `unet_small` (four levels, three 2x downsamplings).
UNET_SMALL_CHANNELS = (16, 32, 64, 128)
UNET_SMALL_STRIDES = (2, 2, 2)
UNET_SMALL_RES_UNITS = 1


class DeepLabV3Logits(DeepLabV3):
    """torchvision DeepLabV3 whose forward returns the ``"out"`` logits, not a dict."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x)["out"]


@register_model(
    "deeplabv3_resnet50", task="segmentation",
    weights_hint=("an EchoNet-Dynamic segmentation checkpoint (deeplabv3_resnet50_random.pt, "
                  "from https://github.com/echonet/dynamic/releases), a cinelab checkpoint, "
                  "or torchvision's COCO deeplabv3_resnet50_coco-cd0a2569.pth"),
)
def deeplabv3_resnet50(in_channels: int = 3, out_channels: int = 1) -> nn.Module:
    """DeepLabV3 with a ResNet-50 backbone (torchvision, random init, no aux head)."""
    check_channels(in_channels)
    tv = tv_deeplabv3_resnet50(weights=None, weights_backbone=None,
                               num_classes=out_channels, aux_loss=False)
    model = DeepLabV3Logits(tv.backbone, tv.classifier, aux_classifier=None)
    return replace_input_conv(model, DEEPLAB_STEM, in_channels)


@register_model("unet_small", task="segmentation",
                weights_hint="a cinelab unet_small checkpoint")
def unet_small(
    in_channels: int = 3,
    out_channels: int = 1,
    channels: Sequence[int] = UNET_SMALL_CHANNELS,
    strides: Sequence[int] = UNET_SMALL_STRIDES,
    num_res_units: int = UNET_SMALL_RES_UNITS,
    dropout: float = 0.0,
) -> nn.Module:
    """A small MONAI 2D U-Net for CPU training (input sides divisible by 8)."""
    check_channels(in_channels)
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(channels), strides=tuple(strides),
                num_res_units=num_res_units, dropout=dropout)
