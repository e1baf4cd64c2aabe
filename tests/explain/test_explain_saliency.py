"""Grad-CAM: layer choice, map shape, a planted discriminative patch, ensemble maps, PNG."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from cinelab.errors import InputError
from cinelab.explain.saliency import (
    class_score,
    ensemble_cam,
    find_cam_layer,
    grad_cam,
    normalise_map,
    write_cam_png,
)
from cinelab.io.image import read_image

SIZE, PATCH = 32, 6


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))


def _images(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Noise images; positives hold a checkerboard patch at a random place."""
    x = rng.normal(0, 0.3, (n, 1, SIZE, SIZE)).astype(np.float32)
    y = rng.integers(0, 2, n)
    boxes = []
    checker = np.indices((PATCH, PATCH)).sum(0) % 2 * 2.0 - 1.0
    for i in range(n):
        r, c = rng.integers(2, SIZE - PATCH - 2, 2)
        boxes.append((r, c))
        if y[i]:
            x[i, 0, r:r + PATCH, c:c + PATCH] += checker
    return torch.from_numpy(x), torch.from_numpy(y).float(), boxes


@pytest.fixture(scope="module")
def trained_toy() -> nn.Module:
    model, rng = _toy_model(), np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only contend on a shared machine
    try:
        for _ in range(100):
            x, y, _ = _images(32, rng)
            loss = nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model


def test_grad_cam_finds_the_planted_patch(trained_toy):
    x, y, boxes = _images(40, np.random.default_rng(1))
    cams = grad_cam(trained_toy, x)
    assert cams.shape == (40, SIZE, SIZE) and cams.dtype == np.float32 and (cams >= 0).all()
    hits = []
    for cam, label, (r, c) in zip(cams, y, boxes, strict=True):
        if label:
            py, px = np.unravel_index(np.argmax(cam), cam.shape)
            hits.append(r - 2 <= py < r + PATCH + 2 and c - 2 <= px < c + PATCH + 2)
    assert np.mean(hits) >= 0.8
    assert trained_toy.training  # its train/eval mode is restored; no gradient left
    assert all(p.grad is None for p in trained_toy.parameters())


def test_layer_choice_and_low_resolution_maps(trained_toy):
    x = torch.zeros(2, 1, SIZE, SIZE)
    assert find_cam_layer(trained_toy, x) == "3"  # the last ReLU's feature map
    assert grad_cam(trained_toy, x, layer="0", upsample=False).shape == (2, SIZE, SIZE)
    with pytest.raises(InputError, match="module name"):
        grad_cam(trained_toy, x, layer="nope")


def test_timm_classifier_gets_its_final_feature_map():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=1, in_chans=1)
    x = torch.rand(1, 1, 64, 64)
    layer = find_cam_layer(model, x)
    assert layer.startswith("layer4")
    assert grad_cam(model, x).shape == (1, 64, 64)


def test_class_score_targets():
    logits = torch.tensor([[1.5], [-2.0]])
    assert class_score(logits, None).tolist() == [1.5, -2.0]
    assert class_score(logits, -1).tolist() == [-1.5, 2.0]
    multi = torch.tensor([[0.1, 3.0, 0.2]])
    assert class_score(multi, None).tolist() == [3.0]
    assert class_score(multi, 2).tolist() == pytest.approx([0.2])


def test_ensemble_cam_weights_normalised_maps(tmp_path):
    a = np.zeros((8, 8), np.float32)
    a[0, 0] = 10.0
    b = np.zeros((8, 8), np.float32)
    b[7, 7] = 0.5
    out = ensemble_cam([a, b], [3.0, 1.0])
    assert out[0, 0] == pytest.approx(0.75) and out[7, 7] == pytest.approx(0.25)
    assert normalise_map(np.zeros((2, 2))).max() == 0
    with pytest.raises(InputError, match="one weight"):
        ensemble_cam([a], [0.5, 0.5])
    png = write_cam_png(tmp_path / "cam.png", np.full((8, 8), 100, np.uint8), out)
    assert read_image(png, rgb=True).shape == (8, 8, 3)
