"""RVF stream pretraining, both stages and both streams (issue 14): a local Kinetics-format
file -> EF regression on grey clips and on flow clips of an EchoNet-like store -> each stream
of the two-stream classifier."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import STORE_FORMAT, PreparedStore, write_sample
from cinelab.errors import InputError
from cinelab.models import create_model
from cinelab.models.weights import _adapt_channels
from cinelab.pipelines.rvf.pretrain import PRETRAINED_FILE, pretrain_streams, read_pretrained
from cinelab.prep.flow import prepare_flow
from cinelab.train.checkpoint import load_checkpoint
from cinelab.train.fit import build_task
from cinelab.train.recipe import load_recipe
from cinelab.utils import read_json, write_json

SIZE, FRAMES, CHANNELS = 32, 8, [4, 8]
TINY = ["model.kwargs.channels=[4, 8]", "data.size=32", "data.frames=4", "data.period=2",
        "data.batch_size=2", "data.pad=2", "trainer.max_epochs=1"]


def _ef_store(root: Path, flow: bool = True, channels: int = 1) -> Path:
    """A greyscale EchoNet-like store: a disc beating with an EF-dependent amplitude."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    rows = []
    for i, (ef, split) in enumerate(zip([35.0, 50.0, 65.0, 45.0, 60.0, 55.0],
                                        ["train"] * 4 + ["val"] * 2, strict=True)):
        radius = 10 * (1 - ef / 200 * (1 - np.cos(np.linspace(0, 2 * np.pi, FRAMES))) / 2)
        frames = np.stack([(r < rad) * 200 + 20 for rad in radius]).astype(np.uint8)
        frames = np.stack([frames, frames // 2, frames // 4][:channels], axis=-1)
        write_sample(root, f"e{i}", frames, {"source_hash": str(i)})
        rows.append({"sample_id": f"e{i}", "patient_id": f"p{i}", "path": f"e{i}.avi",
                     "split": split, "EF": ef})
    write_manifest(new_manifest(rows), root / "manifest.csv")
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "mean": [60.0] * channels, "std": [70.0] * channels,
                                     "spec": {}})
    if flow:
        prepare_flow(root, "farneback", workers=1)
    return root


