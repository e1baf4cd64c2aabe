"""`seg_video`: EF from a clip through a frozen LV segmentation network and a small head.

A CPU-sized video regressor with a strong prior: every frame of the clip goes through a
registered segmentation network (trained first, loaded with ``pretrained=<its model.pt>``),
the LV area curve of the clip is summarised (largest, smallest and mean area, and the
fractional changes that the area-length rule turns into EF), and a small MLP maps that to
EF. Training it is the same EF regression on random clips as for the 3D CNNs, in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cinelab.models.registry import create_model, register_model, set_head
from cinelab.models.weights import load_weights

AREA_FLOOR = 1e-4  # fraction of the frame; keeps the logarithms finite on empty masks
AREA_LENGTH_EXPONENT = 1.5  # volume ~ area^1.5 when the long axis scales with sqrt(area)
N_FEATURES = 5


class SegVideo(nn.Module):
    """Frozen frame segmenter -> clip LV-area features -> MLP -> outputs."""

    def __init__(self, segmenter: str = "unet_small", in_channels: int = 3,
                 num_outputs: int = 1, hidden: int = 32, dropout: float = 0.0,
                 segmenter_kwargs: dict[str, Any] | None = None, lv_class: int = 0) -> None:
        super().__init__()
        kwargs = dict(segmenter_kwargs or {})
        self.segmenter = create_model(segmenter, in_channels=in_channels, **kwargs)
        self.segmenter.requires_grad_(False)
        self.lv_class = lv_class
        self.head = nn.Sequential(nn.BatchNorm1d(N_FEATURES), nn.Linear(N_FEATURES, hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc = nn.Linear(hidden, num_outputs)

    def train(self, mode: bool = True) -> SegVideo:
        """The segmenter stays in eval mode (frozen batch-norm statistics)."""
        super().train(mode)
        self.segmenter.eval()
        return self

    def load_pretrained(self, path: str | Path, description: str | None = None) -> Any:
        """Load a segmentation checkpoint (e.g. a cinelab model.pt) into the segmenter."""
        return load_weights(self.segmenter, path, description=description)

    def lv_area(self, clips: Tensor) -> Tensor:
        """(B, C, T, H, W) clips -> (B, T) LV area as a fraction of the frame."""
        b, c, t, h, w = clips.shape
        frames = clips.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        with torch.no_grad():
            logits = self.segmenter(frames)
        if logits.shape[1] == 1:
            mask = logits[:, 0] > 0
        else:
            mask = logits.argmax(1) == self.lv_class
        return mask.float().reshape(b, t, h * w).mean(-1).clamp_min(AREA_FLOOR)

    def forward(self, clips: Tensor) -> Tensor:
        """Clip (B, C, T, H, W) -> outputs (B, num_outputs)."""
        area = self.lv_area(clips)
        largest, smallest, mean = area.amax(1), area.amin(1), area.mean(1)
        ratio = smallest / largest
        features = torch.stack([largest.log(), smallest.log(), mean.log(), 1 - ratio,
                                1 - ratio**AREA_LENGTH_EXPONENT], dim=1)
        return self.fc(self.head(features))


@register_model("seg_video", task="video",
                weights_hint="a cinelab segmentation checkpoint (model.pt of `cinelab train "
                             "echonet-seg-cpu`) for the frame segmenter")
def seg_video(in_channels: int = 3, num_outputs: int = 1, dropout: float = 0.0,
              segmenter: str = "unet_small", hidden: int = 32,
              segmenter_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """EF from LV-area features of a frozen segmentation network (CPU recipe)."""
    model = SegVideo(segmenter, in_channels, num_outputs, hidden, dropout, segmenter_kwargs)
    return set_head(model, "fc")
