"""timm classifiers: paper names, head and dropout, 1/3 channels, local weights, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from cinelab.errors import MissingWeightsError
from cinelab.models import create_model, list_models, output_layer
from cinelab.models.classification import (
    TIMM_MODELS,
    backbone_parameters,
    set_backbone_trainable,
    timm_name,
)
from cinelab.models.registry import get_entry

PAPER = ("densenet121", "efficientnet_b2", "inception_v3", "inception_resnet_v2", "resnet50",
         "xception")
SMALL = "resnet10t"
SIDE = 32


def test_paper_architectures_are_registered_under_timm_names():
    assert set(PAPER) <= set(list_models("classification"))
    assert timm_name("xception") == "legacy_xception"  # Chollet's (Keras) Xception
    assert all(name in timm.list_models() for name, _ in TIMM_MODELS.values())
    assert get_entry("inception_v3").min_size == 75 and get_entry("resnet50").min_size == 0
    assert "safetensors" in get_entry("densenet121").weights_hint


@pytest.mark.parametrize("name", [SMALL, "regnetx_002"])
def test_one_channel_forward_backward(name):
    model = create_model(name, num_outputs=3, in_channels=1, drop_rate=0.2).train()
    out = model(torch.randn(2, 1, SIDE, SIDE))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _head_input(drop_rate: float, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    model = create_model(SMALL, num_outputs=2, drop_rate=drop_rate).train()
    seen = {}
    output_layer(model).register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    model(x)
    return seen["x"]


def test_dropout_sits_before_the_recorded_head():
    x = torch.randn(2, 3, SIDE, SIDE)
    plain, dropped = _head_input(0.0, x), _head_input(0.75, x)
    kept = dropped != 0
    assert 0 < kept.float().mean() < 0.5  # most pooled features dropped, the rest scaled
    torch.testing.assert_close(dropped[kept], plain[kept] * 4)
    assert isinstance(output_layer(create_model(SMALL, num_outputs=2)), nn.Linear)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="drop_rate"):
        create_model(SMALL, drop_rate=1.5)
    with pytest.raises(ValueError, match="num_outputs"):
        create_model(SMALL, num_outputs=0)


def _imagenet_like_file(tmp_path: Path, suffix: str) -> tuple[Path, dict]:
    """A 1000-class, 3-channel timm state for resnet10t, as safetensors or a torch file."""
    torch.manual_seed(1)
    state = timm.create_model(timm_name(SMALL), num_classes=1000).state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_imagenet_weights_load_backbone_and_skip_the_head(tmp_path, suffix):
    path, state = _imagenet_like_file(tmp_path, suffix)
    model = create_model(SMALL, num_outputs=1, in_channels=1, pretrained=str(path))
    own = model.state_dict()
    assert torch.equal(own["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    stem = state["conv1.0.weight"]
    torch.testing.assert_close(own["conv1.0.weight"], stem.sum(dim=1, keepdim=True))
    assert own["fc.weight"].shape == (1, own["fc.weight"].shape[1])
    report = model.load_pretrained(path)
    assert sorted(k for k, _, _ in report.mismatched) == ["fc.bias", "fc.weight"]
    assert report.adapted == ["conv1.0.weight"]


def test_missing_weights_file_says_what_to_put_where(tmp_path):
    with pytest.raises(MissingWeightsError, match="resnet10t"):
        create_model(SMALL, pretrained=str(tmp_path / "nope.safetensors"))


def test_freezing_leaves_only_the_head_trainable():
    model = create_model(SMALL, num_outputs=1).train()
    set_backbone_trainable(model, False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in output_layer(model).parameters()}
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in backbone_parameters(model))
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
