"""EchoNet-Dynamic release files -> cinelab checkpoints (files written here in that format)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.video import r2plus1d_18

from cinelab.errors import InputError
from cinelab.pipelines.echonet.importers import import_echonet
from cinelab.train.checkpoint import load_checkpoint

MEAN = [32.0, 33.0, 34.0]
STD = [48.0, 49.0, 50.0]


def _echonet_save(model: nn.Module, path: Path) -> Path:
    """torch.save exactly as EchoNet-Dynamic's training scripts do (DataParallel keys)."""
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state, "opt_dict": {}, "scheduler_dict": {},
                "best_loss": 0.1, "loss": 0.1}, path)
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("echonet")
    seg = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=1,
                             aux_loss=False).eval()
    ef = r2plus1d_18(weights=None)
    ef.fc = nn.Linear(512, 1)
    ef.eval()
    return {"seg": seg, "ef": ef,
            "seg_path": _echonet_save(seg, root / "deeplabv3_resnet50_random.pt"),
            "ef_path": _echonet_save(ef, root / "r2plus1d_18_32_2_pretrained.pt")}


@pytest.mark.slow
def test_import_both_gives_identical_outputs(release: dict, tmp_path: Path) -> None:
    out = import_echonet(release["seg_path"], release["ef_path"], tmp_path / "ckpt",
                         mean=MEAN, std=STD)
    assert out == {"echonet-seg": tmp_path / "ckpt" / "echonet-seg.pt",
                   "echonet-ef": tmp_path / "ckpt" / "echonet-ef.pt"}

    seg = load_checkpoint(out["echonet-seg"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, found = release["seg"](x)["out"], seg.model(x)
    assert torch.equal(found, expected)
    assert seg.input_spec.task == "segmentation"
    assert (seg.input_spec.size, seg.input_spec.channels) == (112, 3)
    assert seg.input_spec.mean == MEAN and seg.input_spec.std == STD
    assert seg.recipe["name"] == "echonet-seg"
    assert seg.info["extra"]["source_file"].endswith("deeplabv3_resnet50_random.pt")

    ef = load_checkpoint(out["echonet-ef"])
    clip = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(ef.model(clip), release["ef"](clip))
    spec = ef.input_spec
    assert (spec.task, spec.frames, spec.period, spec.target) == ("video_regression", 32, 2, "EF")
    assert ef.recipe["name"] == "echonet-ef"
    assert (ef.recipe["data"]["frames"], ef.recipe["data"]["period"]) == (32, 2)


def test_import_one_file_with_single_value_stats(release: dict, tmp_path: Path) -> None:
    out = import_echonet(None, release["ef_path"], tmp_path, frames=16, period=4,
                         mean=[30.0], std=[50.0])
    assert list(out) == ["echonet-ef"]
    spec = load_checkpoint(out["echonet-ef"]).input_spec
    assert (spec.frames, spec.period, spec.mean, spec.std) == (16, 4, [30.0] * 3, [50.0] * 3)


def test_import_requires_stats_and_a_file(release: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mean/std"):
        import_echonet(release["seg_path"], None, tmp_path)
    with pytest.raises(InputError, match="std"):
        import_echonet(release["seg_path"], None, tmp_path, mean=MEAN, std=[1.0, 0.0, 1.0])
    with pytest.raises(InputError, match="at least one"):
        import_echonet(None, None, tmp_path, mean=MEAN, std=STD)
    assert not list(tmp_path.iterdir())


def test_import_wrong_architecture_is_refused(release: dict, tmp_path: Path) -> None:
    wrong = _echonet_save(nn.Linear(3, 1), tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="state_dict"):
        import_echonet(None, wrong, tmp_path / "out", mean=MEAN, std=STD)
    assert not (tmp_path / "out" / "echonet-ef.pt").exists()
