"""The rvf recipes' video_classification training: stream clips from the store, class
imbalance, one epoch of two-stream training on a tiny synthetic RVF store with flow, a
pretrained stream carried into training (moved here from tests/train)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import STORE_FORMAT, PreparedStore, write_sample
from cinelab.data.streams import (
    StreamClipDataset,
    model_streams,
    stream_clip,
    stream_normalisation,
)
from cinelab.errors import InputError
from cinelab.models import create_model
from cinelab.pipelines.rvf.commands import prepare_rvf
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.prep.flow import read_flow
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint
from cinelab.train.fit import build_task, fit
from cinelab.train.recipe import load_recipe
from cinelab.train.tasks.video_classification import pos_weight_of
from cinelab.utils import write_json

SIZE, FRAMES = 32, 12
TINY = ["data.size=32", "data.frames=4", "data.period=2", "data.batch_size=4", "data.pad=2",
        "model.kwargs.backbone_kwargs={channels: [4, 8]}", "trainer.max_epochs=1",
        "data.clips=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rvf_train")
    raw = synth_rvf_cohort(base / "raw", n=10, seed=2, size=48, frames=FRAMES)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", base / "ingest")
    prepare_rvf(base / "ingest", base / "store", size=SIZE, workers=1)
    return base / "store"


def test_stream_clips_align_grey_and_flow(store: Path) -> None:
    s = PreparedStore(store)
    sid = s.ids[0]
    idx = np.array([3, 5, 7])
    clip = stream_clip(s, sid, idx, ("grey", "flow"), ("grey", "flow"))
    assert clip.shape == (3, 3, SIZE, SIZE) and clip.dtype == np.float32
    np.testing.assert_array_equal(clip[0], np.asarray(s.frames(sid))[idx, ..., 0])
    np.testing.assert_allclose(np.moveaxis(clip[1:], 0, -1), read_flow(store, sid)[idx])
    grey_only = stream_clip(s, sid, idx, ("grey", "flow"), ("grey",))
    assert not grey_only[1:].any()  # an inactive stream is zeros, never read


def test_dataset_balances_classes_and_needs_flow(store: Path, tmp_path: Path) -> None:
    s = PreparedStore(store)
    ids = s.ids
    ds = StreamClipDataset(s, ids, 4, 2, balance=True, seed=0)
    drawn = []
    for epoch in range(30):
        ds.set_epoch(epoch)
        drawn += [ds.targets[i] for i in ds.order]
    assert abs(np.mean(drawn) - 0.5) < 0.06  # labels are about 40 % positive
    clip, target = ds[0]
    assert clip.shape == (3, 4, SIZE, SIZE) and target.item() in (0.0, 1.0)
    pos = float(ds.targets.sum())
    assert pos_weight_of("balanced", ds.targets) == pytest.approx((len(ids) - pos) / pos)
    assert pos_weight_of(None, ds.targets) is None
    with pytest.raises(InputError, match="pos_weight"):
        pos_weight_of("heavy", ds.targets)
    for f in store.glob("samples/*.flow.json"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
        f.unlink()
    try:
        with pytest.raises(InputError, match="cinelab rvf flow"):
            StreamClipDataset(s, ids, 4, 2)
        assert StreamClipDataset(s, ids, 4, 2, active=("grey",))[0][0].shape[0] == 3
    finally:
        for f in tmp_path.glob("*.flow.json"):
            (store / "samples" / f.name).write_bytes(f.read_bytes())


def test_model_streams_and_normalisation(store: Path) -> None:
    two = create_model("two_stream", streams=["flow"])
    assert model_streams(two) == (("grey", "flow"), ("flow",))
    assert model_streams(create_model("tiny_video", in_channels=1)) == (("grey",), ("grey",))
    s = PreparedStore(store)
    mean, std = stream_normalisation(s, s.ids, ("grey", "flow"), ("grey", "flow"))
    assert mean[1:] == [0.0, 0.0] and std[1] == std[2] > 0
    assert mean[0] == pytest.approx(float(s.mean[0]))


def test_one_epoch_two_stream_and_checkpoint(store: Path, tmp_path: Path) -> None:
    recipe = load_recipe("rvf-twostream-cpu", TINY + ["data.augment={sampler: balanced}"])
    result = fit(recipe, store, tmp_path / "run", progress=False)
    assert result.metrics["monitor"] == "val/loss" and result.metrics["epochs"] == 1
    loaded = load_checkpoint(result.best_checkpoint)
    spec = loaded.input_spec
    assert (spec.task, spec.channels, spec.frames, spec.target) == \
        ("video_classification", 3, 4, "label")
    assert spec.mean[1:] == [0.0, 0.0] and spec.std[1] > 0
    extra = loaded.info["extra"]
    assert extra["streams"] == {"layout": ["grey", "flow"], "active": ["grey", "flow"]}
    train = PreparedStore(store).manifest.query("split == 'train'")["label"]
    assert extra["class_names"] == ["noRVF", "RVF"]
    assert extra["pos_weight"] == pytest.approx((train == 0).sum() / (train == 1).sum())
    assert model_streams(loaded.model) == (("grey", "flow"), ("grey", "flow"))


def test_single_stream_baseline_and_pretrained_stream_in_training(store: Path,
                                                                  tmp_path: Path) -> None:
    torch.manual_seed(3)
    grey = create_model("tiny_video", in_channels=1, channels=[4, 8])
    path = save_checkpoint(tmp_path / "grey.pt", grey, {"model": {"name": "tiny_video"}},
                           InputSpec(task="video_regression", size=SIZE, channels=1))
    recipe = load_recipe("rvf-twostream-cpu", TINY + ["model.kwargs.streams=[grey]",
                                                      f"model.pretrained={path}"])
    setup = build_task(recipe, PreparedStore(store))
    loaded = setup.module.model.streams["grey"].state_dict()
    torch.testing.assert_close(loaded["features.3.weight"], grey.state_dict()["features.3.weight"])
    assert setup.train.active == ("grey",) and setup.input_spec.channels == 3
    plain = load_recipe("rvf-twostream-cpu", TINY + ["model.name=tiny_video",
                                                     "model.kwargs={in_channels: 2}"])
    flow_setup = build_task(plain, PreparedStore(store))
    assert flow_setup.train.layout == ("flow",) and len(flow_setup.input_spec.mean) == 2


def _grey_ef_store(root: Path) -> Path:
    """A greyscale EchoNet-like store (frames + EF), as `cinelab prepare --channels 1` makes."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (ef, split) in enumerate(zip([40.0, 55.0, 70.0, 60.0], ["train", "train", "val",
                                                                   "train"], strict=True)):
        frames = rng.integers(0, 255, (8, SIZE, SIZE, 1), dtype=np.uint8)
        write_sample(root, f"e{i}", frames, {"source_hash": str(i)})
        rows.append({"sample_id": f"e{i}", "patient_id": f"p{i}", "path": f"e{i}.avi",
                     "split": split, "EF": ef})
    write_manifest(new_manifest(rows), root / "manifest.csv")
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "mean": [100.0], "std": [50.0], "spec": {}})
    return root


