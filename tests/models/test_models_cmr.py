"""CMR U-Nets: ImageNet encoder files load into the encoder (stem adapted to 1 channel),
whole-model checkpoints load everywhere (double transfer), odd input sizes, clear errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet34
from torchvision.models.vgg import cfgs, make_layers

from cinelab.errors import MissingWeightsError
from cinelab.models import create_model
from cinelab.train.checkpoint import InputSpec, save_checkpoint


def test_resnet34_imagenet_file_loads_into_the_encoder(tmp_path):
    torch.manual_seed(0)
    tv = resnet34()
    torch.save(tv.state_dict(), tmp_path / "resnet34.pth")
    model = create_model("unet_resnet34", in_channels=1, out_channels=3,
                         pretrained=str(tmp_path / "resnet34.pth"))
    enc = model.encoder.state_dict()
    for key, value in tv.state_dict().items():
        if key == "conv1.weight":  # adapted to one channel: the RGB kernels summed
            torch.testing.assert_close(enc[key][:, 0], value.sum(1))
        elif not key.startswith("fc."):
            torch.testing.assert_close(enc[key], value)


@pytest.mark.slow
def test_vgg16_imagenet_features_load(tmp_path):
    torch.manual_seed(0)
    features = make_layers(cfgs["D"], batch_norm=True)  # vgg16_bn without its classifier
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save(state, tmp_path / "vgg16_bn.pth")
    model = create_model("unet_vgg16", in_channels=3, out_channels=2,
                         pretrained=str(tmp_path / "vgg16_bn.pth"))
    torch.testing.assert_close(model.encoder.features[40].weight, features[40].weight)
    torch.testing.assert_close(model.encoder.features[0].weight, features[0].weight)


@pytest.mark.slow
def test_whole_model_checkpoint_loads_every_tensor_that_fits(tmp_path):
    torch.manual_seed(1)
    source = create_model("unet_resnet34", in_channels=1, out_channels=4)
    save_checkpoint(tmp_path / "model.pt", source, {"model": {"name": "unet_resnet34"}},
                    InputSpec("image_segmentation", 64, 1))
    same = create_model("unet_resnet34", in_channels=1, out_channels=4,
                        pretrained=str(tmp_path / "model.pt"))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(same.state_dict()[key], value)
    fewer = create_model("unet_resnet34", in_channels=1, out_channels=2,
                         pretrained=str(tmp_path / "model.pt"))  # new head: classes differ
    torch.testing.assert_close(fewer.encoder.layer4[2].conv2.weight,
                               source.encoder.layer4[2].conv2.weight)
    assert fewer.segmentation_head[0].weight.shape[0] == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet_resnet34", "unet_vgg16"])
def test_any_input_size(name):
    model = create_model(name, in_channels=1, out_channels=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 50, 70)).shape == (1, 4, 50, 70)


def test_missing_imagenet_file_says_what_to_put_where(tmp_path):
    with pytest.raises(MissingWeightsError, match="resnet34-b627a593.pth"):
        create_model("unet_resnet34", pretrained=str(tmp_path / "resnet34-b627a593.pth"))
    with pytest.raises(ValueError, match="out_channels"):
        create_model("unet_resnet50", out_channels=0)
