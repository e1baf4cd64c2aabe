"""Video models: input (B, C, T, H, W) -> outputs (B, num_outputs).

torchvision's video ResNets keep their parameter names (``stem.*``, ``layer*``, ``fc.*``), so
EchoNet-Dynamic's ``r2plus1d_18_32_2_pretrained.pt`` and torchvision's Kinetics-400 files load
directly. Dropout goes after the global pool (a parameter-free slot), so adding it never
renames the head. Every model records its final Linear: use `output_layer(model)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.networks.nets import resnet as monai_resnet
from torch import Tensor, nn
from torchvision.models import video as tv_video

from cinelab.models.registry import (
    check_channels,
    output_layer,
    register_model,
    replace_input_conv,
    set_head,
)

__all__ = [
    "r2plus1d_18",
    "r3d_18",
    "mc3_18",
    "resnet3d_10",
    "resnet3d_18",
    "resnet3d_34",
    "resnet3d_50",
    "resnet3d_101",
    "resnet3d_152",
    "tiny_video",
    "TinyVideo",
    "output_layer",
]

#: Attribute paths shared by torchvision and MONAI video ResNets.
HEAD = "fc"
POOL = "avgpool"
TV_STEM = "stem.0"
KINETICS_FILES = {
    "r2plus1d_18": "r2plus1d_18-91a641e6.pth",
    "r3d_18": "r3d_18-b3b3357e.pth",
    "mc3_18": "mc3_18-a90a0ba3.pth",
}

#: `tiny_video`: channels per block; every block halves T, H and W (the first keeps T).
TINY_CHANNELS = (16, 32, 64, 128)
TINY_KERNEL = 3


def _check_dropout(dropout: float) -> float:
    if isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"dropout: expected a probability in [0, 1), found {dropout!r}")
    return dropout


def _with_dropout(model: nn.Module, dropout: float) -> nn.Module:
    """Put Dropout right after the global pool (before the head) when `dropout` > 0."""
    if _check_dropout(dropout) > 0:
        setattr(model, POOL, nn.Sequential(getattr(model, POOL), nn.Dropout(dropout)))
    return model


def _torchvision_video(factory: Callable[..., nn.Module], in_channels: int, num_outputs: int,
                       dropout: float) -> nn.Module:
    """A torchvision video ResNet with a new stem (if needed) and a Linear(num_outputs) head."""
    check_channels(in_channels)
    model = factory(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_outputs)
    replace_input_conv(model, TV_STEM, in_channels)
    return set_head(_with_dropout(model, dropout), HEAD)


def _kinetics_hint(arch: str) -> str:
    return (f"torchvision's Kinetics-400 {arch} weights ({KINETICS_FILES[arch]}, "
            f"https://download.pytorch.org/models/{KINETICS_FILES[arch]}), an EchoNet-Dynamic "
            "EF checkpoint, or a cinelab checkpoint")


@register_model("r2plus1d_18", task="video", weights_hint=_kinetics_hint("r2plus1d_18"))
def r2plus1d_18(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0) -> nn.Module:
    """R(2+1)D-18 (torchvision), the EchoNet-Dynamic EF model."""
    return _torchvision_video(tv_video.r2plus1d_18, in_channels, num_outputs, dropout)


@register_model("r3d_18", task="video", weights_hint=_kinetics_hint("r3d_18"))
def r3d_18(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0) -> nn.Module:
    """3D ResNet-18 (torchvision)."""
    return _torchvision_video(tv_video.r3d_18, in_channels, num_outputs, dropout)


@register_model("mc3_18", task="video", weights_hint=_kinetics_hint("mc3_18"))
def mc3_18(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0) -> nn.Module:
    """Mixed-convolution ResNet-18 (torchvision)."""
    return _torchvision_video(tv_video.mc3_18, in_channels, num_outputs, dropout)


def _monai_resnet(factory: Callable[..., nn.Module], in_channels: int, num_outputs: int,
                  dropout: float, **kwargs: object) -> nn.Module:
    """A MONAI 3D ResNet (extra keywords go to monai ResNet)."""
    check_channels(in_channels)
    model = factory(pretrained=False, spatial_dims=3, n_input_channels=in_channels,
                    num_classes=num_outputs, **kwargs)
    return set_head(_with_dropout(model, dropout), HEAD)


def _medicalnet_hint(depth: int) -> str:
    return (f"MedicalNet 3D ResNet-{depth} weights (e.g. resnet_{depth}_23dataset.pth; "
            "1 input channel, keys 'module.*') or a cinelab checkpoint")


@register_model("resnet3d_10", task="video", weights_hint=_medicalnet_hint(10))
def resnet3d_10(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
                **kwargs: object) -> nn.Module:
    """MONAI 3D ResNet-10 (keywords such as conv1_t_stride go to monai ResNet)."""
    return _monai_resnet(monai_resnet.resnet10, in_channels, num_outputs, dropout, **kwargs)


@register_model("resnet3d_18", task="video", weights_hint=_medicalnet_hint(18))
def resnet3d_18(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
                **kwargs: object) -> nn.Module:
    """MONAI 3D ResNet-18 (keywords such as conv1_t_stride go to monai ResNet)."""
    return _monai_resnet(monai_resnet.resnet18, in_channels, num_outputs, dropout, **kwargs)


@register_model("resnet3d_34", task="video", weights_hint=_medicalnet_hint(34))
def resnet3d_34(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
                **kwargs: object) -> nn.Module:
    """MONAI 3D ResNet-34 (keywords such as conv1_t_stride go to monai ResNet)."""
    return _monai_resnet(monai_resnet.resnet34, in_channels, num_outputs, dropout, **kwargs)


@register_model("resnet3d_50", task="video", weights_hint=_medicalnet_hint(50))
def resnet3d_50(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
                **kwargs: object) -> nn.Module:
    """MONAI 3D ResNet-50 (keywords such as conv1_t_stride go to monai ResNet)."""
    return _monai_resnet(monai_resnet.resnet50, in_channels, num_outputs, dropout, **kwargs)


@register_model("resnet3d_101", task="video", weights_hint=_medicalnet_hint(101))
def resnet3d_101(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
                 **kwargs: object) -> nn.Module:
    """MONAI 3D ResNet-101 (keywords such as conv1_t_stride go to monai ResNet)."""
    return _monai_resnet(monai_resnet.resnet101, in_channels, num_outputs, dropout, **kwargs)


@register_model("resnet3d_152", task="video", weights_hint=_medicalnet_hint(152))
def resnet3d_152(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
                 **kwargs: object) -> nn.Module:
    """MONAI 3D ResNet-152 (keywords such as conv1_t_stride go to monai ResNet)."""
    return _monai_resnet(monai_resnet.resnet152, in_channels, num_outputs, dropout, **kwargs)


class TinyVideo(nn.Module):
    """A few Conv3d+BN+ReLU blocks, global average pool, Linear: a CPU-sized video regressor."""

    def __init__(self, in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
                 channels: Sequence[int] = TINY_CHANNELS) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            stride = (1, 2, 2) if i == 0 else (2, 2, 2)
            blocks += [nn.Conv3d(c_in, c_out, TINY_KERNEL, stride=stride,
                                 padding=TINY_KERNEL // 2, bias=False),
                       nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c_in, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """Clip (B, C, T, H, W) -> outputs (B, num_outputs)."""
        return self.fc(self.dropout(self.avgpool(self.features(x))))


@register_model("tiny_video", task="video", weights_hint="a cinelab tiny_video checkpoint")
def tiny_video(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
               channels: Sequence[int] = TINY_CHANNELS) -> nn.Module:
    """A small 3D CNN for CPU training (e.g. 16x64x64 clips)."""
    check_channels(in_channels)
    _check_dropout(dropout)
    return set_head(TinyVideo(in_channels, num_outputs, dropout, tuple(channels)), HEAD)