def test_ef_pretrained_grey_stream_transfers_into_the_classifier(store: Path,
                                                                 tmp_path: Path) -> None:
    ef_recipe = load_recipe("rvf-stream-pretrain-cpu", [
        "model.kwargs.channels=[4, 8]", "data.size=32", "data.frames=4", "data.period=2",
        "data.batch_size=2", "data.pad=2", "trainer.max_epochs=1"])
    assert ef_recipe.model.kwargs["in_channels"] == 1 and ef_recipe.data.target == "EF"
    ef = fit(ef_recipe, _grey_ef_store(tmp_path / "ef_store"), tmp_path / "ef", progress=False)
    pretrained = load_checkpoint(ef.best_checkpoint).model.state_dict()
    recipe = load_recipe("rvf-twostream-cpu", TINY + [f"model.pretrained={ef.best_checkpoint}"])
    model = build_task(recipe, PreparedStore(store)).module.model
    for name in ("grey", "flow"):
        stream = model.streams[name].state_dict()
        for key, value in pretrained.items():
            if key.startswith("fc."):
                assert not torch.equal(stream[key], value)  # head re-initialised
            elif key != "features.0.weight" or name == "grey":
                torch.testing.assert_close(stream[key], value, msg=f"{name}.{key}")
    assert model.streams["flow"].state_dict()["features.0.weight"].shape[1] == 2


@pytest.mark.parametrize("name", ["rvf-twostream", "rvf-twostream-cpu"])
def test_rvf_recipes(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.task == "video_classification" and recipe.model.name == "two_stream"
    assert recipe.model.kwargs["streams"] == ["grey", "flow"]
    assert recipe.loss.kwargs["pos_weight"] == "balanced" and recipe.data.clips == 10
    if name == "rvf-twostream":
        assert recipe.model.kwargs["backbone"] == "resnet3d_152" and recipe.data.frames == 32


def test_stream_weight_adds_each_streams_own_loss(store: Path) -> None:
    recipe = load_recipe("rvf-twostream-cpu", TINY + ["loss.kwargs.stream_weight=0.5"])
    setup = build_task(recipe, PreparedStore(store))
    module = setup.module.eval()  # the same clips (no translation, batch-norm statistics)
    module.translate = None
    clips, target = next(iter(DataLoader(setup.train, batch_size=4)))
    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached here
        loss = module.training_step((clips, target), 0)
    x, _ = module.prepare_batch((clips, target))
    outs = module.model.stream_outputs(x)
    fused = module.loss_fn(module.model.fuse(outs)[:, 0], target)
    own = torch.stack([module.loss_fn(o[:, 0], target) for o in outs.values()]).mean()
    torch.testing.assert_close(loss, fused + 0.5 * own)
    features = load_recipe("rvf-twostream-cpu", TINY + ["loss.kwargs.stream_weight=0.5",
                                                        "model.kwargs.fusion=features"])
    with pytest.raises(InputError, match="stream_weight"):
        build_task(features, PreparedStore(store))
