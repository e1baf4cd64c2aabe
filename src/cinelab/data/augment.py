"""Batch augmentation of 2D images with their label masks, on the model's device.

`RandomAugment` draws one set of parameters per sample (flips, rotation, scale, shift,
an elastic displacement field, brightness, contrast, gamma) and hands them to its
deterministic twin `Augment`, which warps images (bilinear) and masks (nearest) with one
shared sampling grid and changes the images' intensities. The presets are fastai-like:

- ``normal``: horizontal flips, rotation up to 10 degrees, zoom 1-1.1, mild warping and
  lighting (fastai's `aug_transforms` defaults, the cmr-seg-tl paper's "normal" set);
- ``extreme``: both flips, any rotation, zoom 0.75-1.33, shifts, stronger warping, lighting
  and gamma, each applied more often (the paper's "extreme" set, better on unrotated data).

Optionally (``crop: <px>``) training batches are then cropped, each crop centred on a
labelled pixel with probability ``crop_foreground``: a fully convolutional network learns
from crops at a fraction of the cost and still predicts whole images.

Images are float (B, C, H, W) in [0, 1] (intensity changes clip to that range); masks are
(B, H, W) or (B, 1, H, W) integer labels. Outside the input, images get 0 and masks 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cinelab.errors import InputError

ELASTIC_GRID = 4  # control points per side of the elastic displacement field


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges and probabilities; angles in degrees, shifts and warps as fractions of the side."""

    hflip: float = 0.5  # probability
    vflip: float = 0.0
    rotate: float = 10.0  # max absolute angle
    zoom: tuple[float, float] = (1.0, 1.1)
    shift: float = 0.0
    warp: float = 0.02  # max elastic displacement
    brightness: float = 0.2  # max absolute change (fraction of the range)
    contrast: float = 0.2  # max relative change
    gamma: tuple[float, float] = (1.0, 1.0)
    p_affine: float = 0.75
    p_warp: float = 0.75
    p_lighting: float = 0.75
    crop: int = 0  # > 0: train on crops of this side (px), after warping (if smaller)
    crop_foreground: float = 0.8  # probability that a crop is centred on a labelled pixel


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(hflip=0.0, rotate=0.0, zoom=(1.0, 1.0), warp=0.0, brightness=0.0,
                          contrast=0.0, p_affine=0.0, p_warp=0.0, p_lighting=0.0),
    "normal": AugmentConfig(),
    "extreme": AugmentConfig(hflip=0.5, vflip=0.5, rotate=180.0, zoom=(0.75, 1.33),
                             shift=0.1, warp=0.05, brightness=0.4, contrast=0.4,
                             gamma=(0.6, 1.6), p_affine=1.0, p_warp=0.9, p_lighting=0.9),
}


def augment_config(spec: Mapping[str, Any] | None) -> AugmentConfig | None:
    """The config of a recipe's ``data.augment`` ({preset: normal, rotate: 20, ...}); None
    when empty or preset "none"."""
    spec = dict(spec or {})
    if not spec:
        return None
    preset = spec.pop("preset", "normal")
    if preset not in PRESETS:
        raise InputError(None, "data.augment.preset", f"one of {sorted(PRESETS)}", repr(preset))
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise InputError(None, f"data.augment.{unknown[0]}", f"one of {sorted(fields)}",
                         repr(unknown[0]))
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    if "crop" in spec and spec["crop"] is None:
        spec["crop"] = 0  # null: no crop, like 0
    config = dataclasses.replace(PRESETS[preset], **spec)
    return None if config == PRESETS["none"] else config


@dataclass
class Augment:
    """Deterministic augmentation of one batch: affine (B, 2, 3) in normalised coordinates
    (output -> input), displacement (B, 2, h, w) or None, and per-sample intensity changes."""

    theta: Tensor
    displacement: Tensor | None
    brightness: Tensor  # (B,)
    contrast: Tensor  # (B,)
    gamma: Tensor  # (B,)
    corners: Tensor | None = None  # (B, 2) top-left (y, x) of a crop, after warping
    crop_size: int = 0

    def grid(self, height: int, width: int, device: torch.device) -> Tensor:
        """Sampling grid (B, H, W, 2) for images of that size."""
        theta = self.theta.to(device)
        grid = F.affine_grid(theta, [len(theta), 1, height, width], align_corners=False)
        if self.displacement is not None:
            field = F.interpolate(self.displacement.to(device), size=(height, width),
                                  mode="bicubic", align_corners=True)
            grid = grid + field.permute(0, 2, 3, 1)
        return grid

    def image(self, x: Tensor) -> Tensor:
        """Warp and relight float images (B, C, H, W) in [0, 1]."""
        grid = self.grid(x.shape[-2], x.shape[-1], x.device)
        x = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
        shape = (-1, 1, 1, 1)
        gamma, contrast, brightness = (t.to(x.device).reshape(shape) for t in
                                       (self.gamma, self.contrast, self.brightness))
        x = x.clamp(0, 1) ** gamma
        return self.crop(((x - 0.5) * contrast + 0.5 + brightness).clamp(0, 1))

    def warp_mask(self, m: Tensor) -> Tensor:
        """Warp integer masks (B, H, W) or (B, 1, H, W) with the same grid (nearest)."""
        squeeze = m.ndim == 3
        m4 = m[:, None] if squeeze else m
        grid = self.grid(m4.shape[-2], m4.shape[-1], m4.device)
        out = F.grid_sample(m4.float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False).round().to(m.dtype)
        return out[:, 0] if squeeze else out

    def mask(self, m: Tensor) -> Tensor:
        """Warp, then crop, integer masks (B, H, W) or (B, 1, H, W)."""
        return self.crop(self.warp_mask(m))

    def crop(self, x: Tensor) -> Tensor:
        """The crop of each sample (..., H, W) at its corner (unchanged without a crop)."""
        if self.corners is None or not self.crop_size:
            return x
        s = self.crop_size
        return torch.stack([x[b, ..., int(y):int(y) + s, int(c):int(c) + s]
                            for b, (y, c) in enumerate(self.corners.tolist())])


