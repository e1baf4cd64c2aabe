"""Synthetic setups of known truth for the uncertainty mechanisms (tests and benchmark).

* `regression_cohort`       truth and predictions with known noise (heteroscedastic option)
* `overconfident_classifier` labels drawn from sigmoid(z), raw probability sigmoid(k·z)
* `shape_images` / `ood_images` / `train_shape_classifier`   a tiny CNN that tells discs from
  rings, and inputs of the wrong kind (noise, stripes, gradients) to flag
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from cinelab.models.registry import set_head

IMAGE_SIZE = 32
OOD_KINDS = ("noise", "stripes", "gradient")


def regression_cohort(n: int, seed: int = 0, noise: float = 5.0, heteroscedastic: bool = False,
                      mean: float = 55.0, sd: float = 10.0) -> dict[str, np.ndarray]:
    """{truth, prediction, sigma}: prediction = truth + N(0, sigma); sigma is `noise`, or
    grows with |truth - mean| when `heteroscedastic`."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(mean, sd, n)
    sigma = np.full(n, noise) if not heteroscedastic else \
        noise * (0.5 + np.abs(truth - mean) / sd)
    return {"truth": truth, "prediction": truth + rng.normal(0.0, 1.0, n) * sigma,
            "sigma": sigma}


def overconfident_classifier(n: int, seed: int = 0, overconfidence: float = 5.0
                             ) -> dict[str, np.ndarray]:
    """{labels, prob_true, prob_raw, logits_raw}: labels ~ Bernoulli(sigmoid(z)); the model
    reports sigmoid(overconfidence · z), i.e. its logits are multiplied by `overconfidence`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < expit(z)).astype(float)
    return {"labels": labels, "prob_true": expit(z), "prob_raw": expit(overconfidence * z),
            "logits_raw": overconfidence * z}


def shape_images(n: int, seed: int = 0, size: int = IMAGE_SIZE
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 1, size, size) in [0, 1], labels): bright discs (0) or rings (1) of
    random position and radius on a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, 1, size, size), np.float32)
    labels = rng.integers(0, 2, n)
    for i in range(n):
        r = rng.uniform(size * 0.15, size * 0.3)
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        if labels[i] == 0:
            shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        else:
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            shape = (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
        img = 0.1 + 0.7 * shape + rng.normal(0.0, 0.05, (size, size))
        images[i, 0] = np.clip(img, 0.0, 1.0)
    return torch.from_numpy(images), torch.from_numpy(labels)


def ood_images(n: int, kind: str, seed: int = 0, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Inputs of the wrong kind: uniform ``noise``, sinusoidal ``stripes`` of random
    frequency and angle, or a linear ``gradient`` of random direction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        if kind == "noise":
            img = rng.random((size, size))
        else:
            angle = rng.uniform(0, np.pi)
            t = np.cos(angle) * xx + np.sin(angle) * yy
            img = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t) if kind == "stripes" \
                else (t - t.min()) / max(t.max() - t.min(), 1e-6)
        images[i, 0] = img
    if kind not in OOD_KINDS:
        raise ValueError(f"kind must be one of {OOD_KINDS}, not {kind!r}")
    return torch.from_numpy(images)


class ShapeNet(nn.Module):
    """conv-conv-pool-linear classifier; ``fc`` is its recorded output layer."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, 2)
        set_head(self, "fc")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def train_shape_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 15,
                           seed: int = 0, batch_size: int = 32) -> ShapeNet:
    """A ShapeNet trained with Adam on CPU in one thread (a few seconds; tiny convolutions
    get much slower with several threads on a busy machine), deterministic for a seed;
    returned in eval mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = ShapeNet()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=gen)
            for start in range(0, len(images), batch_size):
                idx = order[start:start + batch_size]
                opt.zero_grad()
                loss_fn(model(images[idx]), labels[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
