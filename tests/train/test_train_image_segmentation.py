"""Task image_segmentation: class mapping, slice dataset, softmax losses, per-class Dice,
batch augmentation; one epoch on a tiny synthetic ACDC store predicts via segment_stack."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cinelab.data.augment import PRESETS, RandomAugment, augment_config
from cinelab.data.datasets import train_val_ids
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.pipelines.cmr.acdc import read_acdc
from cinelab.pipelines.cmr.predict import checkpoint_classes, segment_stack
from cinelab.pipelines.cmr.prepare import prepare_cmr
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.train.checkpoint import load_checkpoint
from cinelab.train.fit import fit
from cinelab.train.losses import create_loss
from cinelab.train.recipe import load_recipe
from cinelab.train.tasks.image_segmentation import (
    ClassDice,
    SliceDataset,
    class_labels,
    class_table,
    multiclass_loss,
)

SIZE = 32
OVERRIDES = [f"data.size={SIZE}", "data.batch_size=8", "trainer.max_epochs=1",
             "trainer.val_every=1",
             "model.kwargs.channels=[8, 16, 32]", "model.kwargs.strides=[2, 2]"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmrtask")
    cohort = synth_cmr_cohort(root / "synth", n=4, seed=1, layout="acdc", size=(40, 36),
                              n_frames=4)
    manifest, _ = read_acdc(cohort.acdc_root)
    prepare_cmr(manifest, root / "store", size=SIZE, workers=1)
    return PreparedStore(root / "store")


def test_class_table_maps_store_labels():
    names, lut = class_table({"LV": 3, "MYO": [2, 4]})
    assert names == ["LV", "MYO"] and lut[3] == 1 and lut[2] == lut[4] == 2 and lut[1] == 0
    assert class_labels({"LV": 3, "MYO": 2, "RV": 1}).tolist() == [0, 3, 2, 1]
    with pytest.raises(InputError, match="data.classes.LV"):
        class_table({"LV": 0})


def test_slice_dataset_keeps_labelled_slices(store):
    ds = SliceDataset(store, store.ids[:2], {"LV": 3, "MYO": 2})
    labelled = sum(int(np.asarray(store.mask(s)).reshape(len(store.mask(s)), -1).any(1).sum())
                   for s in store.ids[:2])
    assert len(ds) == labelled
    assert len(SliceDataset(store, store.ids[:2], empty_slices=True)) == sum(
        len(store.mask(s)) for s in store.ids[:2])
    image, mask = ds[0]
    assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.uint8
    assert mask.shape == (SIZE, SIZE) and set(mask.unique().tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("name", ["cross_entropy", "dice", "focal", "dice_ce"])
def test_softmax_losses_reward_the_right_classes(name):
    cfg = multiclass_loss({"name": name})
    loss = create_loss(cfg["name"], **cfg["kwargs"])
    target = torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    right = 8.0 * torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    wrong = right.roll(1, dims=1)  # every pixel's logit on another class
    logits = torch.zeros(2, 4, 8, 8, requires_grad=True)
    value = loss(logits, target)
    value.backward()
    assert loss(right, target) < 0.05 < value < loss(wrong, target)
    assert logits.grad.abs().sum() > 0  # uniform logits get a gradient towards the truth


def test_class_dice_over_pixels():
    metric = ClassDice(3)
    target = torch.tensor([[0, 1, 1, 2]])
    metric.update(torch.tensor([[0, 1, 2, 2]]), target)
    dice = metric.compute()
    assert dice[1].item() == pytest.approx(2 / 3) and dice[2].item() == pytest.approx(2 / 3)


def test_augment_presets_and_shared_geometry():
    assert augment_config({}) is None and augment_config({"preset": "none"}) is None
    assert augment_config({"preset": "extreme", "rotate": 30}).rotate == 30
    assert augment_config({"preset": "extreme", "crop": None}).crop == 0  # null: no crop
    with pytest.raises(InputError, match="data.augment"):
        augment_config({"preset": "wild"})
    masks = torch.zeros(4, 32, 32, dtype=torch.long)
    masks[:, 8:20, 10:24] = 3
    images = (masks[:, None] > 0).float()
    for preset in ("normal", "extreme"):
        gen = torch.Generator().manual_seed(0)
        twin = RandomAugment(preset).draw(4, 32, 32, gen)
        warped_mask, warped_image = twin.mask(masks), twin.image(images)
        assert warped_mask.dtype == masks.dtype and set(warped_mask.unique().tolist()) <= {0, 3}
        inside = warped_image[:, 0][warped_mask > 0].mean()
        outside = warped_image[:, 0][warped_mask == 0].mean()
        assert inside > outside + 0.3  # image and mask moved together
        again = RandomAugment(preset).draw(4, 32, 32, torch.Generator().manual_seed(0))
        torch.testing.assert_close(again.theta, twin.theta)
    identity = RandomAugment(PRESETS["none"]).draw(4, 32, 32)
    torch.testing.assert_close(identity.image(images), images)
    assert torch.equal(identity.mask(masks), masks)


def test_foreground_crops():
    masks = torch.zeros(6, 32, 32, dtype=torch.long)
    masks[:, 24:28, 2:6] = 2
    images = torch.rand(6, 1, 32, 32)
    config = dataclasses.replace(PRESETS["none"], crop=12, crop_foreground=1.0)
    out_images, out_masks = RandomAugment(config)(images, masks, torch.Generator().manual_seed(1))
    assert out_images.shape == (6, 1, 12, 12) and out_masks.shape == (6, 12, 12)
    assert all((m == 2).any() for m in out_masks)  # every crop holds the labelled region
    whole = dataclasses.replace(config, crop=64)  # larger than the images: no crop
    assert RandomAugment(whole)(images, masks)[1].shape == (6, 32, 32)


def test_one_epoch_checkpoint_reproduces_the_validation_dice(store, tmp_path):
    recipe = load_recipe("cmr-seg-cpu", OVERRIDES + ["data.augment.preset=extreme",
                                                     "loss.name=dice_ce"])
    result = fit(recipe, store, tmp_path / "run", progress=False)
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.input_spec.task == "image_segmentation" and loaded.input_spec.channels == 1
    classes = checkpoint_classes(loaded)
    assert classes == {"LV": 3, "MYO": 2, "RV": 1}
    train_ids, val_ids = train_val_ids(store, recipe.trainer.seed)
    extra = loaded.info["extra"]
    assert extra["train_images"] == len(SliceDataset(store, train_ids, classes))
    assert extra["val_images"] == len(SliceDataset(store, val_ids, classes))
    assert extra["start_weights"] is None
    _, lut = class_table(classes)
    metric = ClassDice(4)
    for sid in val_ids:  # the exported model, its normalisation and class order, as in val
        mask = np.asarray(store.mask(sid))
        keep = mask.reshape(len(mask), -1).any(1)
        pred = segment_stack(loaded.model, store.frames(sid)[keep], loaded.input_spec)
        metric.update(torch.from_numpy(pred).long(), torch.from_numpy(lut[mask[keep]]).long())
        labels = segment_stack(loaded.model, store.frames(sid), loaded.input_spec, classes)
        assert np.array_equal(labels[keep], class_labels(classes)[pred])
    dice = metric.compute()
    for k, name in enumerate(("LV", "MYO", "RV"), start=1):
        assert dice[k].item() == pytest.approx(result.metrics[f"val/dice_{name}"], abs=1e-4)


def test_output_channels_must_match_classes(store, tmp_path):
    recipe = load_recipe("cmr-seg-cpu", OVERRIDES + ["model.kwargs.out_channels=3"])
    with pytest.raises(InputError, match="out_channels"):
        fit(recipe, store, tmp_path / "run", progress=False)
