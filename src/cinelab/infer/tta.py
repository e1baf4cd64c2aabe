"""Test-time augmentation for 2D images (and clips): seeded random flips, rotations, shifts
and zooms, applied deterministically, predictions averaged.

As in `cinelab.data.transforms`, a random transform (`RandomAffine2D`) draws parameters and
hands them to a deterministic twin (`Affine2D`) that can be re-applied, inspected or built by
hand. `tta_predict` draws `n` parameter sets from a seeded generator and applies each one to
the whole batch, so an image's TTA prediction does not depend on the batch it came in; the
first view is the unaugmented image unless ``include_identity=False``.

Tensors are batches with the channel axis at 1 and the spatial axes last: (B, C, H, W)
images or (B, C, T, H, W) clips (every frame of a clip gets the same transform). Pixel
values are kept in their units (apply TTA before normalisation; uncovered pixels get
`fill`, 0 = black by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cinelab.data.augment import augment_config
from cinelab.errors import InputError

DEFAULT_ROTATE_DEG = 5.0
DEFAULT_SHIFT = 0.05  # fraction of the image side
DEFAULT_ZOOM = 0.05  # scale drawn in [1 - zoom, 1 + zoom]
DEFAULT_FLIP = False  # a flipped radiograph puts the heart on the wrong side
DEFAULT_FILL = 0.0


@dataclass(frozen=True)
class Affine2D:
    """One deterministic view: horizontal flip, then rotation (degrees, anticlockwise),
    zoom (> 1 enlarges the content) and shift (fractions of the width/height; positive
    moves the content right/down), about the image centre."""

    flip: bool = False
    angle: float = 0.0
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    fill: float = DEFAULT_FILL

    @property
    def is_identity(self) -> bool:
        """True when applying it returns the input unchanged."""
        return (not self.flip and self.angle == 0.0 and self.scale == 1.0
                and self.dx == 0.0 and self.dy == 0.0)

    def theta(self, height: int, width: int) -> Tensor:
        """The (2, 3) affine_grid matrix mapping output to input coordinates."""
        a = math.radians(self.angle)
        aspect = height / width
        cos, sin = math.cos(a) / self.scale, math.sin(a) / self.scale
        # normalised coordinates: rotate in pixel space (aspect-corrected)
        rot = torch.tensor([[cos, -sin * aspect], [sin / aspect, cos]], dtype=torch.float32)
        shift = -rot @ torch.tensor([2.0 * self.dx, 2.0 * self.dy], dtype=torch.float32)
        return torch.cat([rot, shift[:, None]], dim=1)

    def __call__(self, x: Tensor) -> Tensor:
        """The view of batch `x` (B, C, H, W) or (B, C, T, H, W), float32."""
        if x.ndim not in (4, 5):
            raise InputError(None, "x", "a batch (B, C, H, W) or (B, C, T, H, W)",
                             f"shape {tuple(x.shape)}")
        out = x.to(torch.float32)
        if self.flip:
            out = torch.flip(out, dims=(-1,))
        if self.angle == 0.0 and self.scale == 1.0 and self.dx == 0.0 and self.dy == 0.0:
            return out
        shape = out.shape
        flat = out.reshape(shape[0], -1, shape[-2], shape[-1])
        theta = self.theta(shape[-2], shape[-1]).to(x.device)
        grid = F.affine_grid(theta.expand(shape[0], 2, 3), list(flat.shape), align_corners=False)
        warped = F.grid_sample(flat - self.fill, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False) + self.fill
        return warped.reshape(shape)


@dataclass(frozen=True)
class RandomAffine2D:
    """Draws `Affine2D` views: flip with probability 1/2 (when `flip`), angle uniform in
    [-rotate, rotate] degrees, scale in [1 - zoom, 1 + zoom], shifts in [-shift, shift]."""

    rotate: float = DEFAULT_ROTATE_DEG
    shift: float = DEFAULT_SHIFT
    zoom: float = DEFAULT_ZOOM
    flip: bool = DEFAULT_FLIP
    fill: float = DEFAULT_FILL

    def __post_init__(self) -> None:
        if self.rotate < 0 or not 0 <= self.shift < 1 or not 0 <= self.zoom < 1:
            raise InputError(None, "tta", "rotate >= 0 degrees, 0 <= shift < 1, 0 <= zoom < 1",
                             f"rotate={self.rotate}, shift={self.shift}, zoom={self.zoom}")

    def draw(self, generator: torch.Generator | None = None) -> Affine2D:
        """One deterministic view."""
        u = torch.rand(5, generator=generator).tolist()
        return Affine2D(flip=self.flip and u[0] < 0.5,
                        angle=(2 * u[1] - 1) * self.rotate,
                        scale=1.0 + (2 * u[2] - 1) * self.zoom,
                        dx=(2 * u[3] - 1) * self.shift, dy=(2 * u[4] - 1) * self.shift,
                        fill=self.fill)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """`x` under one freshly drawn view."""
        return self.draw(generator)(x)


def augment_from_recipe(recipe: Mapping[str, Any] | None) -> RandomAffine2D:
    """TTA views like the model's own training augmentation (a checkpoint's recipe dict,
    ``data.augment`` read by `cinelab.data.augment.augment_config`): its rotation, shift,
    zoom and horizontal flips, nothing it never saw; the mild defaults when it has none."""
    spec = ((recipe or {}).get("data") or {}).get("augment") or {}
    config = augment_config(spec)
    if config is None:
        return RandomAffine2D()
    zoom = max(abs(float(config.zoom[0]) - 1.0), abs(float(config.zoom[1]) - 1.0))
    return RandomAffine2D(rotate=float(config.rotate), shift=min(float(config.shift), 0.5),
                          zoom=min(zoom, 0.5), flip=float(config.hflip) > 0)


def tta_views(n: int, seed: int = 0, augment: RandomAffine2D | None = None,
              include_identity: bool = True) -> list[Affine2D]:
    """`n` views drawn from a generator seeded with `seed` (the first is the identity when
    `include_identity`): the same seed gives the same views."""
    if n < 1:
        raise InputError(None, "n", "at least 1 view (1 = no augmentation)", str(n))
    augment = augment or RandomAffine2D()
    generator = torch.Generator().manual_seed(int(seed))
    views = [Affine2D(fill=augment.fill)] if include_identity else []
    while len(views) < n:
        views.append(augment.draw(generator))
    return views


def tta_predict(predict: Callable[[Tensor], Tensor], x: Tensor, n: int = 1, seed: int = 0,
                augment: RandomAffine2D | None = None, include_identity: bool = True,
                return_all: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Mean of ``predict(view(x))`` over `n` seeded views (see `tta_views`).

    `predict` maps a float batch to per-sample outputs (probabilities, values); with
    `return_all` the stacked outputs of every view (n, B, ...) come back too.
    """
    views = tta_views(n, seed, augment, include_identity)
    with torch.no_grad():
        outs = torch.stack([predict(view(x)) for view in views])
    mean = outs.mean(dim=0)
    return (mean, outs) if return_all else mean
