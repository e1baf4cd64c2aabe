"""Local weights: loading formats, missing-file errors, shape-mismatch reports, EchoNet imports.

The EchoNet-Dynamic release files were saved from a DataParallel model on GPU; here the test
writes files in that exact layout from CPU tensors (no GPU in CI), and loads them with
map_location="cpu" as the real files are loaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cinelab.errors import InputError, MissingWeightsError
from cinelab.models import create_model
from cinelab.models.weights import (
    default_weights_dir,
    load_weights,
    resolve_weights,
    strip_prefix,
)
from cinelab.pipelines.echonet.weights import load_echonet_model, load_echonet_state


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _echonet_file(path, model: nn.Module, extra: dict | None = None) -> None:
    """torch.save in EchoNet-Dynamic's checkpoint layout (DataParallel "module." keys)."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    optim = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optim, 15)
    torch.save({"epoch": 44, "state_dict": state, "opt_dict": optim.state_dict(),
                "scheduler_dict": scheduler.state_dict(), "best_loss": 27.5, "loss": 28.1,
                **(extra or {})}, path)


def _perturbed(model: nn.Module) -> nn.Module:
    """The model with every float tensor changed a little (so a load is visible)."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.mul_(1 + 0.1 * torch.rand_like(t)).add_(0.01 * torch.rand_like(t))
    return model


def test_raw_state_dict_round_trip(tmp_path):
    src = _perturbed(create_model("tiny_video"))
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = create_model("tiny_video")
    report = load_weights(dst, tmp_path / "w.pt")
    assert report.complete and not report.mismatched
    assert _same_weights(src, dst)


def test_lightning_style_checkpoint_with_model_prefix(tmp_path):
    src = _perturbed(create_model("unet_small"))  # its own keys start with "model."
    state = {f"model.{k}": v for k, v in src.state_dict().items()}
    state["loss_fn.pos_weight"] = torch.ones(1)
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 1e-3}},
               tmp_path / "lit.ckpt")
    dst = create_model("unet_small")
    report = load_weights(dst, tmp_path / "lit.ckpt")
    assert _same_weights(src, dst)
    assert report.unexpected == ["loss_fn.pos_weight"] and not report.missing


def test_pretrained_argument_and_bare_name_in_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CINELAB_WEIGHTS", str(tmp_path))
    assert default_weights_dir() == tmp_path
    src = _perturbed(create_model("tiny_video"))
    torch.save(src.state_dict(), tmp_path / "mine.pth")
    assert resolve_weights("mine.pth") == tmp_path / "mine.pth"
    assert _same_weights(src, create_model("tiny_video", pretrained="mine.pth"))


def test_missing_file_says_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("CINELAB_WEIGHTS", str(tmp_path / "cache"))
    with pytest.raises(MissingWeightsError) as err:
        create_model("r2plus1d_18", pretrained="r2plus1d_18-91a641e6.pth")
    text = str(err.value)
    assert "r2plus1d_18-91a641e6.pth" in text and "Kinetics-400" in text
    assert "download.pytorch.org" in text and "never downloads" in text
    assert str(tmp_path / "cache" / "r2plus1d_18-91a641e6.pth") in text
    assert "CINELAB_WEIGHTS" in text
    with pytest.raises(MissingWeightsError, match="ImageNet ResNet-50"):
        load_weights(nn.Linear(1, 1), "resnet50-0676ba61.pth")
    with pytest.raises(MissingWeightsError, match="EchoNet-Dynamic"):
        load_echonet_state(tmp_path / "deeplabv3_resnet50_random.pt")


def test_shape_mismatch_is_skipped_and_reported(tmp_path):
    src = _perturbed(create_model("tiny_video", num_outputs=400))  # a Kinetics-like head
    torch.save(src.state_dict(), tmp_path / "kinetics.pth")
    dst = create_model("tiny_video", num_outputs=1)
    head_before = dst.fc.weight.clone()
    report = load_weights(dst, tmp_path / "kinetics.pth")
    assert {k for k, _, _ in report.mismatched} == {"fc.weight", "fc.bias"}
    assert ("fc.weight", (400, 128), (1, 128)) in report.mismatched
    assert "fc.weight" in report.summary() and not report.complete
    assert torch.equal(dst.fc.weight, head_before)
    assert torch.equal(dst.features[3].weight, src.features[3].weight)
    with pytest.raises(InputError, match="strict"):
        load_weights(create_model("tiny_video"), tmp_path / "kinetics.pth", strict=True)


@pytest.mark.slow
def test_stem_is_adapted_to_one_channel(tmp_path):
    src = _perturbed(create_model("r2plus1d_18"))
    torch.save(src.state_dict(), tmp_path / "rgb.pth")
    gray = create_model("r2plus1d_18", in_channels=1)
    report = load_weights(gray, tmp_path / "rgb.pth")
    assert report.adapted == ["stem.0.weight"]
    torch.testing.assert_close(gray.stem[0].weight, src.stem[0].weight.sum(1, keepdim=True))


def test_unrelated_or_unreadable_files_raise(tmp_path):
    torch.save({"other.weight": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="no matching keys"):
        load_weights(create_model("tiny_video"), tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError):
        load_weights(create_model("tiny_video"), tmp_path / "junk.pt")
    torch.save({"epoch": 1}, tmp_path / "nostate.pt")
    with pytest.raises(InputError, match="state_dict"):
        load_weights(create_model("tiny_video"), tmp_path / "nostate.pt")


def test_strip_prefix_removes_one_level():
    state = {"module.a": 1, "module.model.b": 2, "c": 3}
    assert strip_prefix(state, ("module.",)) == {"a": 1, "model.b": 2, "c": 3}


@pytest.mark.slow
def test_echonet_segmentation_file_loads_into_registry_model(tmp_path):
    echonet = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, aux_loss=False)
    echonet.classifier[-1] = nn.Conv2d(echonet.classifier[-1].in_channels, 1, kernel_size=1)
    _perturbed(echonet)
    path = tmp_path / "deeplabv3_resnet50_random.pt"
    _echonet_file(path, echonet)

    state = load_echonet_state(path)
    assert not any(k.startswith("module.") for k in state)
    model = create_model("deeplabv3_resnet50")
    model.load_state_dict(state, strict=True)
    assert _same_weights(echonet, model)

    imported = load_echonet_model(path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), echonet.eval()(x)["out"])


@pytest.mark.slow
def test_echonet_ef_file_loads_into_registry_model(tmp_path):
    echonet = torchvision.models.video.r2plus1d_18(weights=None)
    echonet.fc = nn.Linear(echonet.fc.in_features, 1)
    _perturbed(echonet)
    path = tmp_path / "r2plus1d_18_32_2_pretrained.pt"
    # the EF script also stores frames, period and an np.float64 R^2
    _echonet_file(path, echonet, {"period": 2, "frames": 32, "r2": np.float64(0.81)})

    model = create_model("r2plus1d_18")
    model.load_state_dict(load_echonet_state(path), strict=True)
    assert _same_weights(echonet, model)
    assert _same_weights(echonet, load_echonet_model(path))
    assert _same_weights(echonet, create_model("r2plus1d_18", pretrained=path))


def test_echonet_import_rejects_a_wrong_model(tmp_path):
    path = tmp_path / "r2plus1d_18_32_2_pretrained.pt"
    _echonet_file(path, create_model("tiny_video"))
    with pytest.raises(InputError, match="state_dict"):
        load_echonet_model(path)
    with pytest.raises(InputError, match="model_name"):
        load_echonet_model(tmp_path / "renamed.pt")


def test_cinelab_checkpoint_loads_as_weights(tmp_path):
    from cinelab.train.checkpoint import InputSpec, save_checkpoint
    from cinelab.train.recipe import load_recipe, recipe_to_dict

    src = _perturbed(create_model("tiny_video"))
    recipe = recipe_to_dict(load_recipe("echonet-ef-cpu"))
    path = save_checkpoint(tmp_path / "model.pt", src, recipe,
                           InputSpec(task="video_regression", size=64, frames=16, period=2))
    dst = create_model("tiny_video")
    assert load_weights(dst, path).complete
    assert _same_weights(src, dst)
