"""two_stream: forward/backward for every fusion, streams reading only their channels, and
transfer of pretrained streams (every tensor that fits loaded, heads re-initialised)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cinelab.models import create_model, output_layer
from cinelab.models.fusion import FUSIONS, parse_stream_weights
from cinelab.train.checkpoint import InputSpec, save_checkpoint

SHAPE = (2, 3, 8, 16, 16)  # B, grey + dx + dy, T, H, W
TINY = {"backbone": "tiny_video", "backbone_kwargs": {"channels": [4, 8]}}


def _model(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("two_stream", **{**TINY, **kw})


@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_backward_every_fusion(fusion: str) -> None:
    model = _model(fusion=fusion).train()
    out = model(torch.randn(SHAPE))
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == (["fusion.weight", "fusion.bias"] if fusion == "mean_logit" else [])


def test_mean_prob_is_the_average_of_stream_probabilities() -> None:
    model = _model(fusion="mean_prob").eval()
    x = torch.randn(SHAPE)
    with torch.no_grad():
        streams = model.stream_outputs(x)
        fused = model(x)
    expected = (streams["grey"].sigmoid() + streams["flow"].sigmoid()) / 2
    torch.testing.assert_close(fused.sigmoid(), expected, atol=1e-5, rtol=1e-4)


def test_learned_fusion_starts_as_the_mean_of_logits_and_is_the_head() -> None:
    model = _model(fusion="learned").eval()
    x = torch.randn(SHAPE)
    with torch.no_grad():
        streams = model.stream_outputs(x)
        torch.testing.assert_close(model(x), (streams["grey"] + streams["flow"]) / 2)
    assert output_layer(model) is model.fusion
    assert output_layer(_model(fusion="features")).in_features == 2 * 8


def test_a_stream_reads_only_its_channels() -> None:
    grey = _model(streams=["grey"]).eval()
    flow = _model(streams=["flow"]).eval()
    x = torch.randn(SHAPE)
    y = x.clone()
    y[:, 1:] = torch.randn(2, 2, *SHAPE[2:])  # new flow, same grey
    with torch.no_grad():
        torch.testing.assert_close(grey(x), grey(y))
        assert not torch.allclose(flow(x), flow(y))
    assert grey.active_streams == ("grey",) and list(grey.streams) == ["grey"]


def test_monai_resnet_streams() -> None:
    model = _model(backbone="resnet3d_10", backbone_kwargs={}, fusion="mean_prob").eval()
    with torch.no_grad():  # backward through MONAI ResNets: tests/models/test_models.py
        out = model(torch.randn(1, 3, 4, 16, 16))  # eval: BatchNorm takes a batch of one
    assert out.shape == (1, 1) and torch.isfinite(out).all()
    assert model.streams["flow"].conv1.in_channels == 2
    assert model.streams["grey"].conv1.in_channels == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="fusion"):
        _model(fusion="max")
    with pytest.raises(ValueError, match="streams"):
        _model(streams=["rgb"])
    with pytest.raises(ValueError, match="in_channels"):
        _model(in_channels=1)
    with pytest.raises(ValueError, match="backbone"):
        _model(backbone={"grey": "tiny_video"})
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        _model()(torch.randn(2, 1, 8, 16, 16))
    assert parse_stream_weights("grey=a.pt;flow=b.pt") == {"grey": "a.pt", "flow": "b.pt"}
    assert parse_stream_weights("model.pt") is None
    with pytest.raises(ValueError, match="grey=<file>"):
        parse_stream_weights("rgb=a.pt")


def _pretrained_stream(tmp_path: Path, name: str = "grey_ef.pt") -> tuple[Path, dict]:
    """A single-stream grey model saved as a cinelab checkpoint (as `cinelab train` does)."""
    torch.manual_seed(1)
    model = create_model("tiny_video", in_channels=1, num_outputs=1, channels=[4, 8])
    recipe = {"model": {"name": "tiny_video", "kwargs": {"in_channels": 1}}}
    path = save_checkpoint(tmp_path / name, model, recipe,
                           InputSpec(task="video_regression", size=16, channels=1))
    return path, model.state_dict()


def test_transfer_loads_the_pretrained_stream_and_reinitialises_its_head(tmp_path: Path
                                                                         ) -> None:
    path, source = _pretrained_stream(tmp_path)
    fresh = _model().streams["grey"].state_dict()
    model = _model(pretrained=str(path))
    grey = model.streams["grey"].state_dict()
    for key, value in source.items():
        if key.startswith("fc."):  # head re-initialised: as built, not the file's
            torch.testing.assert_close(grey[key], fresh[key])
            assert not torch.equal(grey[key], value)
        else:
            torch.testing.assert_close(grey[key], value, msg=key)
    flow = model.streams["flow"].state_dict()
    stem = "features.0.weight"
    assert flow[stem].shape[1] == 2 and source[stem].shape[1] == 1  # stem adapted 1 -> 2
    torch.testing.assert_close(flow["features.3.weight"], source["features.3.weight"])


def test_transfer_per_stream_mapping_and_whole_checkpoints(tmp_path: Path) -> None:
    grey_path, grey_state = _pretrained_stream(tmp_path, "grey.pt")
    model = _model(pretrained=f"grey={grey_path}")
    torch.testing.assert_close(model.streams["grey"].state_dict()["features.3.weight"],
                               grey_state["features.3.weight"])
    assert not torch.equal(model.streams["flow"].state_dict()["features.3.weight"],
                           grey_state["features.3.weight"])
    whole = tmp_path / "two.pt"
    torch.save(model.state_dict(), whole)
    again = _model(pretrained=str(whole))  # a two-stream file loads whole, heads included
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, msg=key)
    with pytest.raises(ValueError, match="not in this model's streams"):
        _model(streams=["grey"], pretrained=f"flow={grey_path}")
