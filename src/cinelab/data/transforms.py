"""Batched transforms on tensors, run on the model's device (torchio style).

A random transform draws its parameters and hands them to a deterministic twin
(`RandomTranslate` -> `Translate`): the twin can be re-applied to another tensor of the same
batch (a mask), inverted, or built by hand for test-time augmentation.

Tensors are batches with the channel axis at 1 and the spatial axes last:
(B, C, H, W) images or (B, C, T, H, W) clips.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_FILL = 0.0


def _per_sample(values: int | Sequence[int] | Tensor, batch: int, name: str) -> list[int]:
    """One integer per batch sample (a scalar is broadcast)."""
    if isinstance(values, Tensor):
        values = values.reshape(-1).tolist()
    elif isinstance(values, int):
        values = [values] * batch
    values = [int(v) for v in values]
    if len(values) == 1:
        values = values * batch
    if len(values) != batch:
        raise ValueError(f"{name}: expected 1 or {batch} shifts (one per sample), "
                         f"found {len(values)}")
    return values


class Translate:
    """Move each sample's content by (dy[b], dx[b]) pixels; uncovered pixels get `fill`.

    ``out[b, ..., y, x] = x[b, ..., y - dy[b], x - dx[b]]`` (and `fill` outside the input).
    """

    def __init__(self, dy: int | Sequence[int] | Tensor, dx: int | Sequence[int] | Tensor,
                 fill: float = DEFAULT_FILL) -> None:
        self.dy, self.dx, self.fill = dy, dx, float(fill)

    def __call__(self, x: Tensor, fill: float | None = None) -> Tensor:
        """Translate batch `x` (B, ..., H, W); `fill` overrides the default fill value."""
        if x.ndim < 3:
            raise ValueError(f"x: expected a batch (B, ..., H, W), found shape {tuple(x.shape)}")
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        dy, dx = _per_sample(self.dy, batch, "dy"), _per_sample(self.dx, batch, "dx")
        pad = max(max(map(abs, dy)), max(map(abs, dx)))
        if pad == 0:
            return x
        value = self.fill if fill is None else float(fill)
        padded = F.pad(x, (pad, pad, pad, pad), mode="constant", value=value)
        return torch.stack([padded[b, ..., pad - dy[b]:pad - dy[b] + height,
                                   pad - dx[b]:pad - dx[b] + width] for b in range(batch)])

    def inverse(self) -> Translate:
        """The opposite shift (content that stayed inside the frame returns to its place)."""
        return Translate(_negate(self.dy), _negate(self.dx), self.fill)


def _negate(values: int | Sequence[int] | Tensor) -> int | list[int]:
    if isinstance(values, int):
        return -values
    return [-int(v) for v in torch.as_tensor(values).reshape(-1).tolist()]


class RandomTranslate:
    """EchoNet-Dynamic's augmentation: pad by `pad` pixels, then crop back at a random place.

    Each sample gets its own shift, drawn uniformly in [-pad, pad] on each axis (EchoNet draws
    the crop corner with ``np.random.randint(0, 2 * pad)``, i.e. [-pad, pad - 1]).
    """

    def __init__(self, pad: int, fill: float = DEFAULT_FILL) -> None:
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"pad: expected an integer >= 0 (pixels), found {pad!r}")
        self.pad, self.fill = pad, float(fill)

    def draw(self, batch: int, generator: torch.Generator | None = None) -> Translate:
        """The deterministic twin for a batch of `batch` samples."""
        shifts = torch.randint(-self.pad, self.pad + 1, (2, batch), generator=generator)
        return Translate(shifts[0], shifts[1], self.fill)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Translate batch `x` by freshly drawn shifts."""
        return self.draw(x.shape[0], generator)(x)


class Normalize:
    """(x - mean) / std per channel (axis 1), as float32; mean/std in the input's units."""

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean/std: expected one value per channel each, found "
                             f"{self.mean.numel()} and {self.std.numel()}")
        if not bool(torch.all(self.std > 0)):
            raise ValueError(f"std: expected values > 0, found {self.std.tolist()}")

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        channels = x.shape[1]
        if self.mean.numel() not in (1, channels):
            raise ValueError(f"x: expected {self.mean.numel()} channels at axis 1 (mean/std), "
                             f"found shape {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (self.mean.to(x.device).reshape(shape), self.std.to(x.device).reshape(shape))

    def __call__(self, x: Tensor) -> Tensor:
        """Normalised float32 copy of `x` (uint8 or float)."""
        mean, std = self._stats(x)
        return (x.to(torch.float32) - mean) / std

    def inverse(self, x: Tensor) -> Tensor:
        """Back to the input's units: x * std + mean."""
        mean, std = self._stats(x)
        return x.to(torch.float32) * std + mean
