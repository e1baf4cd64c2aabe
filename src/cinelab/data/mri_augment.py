"""Cine MRI augmentation on batches of clips, on the device (`cinelab.data.transforms` style).

`RandomCineAugment` draws per-sample parameters and hands them to the deterministic twin
`CineTransform`, which applies, to float clips (B, C, T, H, W) in pixel units (0-255, before
normalisation), in this order:

1. intensity: gamma ``255 (x / 255) ** gamma``, then a gain ``x * gain`` (coil and scanner
   intensity differences);
2. geometry: rotation (degrees, anticlockwise), isotropic scaling (> 1 enlarges) and a shift
   (fractions of the width/height) about the image centre, the same for every frame of a clip;
   uncovered pixels get `fill` (0 = black);
3. time: a cyclic shift of the frames by `roll` (a cine is one cardiac cycle, so a shifted
   cine is the same heart starting at another phase).

`cine_tta_views(n)` lists the first n of a fixed set of deterministic views (identity, cyclic
shifts by +-2 frames, rotations by +-6 degrees, scalings by 1 +- 0.06) for test-time
augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cinelab.errors import InputError

MAX_PIXEL = 255.0
TTA_VIEWS: tuple[dict[str, float], ...] = (
    {}, {"roll": 2}, {"roll": -2}, {"angle": 6.0}, {"angle": -6.0}, {"scale": 1.06},
    {"scale": 0.94},
)


def _vector(value: float | Tensor, batch: int, device: torch.device) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1).expand(batch)


@dataclass(frozen=True)
class CineTransform:
    """Deterministic per-sample (or shared, when scalars) cine transform; see the module doc."""

    angle: float | Tensor = 0.0
    scale: float | Tensor = 1.0
    dx: float | Tensor = 0.0
    dy: float | Tensor = 0.0
    gain: float | Tensor = 1.0
    gamma: float | Tensor = 1.0
    roll: int | Tensor = 0
    fill: float = 0.0

    def _param(self, name: str, batch: int, device: torch.device) -> Tensor:
        return _vector(getattr(self, name), batch, device)

    def theta(self, batch: int, height: int, width: int, device: torch.device) -> Tensor:
        """(B, 2, 3) affine_grid matrices mapping output to input coordinates."""
        a = torch.deg2rad(self._param("angle", batch, device))
        s = self._param("scale", batch, device)
        aspect = height / width
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        rot = torch.stack([torch.stack([cos, -sin * aspect], -1),
                           torch.stack([sin / aspect, cos], -1)], -2)
        shift = torch.stack([2 * self._param("dx", batch, device),
                             2 * self._param("dy", batch, device)], -1)
        return torch.cat([rot, -(rot @ shift[..., None])], dim=-1)

    def _geometric(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        flat = x.reshape(b, c * t, h, w)
        grid = F.affine_grid(self.theta(b, h, w, x.device), [b, c * t, h, w],
                             align_corners=False)
        out = F.grid_sample(flat - self.fill, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False) + self.fill
        return out.reshape(b, c, t, h, w)

    def _intensity(self, x: Tensor) -> Tensor:
        shape = (-1, 1, 1, 1, 1)
        gamma = self._param("gamma", x.shape[0], x.device).reshape(shape)
        gain = self._param("gain", x.shape[0], x.device).reshape(shape)
        return MAX_PIXEL * (x.clamp_min(0) / MAX_PIXEL) ** gamma * gain

    def _roll(self, x: Tensor) -> Tensor:
        shifts = torch.as_tensor(self.roll).reshape(-1).expand(x.shape[0]).tolist()
        if not any(shifts):
            return x
        return torch.stack([torch.roll(x[i], int(s), dims=1) for i, s in enumerate(shifts)])

    def __call__(self, x: Tensor) -> Tensor:
        """The transformed float32 batch (B, C, T, H, W)."""
        if x.ndim != 5:
            raise InputError(None, "x", "a batch of clips (B, C, T, H, W)",
                             f"shape {tuple(x.shape)}")
        return self._roll(self._geometric(self._intensity(x.to(torch.float32))))


@dataclass(frozen=True)
class RandomCineAugment:
    """Per-sample draws: angle in [-rotate, rotate] degrees, scale in [1 - scale, 1 + scale],
    shifts in [-shift, shift], gain in [1 - gain, 1 + gain], log-uniform gamma in
    [1 / (1 + gamma), 1 + gamma], cyclic time shift in [-time_shift, time_shift] frames."""

    rotate: float = 10.0
    scale: float = 0.1
    shift: float = 0.05
    gain: float = 0.1
    gamma: float = 0.2
    time_shift: int = 0
    fill: float = 0.0

    def __post_init__(self) -> None:
        ok = (self.rotate >= 0 and 0 <= self.scale < 1 and 0 <= self.shift < 1
              and 0 <= self.gain < 1 and self.gamma >= 0 and self.time_shift >= 0)
        if not ok:
            raise InputError(None, "data.augment", "rotate >= 0, 0 <= scale/shift/gain < 1, "
                             "gamma >= 0, time_shift >= 0 frames", repr(self))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> RandomCineAugment:
        """From a recipe's ``data.augment`` mapping (unknown keys raise InputError)."""
        names = [f.name for f in fields(cls)]
        unknown = [k for k in spec if k not in names]
        if unknown:
            raise InputError(None, f"data.augment.{unknown[0]}", f"one of {names}",
                             repr(unknown[0]))
        return cls(**dict(spec))

    def draw(self, batch: int, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None) -> CineTransform:
        """The deterministic twin for `batch` samples."""
        u = torch.rand(6, batch, generator=generator) * 2 - 1  # uniform in [-1, 1]
        roll = torch.randint(-self.time_shift, self.time_shift + 1, (batch,),
                             generator=generator)
        dev = torch.device(device)
        return CineTransform(angle=(u[0] * self.rotate).to(dev),
                             scale=(1 + u[1] * self.scale).to(dev),
                             dx=(u[2] * self.shift).to(dev), dy=(u[3] * self.shift).to(dev),
                             gain=(1 + u[4] * self.gain).to(dev),
                             gamma=torch.exp(u[5] * math.log1p(self.gamma)).to(dev),
                             roll=roll, fill=self.fill)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Batch `x` under freshly drawn per-sample parameters."""
        return self.draw(x.shape[0], x.device, generator)(x)


def cine_tta_views(n: int) -> list[CineTransform]:
    """The first `n` TTA_VIEWS as transforms (n = 1: identity only)."""
    if not 1 <= n <= len(TTA_VIEWS):
        raise InputError(None, "tta", f"1 to {len(TTA_VIEWS)} views", repr(n))
    return [CineTransform(**view) for view in TTA_VIEWS[:n]]
