"""Every registered model: forward, backward, output shape, no NaN (timm's test_models.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cinelab.models import TASKS, create_model, list_models, model_task, output_layer
from cinelab.models.registry import (
    UnknownModelError,
    get_entry,
    register_model,
    replace_input_conv,
    set_head,
)

BATCH = 2  # BatchNorm in training mode needs more than one value per channel
VIDEO_SHAPE = (8, 16, 16)  # T, H, W
IMAGE_SHAPE = (64, 64)
VIDEO_OUTPUTS = 2
SEG_CLASSES = 2


def _inputs(name: str, in_channels: int) -> tuple[dict, torch.Tensor, tuple[int, ...]]:
    """Builder config, input batch and expected output shape for model `name`."""
    task = model_task(name)
    if task == "video":
        x = torch.randn(BATCH, in_channels, *VIDEO_SHAPE)
        return {"num_outputs": VIDEO_OUTPUTS}, x, (BATCH, VIDEO_OUTPUTS)
    x = torch.randn(BATCH, in_channels, *IMAGE_SHAPE)
    if task == "classification":  # some need a larger input (inception_v3: 75 px)
        side = max(IMAGE_SHAPE[0], get_entry(name).min_size)
        x = torch.randn(BATCH, in_channels, side, side)
        return {"num_outputs": VIDEO_OUTPUTS}, x, (BATCH, VIDEO_OUTPUTS)
    if task == "segmentation":
        return {"out_channels": SEG_CLASSES}, x, (BATCH, SEG_CLASSES, *IMAGE_SHAPE)
    pytest.fail(f"{name}: no test inputs for task {task!r}; add a case to _inputs")


def _forward_backward(name: str, in_channels: int) -> nn.Module:
    cfg, x, expected = _inputs(name, in_channels)
    torch.manual_seed(0)
    model = create_model(name, in_channels=in_channels, **cfg).train()
    out = model(x)
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), f"{name}: parameters without gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    return model


def test_registry_has_the_builtin_models():
    assert {"deeplabv3_resnet50", "unet_small"} <= set(list_models("segmentation"))
    expected_video = {"r2plus1d_18", "r3d_18", "mc3_18", "tiny_video",
                      *(f"resnet3d_{d}" for d in (10, 18, 34, 50, 101, 152))}
    assert expected_video <= set(list_models("video"))
    assert set(list_models()) == {n for task in TASKS for n in list_models(task)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_model_forward_backward(name):
    _forward_backward(name, in_channels=3)


@pytest.mark.parametrize(("name", "in_channels"), [
    ("deeplabv3_resnet50", 1), ("unet_small", 2), ("r2plus1d_18", 1), ("mc3_18", 2),
    ("resnet3d_10", 1), ("tiny_video", 2),
])
@pytest.mark.slow
def test_model_other_input_channels(name, in_channels):
    _forward_backward(name, in_channels)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models("video"))
def test_output_layer_is_the_final_linear(name):
    model = create_model(name, num_outputs=VIDEO_OUTPUTS, dropout=0.5).eval()
    head = output_layer(model)
    assert isinstance(head, nn.Linear) and head.out_features == VIDEO_OUTPUTS
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([55.6, -1.0]))
        out = model(torch.randn(1, 3, *VIDEO_SHAPE))
    torch.testing.assert_close(out, torch.tensor([[55.6, -1.0]]))
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())


def test_dropout_keeps_torchvision_key_names():
    plain = create_model("r2plus1d_18")
    dropped = create_model("r2plus1d_18", dropout=0.3)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    assert "fc.weight" in plain.state_dict()


def test_output_layer_through_dataparallel_style_wrapper():
    model = create_model("tiny_video")
    wrapper = nn.Module()
    wrapper.module = model
    assert output_layer(wrapper) is model.fc


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as err:
        create_model("r2plus1d_81")
    text = str(err.value)
    assert "r2plus1d_81" in text and "r2plus1d_18" in text and "unet_small" in text
    assert "video:" in text and "segmentation:" in text


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="in_channels"):
        create_model("tiny_video", in_channels=0)
    with pytest.raises(ValueError, match="dropout"):
        create_model("r3d_18", dropout=1.5)
    with pytest.raises(ValueError, match="task"):
        register_model("x", task="nonsense")
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_video", task="video")(lambda **cfg: nn.Linear(1, 1))


def test_helpers_replace_conv_and_reject_non_linear_head():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Flatten())
    replace_input_conv(model, "0", 1)
    assert model[0].in_channels == 1 and model[0].stride == (2, 2)
    with pytest.raises(TypeError):
        set_head(model, "1")
    with pytest.raises(TypeError, match="no output layer"):
        output_layer(model)