def _kinetics_file(path: Path) -> Path:
    """A Kinetics-400-format file: an RGB network's raw state_dict with a 400-class head."""
    torch.manual_seed(3)
    torch.save(create_model("tiny_video", in_channels=3, num_outputs=400,
                            channels=CHANNELS).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ef_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _ef_store(tmp_path_factory.mktemp("ef") / "store")


@pytest.mark.parametrize(("stream", "channels"), [("grey", 1), ("flow", 2)])
def test_kinetics_weights_start_each_ef_stream(ef_store: Path, tmp_path: Path, stream: str,
                                               channels: int) -> None:
    kinetics = torch.load(_kinetics_file(tmp_path / "k400.pth"))
    recipe = load_recipe("rvf-stream-pretrain-cpu", TINY + [
        f"model.kwargs.in_channels={channels}", f"model.pretrained={tmp_path / 'k400.pth'}"])
    setup = build_task(recipe, PreparedStore(ef_store))
    state = setup.module.model.state_dict()
    torch.testing.assert_close(state["features.0.weight"],
                               _adapt_channels(kinetics["features.0.weight"], channels))
    for key, value in kinetics.items():
        if not key.startswith(("fc.", "features.0.weight")):
            torch.testing.assert_close(state[key], value, msg=key)
    assert state["fc.weight"].shape == (1, CHANNELS[-1])  # the 400-class head is dropped
    clip, target = setup.train[0]
    assert clip.shape == (channels, 4, SIZE, SIZE) and float(target) == 35.0
    assert len(setup.input_spec.mean) == channels
    if stream == "flow":  # grey on a grey store: the frames as stored
        assert setup.extra["streams"] == {"layout": ["flow"], "active": ["flow"]}


def test_flow_regression_needs_flow_in_the_store(tmp_path: Path) -> None:
    store = _ef_store(tmp_path / "noflow", flow=False)
    recipe = load_recipe("rvf-stream-pretrain-cpu", TINY + ["model.kwargs.in_channels=2"])
    with pytest.raises(InputError) as err:
        build_task(recipe, PreparedStore(store))
    assert err.value.field == "flow" and "4 sample(s) without flow" in str(err.value.found)
    grey = build_task(load_recipe("rvf-stream-pretrain-cpu", TINY), PreparedStore(store))
    assert "streams" not in grey.extra  # a 1-channel model on a grey store: frames as stored


def test_grey_stream_on_an_rgb_ef_store_averages_the_colours(tmp_path: Path) -> None:
    store = PreparedStore(_ef_store(tmp_path / "rgb", flow=False, channels=3))
    setup = build_task(load_recipe("rvf-stream-pretrain-cpu", TINY), store)
    assert setup.extra["streams"] == {"layout": ["grey"], "active": ["grey"]}
    clip, _ = setup.val[0]  # the middle clip of e4
    rgb = np.asarray(store.frames("e4"), np.float32)
    idx = setup.val.clip_start("e4", rgb.shape[0]) + np.arange(4) * 2
    np.testing.assert_array_equal(clip[0].numpy(), np.rint(rgb[idx].mean(-1)))
    assert setup.input_spec.channels == 1


def test_cli_trains_the_flow_stream_on_ef(ef_store: Path, tmp_path: Path) -> None:
    """The command of issue 14 that gave a raw traceback."""
    result = CliRunner().invoke(app, [
        "train", "rvf-stream-pretrain-cpu", "--data", str(ef_store), "--out",
        str(tmp_path / "run"), "--set", "model.kwargs.in_channels=2",
        *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(tmp_path / "run" / "model.pt")
    assert loaded.model.features[0].weight.shape[1] == 2
    assert loaded.input_spec.channels == 2 and loaded.input_spec.target == "EF"


def test_two_stage_pretraining_of_both_streams_transfers(ef_store: Path,
                                                         tmp_path: Path) -> None:
    kinetics = _kinetics_file(tmp_path / "k400.pth")
    result = pretrain_streams(ef_store, tmp_path / "pre", kinetics=kinetics, overrides=TINY)
    grey, flow = (load_checkpoint(result[s]).model.state_dict() for s in ("grey", "flow"))
    assert grey["features.0.weight"].shape[1] == 1 and flow["features.0.weight"].shape[1] == 2
    k400 = torch.load(kinetics)
    assert not torch.equal(grey["features.3.weight"], k400["features.3.weight"])  # trained
    spec = read_pretrained(tmp_path / "pre")
    assert spec == f"grey={result['grey']};flow={result['flow']}"
    assert read_json(tmp_path / "pre" / PRETRAINED_FILE)["kinetics"] == str(kinetics)
    recipe = load_recipe("rvf-twostream-cpu", [
        "data.size=32", "data.frames=4", "data.period=2", "data.batch_size=2",
        "model.kwargs.backbone_kwargs={channels: [4, 8]}", f"model.pretrained={spec}"])
    model = build_task(recipe, PreparedStore(_classified(ef_store, tmp_path))).module.model
    for name, pretrained in (("grey", grey), ("flow", flow)):
        stream = model.streams[name].state_dict()
        for key, value in pretrained.items():
            if key.startswith("fc."):
                continue  # heads re-initialised
            torch.testing.assert_close(stream[key], value, msg=f"{name}.{key}")
    again = pretrain_streams(ef_store, tmp_path / "pre", kinetics=kinetics, overrides=TINY)
    assert again == result  # resumable: both streams kept
    cli = CliRunner().invoke(app, ["rvf", "pretrain", str(ef_store), "--out",
                                   str(tmp_path / "cli"), "--stream", "flow",
                                   *[a for s in TINY for a in ("--set", s)]])
    assert cli.exit_code == 0, cli.output
    assert read_pretrained(tmp_path / "cli") == f"flow={tmp_path / 'cli' / 'flow' / 'model.pt'}"
    bad = CliRunner().invoke(app, ["rvf", "pretrain", str(ef_store), "--out",
                                   str(tmp_path / "bad"), "--kinetics", str(tmp_path / "no.pth")])
    assert bad.exit_code == 2 and "kinetics" in bad.output and "Traceback" not in bad.output


def _classified(store: Path, tmp_path: Path) -> Path:
    """The EF store relabelled as a binary classification store (EF < 50 -> 1)."""
    out = tmp_path / "cls"
    shutil.copytree(store, out)
    m = PreparedStore(out).manifest.copy()
    m["label"] = (m["EF"] < 50).astype(int)
    write_manifest(m, out / "manifest.csv")
    return out


def test_paper_format_kinetics_resnet_loads_into_a_flow_stream(tmp_path: Path) -> None:
    """The paper's backbones: Kinetics 3D ResNets saved by 3D-ResNets-PyTorch (Hara et al.:
    {"arch", "state_dict": {"module.conv1.weight", ...}}, RGB, 400 classes) into a MONAI 3D
    ResNet stream with 2 (flow) input channels."""
    torch.manual_seed(1)
    rgb = create_model("resnet3d_10", in_channels=3, num_outputs=400).state_dict()
    torch.save({"arch": "resnet-10", "epoch": 200,
                "state_dict": {f"module.{k}": v for k, v in rgb.items()}}, tmp_path / "k.pth")
    flow = create_model("resnet3d_10", in_channels=2, num_outputs=1,
                        pretrained=str(tmp_path / "k.pth")).state_dict()
    torch.testing.assert_close(flow["conv1.weight"], _adapt_channels(rgb["conv1.weight"], 2))
    torch.testing.assert_close(flow["layer4.0.conv2.weight"], rgb["layer4.0.conv2.weight"])
    assert flow["fc.weight"].shape == (1, rgb["fc.weight"].shape[1])