class RandomAugment:
    """Draws `Augment` parameters per sample from an `AugmentConfig` (or a preset name)."""

    def __init__(self, config: AugmentConfig | str = "normal") -> None:
        if isinstance(config, str):
            if config not in PRESETS:
                raise InputError(None, "preset", f"one of {sorted(PRESETS)}", repr(config))
            config = PRESETS[config]
        self.config = config

    def draw(self, batch: int, height: int, width: int,
             generator: torch.Generator | None = None) -> Augment:
        """Parameters for a batch of `batch` images of size (height, width)."""
        c = self.config

        def uniform(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(batch, generator=generator)

        def chance(p: float) -> Tensor:
            return torch.rand(batch, generator=generator) < p

        on = chance(c.p_affine)
        angle = torch.where(on, uniform(-c.rotate, c.rotate), torch.zeros(batch))
        zoom = torch.where(on, _log_uniform(c.zoom, batch, generator), torch.ones(batch))
        flips = torch.stack([torch.where(on & chance(c.hflip), -1.0, 1.0),
                             torch.where(on & chance(c.vflip), -1.0, 1.0)], 1)
        shift = torch.stack([uniform(-c.shift, c.shift), uniform(-c.shift, c.shift)], 1) * 2
        theta = affine_theta(angle, zoom, flips, shift * on[:, None], height, width)
        light = chance(c.p_lighting)
        return Augment(
            theta, _displacement(c.warp, chance(c.p_warp), batch, generator),
            torch.where(light, uniform(-c.brightness, c.brightness), torch.zeros(batch)),
            torch.where(light, _log_uniform((1 - c.contrast, 1 + c.contrast), batch,
                                            generator), torch.ones(batch)),
            torch.where(light, _log_uniform(c.gamma, batch, generator), torch.ones(batch)))

    def __call__(self, images: Tensor, masks: Tensor,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment a batch of images in [0, 1] and their masks with freshly drawn parameters
        (crops, when configured, drawn on the warped masks)."""
        twin = self.draw(len(images), images.shape[-2], images.shape[-1], generator)
        warped = twin.warp_mask(masks)
        if 0 < self.config.crop < min(images.shape[-2:]):  # a larger crop: whole images
            twin.crop_size = self.config.crop
            twin.corners = crop_corners(warped, self.config.crop, self.config.crop_foreground,
                                        generator)
        return twin.image(images), twin.crop(warped)


def _log_uniform(bounds: tuple[float, float], batch: int,
                 generator: torch.Generator | None) -> Tensor:
    lo, hi = math.log(max(bounds[0], 1e-6)), math.log(max(bounds[1], 1e-6))
    return torch.exp(lo + (hi - lo) * torch.rand(batch, generator=generator))


def _displacement(warp: float, on: Tensor, batch: int,
                  generator: torch.Generator | None) -> Tensor | None:
    """Coarse random displacements (B, 2, g, g) in normalised units (2 = the whole side)."""
    if warp <= 0 or not bool(on.any()):
        return None
    field = (torch.rand(batch, 2, ELASTIC_GRID, ELASTIC_GRID, generator=generator) * 2 - 1)
    return field * (2 * warp) * on.reshape(-1, 1, 1, 1)


def affine_theta(angle_deg: Tensor, zoom: Tensor, flips: Tensor, shift: Tensor,
                 height: int, width: int) -> Tensor:
    """(B, 2, 3) output->input maps for `F.affine_grid`: rotate by angle, zoom in by `zoom`
    (> 1 enlarges the content), flip (-1 per axis x, y), shift (normalised units, x, y);
    rotations are true rotations on non-square images."""
    rad = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    aspect = width / height  # normalised x units are width/2 pixels, y units height/2
    rot = torch.stack([torch.stack([cos, -sin / aspect], -1),
                       torch.stack([sin * aspect, cos], -1)], 1)
    scale = flips / zoom[:, None]
    theta = torch.zeros(len(angle_deg), 2, 3)
    theta[:, :, :2] = rot * scale[:, None, :]
    theta[:, :, 2] = shift
    return theta


def crop_corners(masks: Tensor, size: int, foreground: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """(B, 2) crop corners: centred on a random labelled pixel with probability
    `foreground` (when the sample has one), else uniform; always inside the image."""
    height, width = masks.shape[-2:]
    if size > min(height, width):
        raise InputError(None, "data.augment.crop", f"at most {min(height, width)} px (the "
                         "image side)", str(size))
    corners = []
    for m in masks.reshape(len(masks), height, width):
        labelled = torch.nonzero(m.cpu() > 0)
        if len(labelled) and float(torch.rand(1, generator=generator)) < foreground:
            pick = labelled[int(torch.randint(len(labelled), (1,), generator=generator))]
            y, x = int(pick[0]) - size // 2, int(pick[1]) - size // 2
        else:
            y = int(torch.randint(height - size + 1, (1,), generator=generator))
            x = int(torch.randint(width - size + 1, (1,), generator=generator))
        corners.append([min(max(y, 0), height - size), min(max(x, 0), width - size)])
    return torch.tensor(corners)
