"""Transfer learning: a checkpoint really is the start, the encoder really stays frozen, a
subset uses exactly the requested images, data-requirement curves, store views."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models.resnet import BasicBlock, ResNet, resnet34

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError, MissingWeightsError
from cinelab.models import create_model
from cinelab.models.cmr_unet import EncoderUNet, ResNetFeatures
from cinelab.pipelines.cmr.acdc import read_acdc
from cinelab.pipelines.cmr.prepare import prepare_cmr
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.train import transfer
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from cinelab.train.curve import data_requirement_curve
from cinelab.train.fit import build_task, fit
from cinelab.train.recipe import load_recipe
from cinelab.train.transfer import (
    FreezeEncoder,
    store_view,
    subset_ids,
    subset_items,
)

SIZE = 32
SMALL = [f"data.size={SIZE}", "data.batch_size=8", "trainer.max_epochs=1",
         "trainer.val_every=1",
         "model.kwargs.channels=[8, 16, 32]", "model.kwargs.strides=[2, 2]"]
RESNET = [f"data.size={SIZE}", "data.batch_size=8", "model.name=unet_resnet34",
          "model.kwargs={in_channels: 1, out_channels: 4, decoder_channels: [16, 16, 8, 8, 8]}",
          "data.augment={}", "trainer.val_every=1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    cohort = synth_cmr_cohort(root / "synth", n=4, seed=2, layout="acdc", size=(40, 36),
                              n_frames=4)
    manifest, _ = read_acdc(cohort.acdc_root)
    prepare_cmr(manifest, root / "store", size=SIZE, workers=1)
    return PreparedStore(root / "store")


def _checkpoint(path, name="unet_resnet34", **kwargs):
    torch.manual_seed(7)
    model = create_model(name, **kwargs)
    save_checkpoint(path, model, {"model": {"name": name, "kwargs": kwargs}},
                    InputSpec("image_segmentation", SIZE, 1))
    return model


@pytest.mark.slow
def test_transfer_starts_from_the_checkpoint_weights(store, tmp_path):
    source = _checkpoint(tmp_path / "dsb.pt", in_channels=1, out_channels=4,
                         decoder_channels=[16, 16, 8, 8, 8])
    recipe = load_recipe("cmr-seg-cpu", RESNET + [f"model.pretrained={tmp_path / 'dsb.pt'}"])
    setup = build_task(recipe, store)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(setup.module.model.state_dict()[key], value)
    report = setup.extra["start_weights"]
    assert report["loaded"] == len(source.state_dict()) and not report["mismatched"]


def test_transfer_to_fewer_classes_reports_the_head(store, tmp_path):
    _checkpoint(tmp_path / "dsb.pt", in_channels=1, out_channels=4,
                decoder_channels=[16, 16, 8, 8, 8])
    recipe = load_recipe("cmr-seg-cpu", RESNET + [
        f"model.pretrained={tmp_path / 'dsb.pt'}", "data.classes={LV: 3, MYO: 2}",
        "model.kwargs.out_channels=3"])
    report = build_task(recipe, store).extra["start_weights"]
    assert {m[0] for m in report["mismatched"]} == {"segmentation_head.0.weight",
                                                    "segmentation_head.0.bias"}


def _encoder_decoder(state, prefix="model."):
    enc = {k: v for k, v in state.items() if k.startswith(prefix + "encoder.")}
    dec = {k: v for k, v in state.items() if k.startswith(prefix + "decoder.")}
    return enc, dec


def _small_resnet_unet(**kwargs):
    """A U-Net with a one-block-per-stage torchvision ResNet encoder (fast to checkpoint)."""
    torch.manual_seed(7)
    net = ResNet(BasicBlock, [1, 1, 1, 1])
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return EncoderUNet(ResNetFeatures(net), 4, [16, 16, 8, 8, 8])


@pytest.mark.slow
def test_frozen_encoder_is_unchanged_then_trains(store, tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "create_model", lambda name, **kw: _small_resnet_unet())
    start = _small_resnet_unet()
    save_checkpoint(tmp_path / "start.pt", start, {}, InputSpec("image_segmentation", SIZE, 1))
    initial = {f"model.{k}": v for k, v in start.state_dict().items()}
    recipe = load_recipe("cmr-seg-cpu", RESNET + [f"model.pretrained={tmp_path / 'start.pt'}",
                                                  "model.freeze_encoder_epochs=1",
                                                  "data.subset={images: 8}"])
    fit(recipe, store, tmp_path / "run", max_epochs=1, progress=False)
    last = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    enc, dec = _encoder_decoder(last)
    assert all(torch.equal(v, initial[k]) for k, v in enc.items())  # incl. BatchNorm stats
    assert any(not torch.equal(v, initial[k]) for k, v in dec.items())
    fit(recipe, store, tmp_path / "run", max_epochs=2, resume=True, progress=False)
    last = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    enc, _ = _encoder_decoder(last)
    assert any(not torch.equal(v, initial[k]) for k, v in enc.items())


@pytest.mark.slow
def test_freeze_callback_switches_requires_grad():
    model = create_model("unet_vgg16", in_channels=1, out_channels=2)
    module, trainer = torch.nn.Module(), type("T", (), {"current_epoch": 0})()
    module.model = model
    callback = FreezeEncoder(2)
    callback.on_train_epoch_start(trainer, module)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert not model.encoder.training
    trainer.current_epoch = 2
    callback.on_train_epoch_start(trainer, module)
    assert all(p.requires_grad for p in model.encoder.parameters())
    module.model = create_model("unet_small", in_channels=1)
    with pytest.raises(InputError, match="encoder"):
        callback.on_train_epoch_start(trainer, module)


def test_subsets_select_patients_phases_and_images(store):
    ids = store.split_ids("train")
    m = store.manifest.set_index("sample_id")
    one = subset_ids(store, ids, {"patients": 1})
    assert m.loc[one, "patient_id"].nunique() == 1 and len(one) == 2
    two = subset_ids(store, ids, {"patients": 2})
    assert set(one) < set(two)  # nested: a larger subset contains the smaller
    assert set(m.loc[subset_ids(store, ids, {"phases": ["ED"]}), "phase"]) == {"ED"}
    assert len(subset_ids(store, ids, {"fraction": 1.0})) == len(ids)
    items = list(range(20))
    five = subset_items(items, {"images": 5})
    assert len(five) == 5 and set(five) <= set(subset_items(items, {"images": 8}))
    with pytest.raises(InputError, match="data.subset.patients"):
        subset_ids(store, ids, {"patients": 99})
    with pytest.raises(InputError, match="data.subset.size"):
        subset_ids(store, ids, {"size": 3})


def test_subset_training_uses_exactly_the_requested_images(store):
    recipe = load_recipe("cmr-seg-cpu", SMALL + ["data.subset={patients: 1, phases: [ES]}"])
    setup = build_task(recipe, store)
    train_ids = setup.extra["train_ids"]
    (sid,) = train_ids
    assert store.manifest.set_index("sample_id").loc[sid, "phase"] == "ES"
    labelled = np.flatnonzero(np.asarray(store.mask(sid)).reshape(len(store.mask(sid)), -1)
                              .any(1))
    assert setup.train.items == [(sid, int(z)) for z in labelled]
    assert setup.extra["train_images"] == len(labelled)
    recipe = load_recipe("cmr-seg-cpu", SMALL + ["data.subset={images: 3, seed: 4}"])
    setup = build_task(recipe, store)
    assert len(setup.train) == 3 and set(setup.train.items) <= set(
        build_task(load_recipe("cmr-seg-cpu", SMALL), store).train.items)


def test_data_requirement_curve_tabulates_val_dice(store, tmp_path):
    recipe = load_recipe("cmr-seg-cpu", SMALL + ["data.augment={}"])
    table = data_requirement_curve(recipe, store, [1, 2], tmp_path / "curve")
    assert table["patients"].tolist() == [1, 2]
    assert table["train_images"].iloc[0] < table["train_images"].iloc[1]
    assert table["train_patients"].tolist() == [1, 2]
    written = pd.read_csv(tmp_path / "curve/data_requirement.csv")
    assert written["val/dice_LV"].tolist() == pytest.approx(table["val/dice_LV"].tolist())
    assert table["val/dice_LV"].notna().all()  # one validation Dice per subset size
    assert (tmp_path / "curve/data_requirement.png").read_bytes()[:4] == b"\x89PNG"


def test_store_view_shares_samples_with_other_splits(store, tmp_path):
    patients = sorted(store.manifest["patient_id"].unique())
    view = store_view(store, tmp_path / "view", {p: ("val" if p == patients[0] else "train")
                                                 for p in patients})
    assert set(view.manifest.loc[view.manifest["split"] == "val", "patient_id"]) == {
        patients[0]}
    sid = view.ids[0]
    assert np.array_equal(view.frames(sid), store.frames(sid))
    assert view.mean.shape == store.mean.shape


@pytest.mark.slow
def test_paper_recipe_starts_from_a_local_imagenet_file(store, tmp_path, monkeypatch):
    monkeypatch.setenv("CINELAB_WEIGHTS", str(tmp_path))
    recipe = load_recipe("cmr-seg", [f"data.size={SIZE}"])
    with pytest.raises(MissingWeightsError, match="resnet34-b627a593.pth"):
        build_task(recipe, store)
    torch.manual_seed(3)
    imagenet = resnet34()
    torch.save(imagenet.state_dict(), tmp_path / "resnet34-b627a593.pth")
    setup = build_task(recipe, store)
    torch.testing.assert_close(setup.module.model.encoder.layer3[0].conv1.weight,
                               imagenet.layer3[0].conv1.weight)
    assert setup.extra["start_weights"]["adapted"] == ["conv1.weight"]  # RGB stem -> 1 channel
    (callback,) = setup.module.configure_callbacks()
    assert isinstance(callback, FreezeEncoder) and callback.epochs == 1
    assert setup.module.augment is not None and setup.input_spec.size == SIZE
