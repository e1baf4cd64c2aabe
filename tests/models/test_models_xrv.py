"""torchxrayvision weights (torchvision key format, 1-channel stem, 18 outputs) -> timm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.errors import InputError
from cinelab.models.classification import build_timm_classifier
from cinelab.models.weights import load_weights
from cinelab.models.xrv import import_torchxrayvision

PATHOLOGIES = 18


def _xrv_densenet_file(path: Path, legacy: bool = False) -> dict[str, torch.Tensor]:
    """What ``torch.save(xrv.models.DenseNet(...).state_dict())`` holds: torchvision's
    DenseNet-121 names, a 1-channel conv0, an 18-output classifier, op_threshs."""
    torch.manual_seed(0)
    net = torchvision.models.densenet121(num_classes=PATHOLOGIES)
    net.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    state = dict(net.state_dict())
    state["op_threshs"] = torch.rand(PATHOLOGIES)
    if legacy:  # torchvision's old names: denselayer1.norm.1.weight
        state = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
                 for k, v in state.items()}
    torch.save(state, path)
    return dict(net.state_dict())


def test_densenet_maps_onto_timm_exactly(tmp_path):
    original = _xrv_densenet_file(tmp_path / "xrv.pt")
    out = import_torchxrayvision(tmp_path / "xrv.pt", tmp_path / "dense.pt")
    saved = torch.load(out, weights_only=True)
    assert saved["meta"]["num_outputs"] == PATHOLOGIES and len(saved["meta"]["op_threshs"]) == 18
    model = build_timm_classifier("densenet121", num_outputs=PATHOLOGIES, in_channels=1)
    report = load_weights(model, out)
    assert not report.mismatched and not report.missing and not report.unexpected
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key


@pytest.mark.slow
def test_legacy_names_resnet_prefix_and_wrong_arch(tmp_path):
    _xrv_densenet_file(tmp_path / "old.pt", legacy=True)
    import_torchxrayvision(tmp_path / "old.pt", tmp_path / "dense.pt")
    resnet = torchvision.models.resnet50(num_classes=PATHOLOGIES)
    resnet.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save({f"model.{k}": v for k, v in resnet.state_dict().items()}, tmp_path / "r.pt")
    out = import_torchxrayvision(tmp_path / "r.pt", tmp_path / "res.pt", arch="resnet50")
    binary = build_timm_classifier("resnet50", num_outputs=1, in_channels=1)
    report = load_weights(binary, out)  # the 18-pathology head does not fit a binary one
    assert {k for k, *_ in report.mismatched} == {"fc.weight", "fc.bias"}
    assert torch.equal(binary.state_dict()["layer4.2.conv3.weight"],
                       resnet.state_dict()["layer4.2.conv3.weight"])
    with pytest.raises(InputError, match="densenet121"):
        import_torchxrayvision(tmp_path / "r.pt", tmp_path / "x.pt", arch="densenet121")


def test_cli_import(tmp_path):
    _xrv_densenet_file(tmp_path / "xrv.pt")
    run = CliRunner().invoke(app, ["import", "torchxrayvision", str(tmp_path / "xrv.pt"),
                                   "--out", str(tmp_path / "w.pt")])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "w.pt").is_file() and "ensemble.pretrained.densenet121" in run.output
