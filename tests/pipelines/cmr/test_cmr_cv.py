"""`cinelab cv` on a segmentation recipe (unstratified nested folds, per-sample Dice) and
mirror test-time augmentation of segment_stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cinelab.errors import InputError
from cinelab.pipelines.cmr.acdc import read_acdc
from cinelab.pipelines.cmr.predict import segment_stack
from cinelab.pipelines.cmr.prepare import prepare_cmr
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.train.checkpoint import InputSpec
from cinelab.train.cv import read_cv_predictions, run_cv
from cinelab.train.recipe import load_recipe

TINY = ["data.size=32", "data.augment.crop=null", "data.batch_size=4",
        "model.kwargs.channels=[8, 16]", "model.kwargs.strides=[2]", "trainer.val_every=1",
        "trainer.max_epochs=1"]


class LeftHalf(torch.nn.Module):
    """Class 1 confident on the left half (margin +3), class 0 weakly on the right (-1)."""

    def forward(self, x):
        w = x.shape[-1]
        v = torch.full_like(x, -1.0)
        v[..., : w // 2] = 3.0
        return torch.cat([-v, v], dim=1)


def test_mirror_tta_averages_the_flipped_predictions() -> None:
    slices = np.zeros((2, 8, 8), np.uint8)
    spec = InputSpec("image_segmentation", 8, 1, mean=[0.0], std=[1.0])
    plain = segment_stack(LeftHalf(), slices, spec)
    assert plain[:, :, :4].all() and not plain[:, :, 4:].any()
    mirrored = segment_stack(LeftHalf(), slices, spec, mirror=True)
    # every pixel is on the left in 2 of the 4 views: p1 = 2 s(6) + 2 s(-2) = 2.23 > 2
    assert mirrored.all()


@pytest.mark.slow
def test_cv_cross_validates_a_segmentation_recipe(tmp_path: Path) -> None:
    synth = synth_cmr_cohort(tmp_path / "s", n=4, seed=3, layout="acdc", size=(32, 32),
                             n_frames=4)
    manifest, _ = read_acdc(synth.acdc_root)
    prepare_cmr(manifest, tmp_path / "store", size=32, workers=1)
    recipe = load_recipe("cmr-seg-cpu", TINY)
    result = run_cv(recipe, tmp_path / "store", tmp_path / "cv", outer=2, inner=2, tta=1)
    assert len(result.trained) == 4
    preds = read_cv_predictions(tmp_path / "cv")
    assert set(preds["role"]) == {"train", "val", "test"}
    assert preds["target"].isna().all()  # no target: unstratified folds
    assert preds["pred"].between(0, 1).all() and preds["pred_aug"].between(0, 1).all()
    per_unit = preds.groupby(["outer", "inner"])["subject"].nunique()
    assert (per_unit == 4).all()  # every patient predicted by every unit
    tests = preds[preds["role"] == "test"].groupby("outer")["subject"].nunique()
    assert tests.sum() == 4  # each of the 4 patients is tested in exactly one outer fold


class RightHalf(LeftHalf):
    """LeftHalf mirrored: class 1 confident on the right half."""

    def forward(self, x):
        return super().forward(x).flip(-1)


def test_ensemble_averages_the_members_softmax() -> None:
    slices = np.zeros((1, 8, 8), np.uint8)
    spec = InputSpec("image_segmentation", 8, 1, mean=[0.0], std=[1.0])
    assert not segment_stack(RightHalf(), slices, spec)[..., :4].any()
    both = segment_stack(LeftHalf(), slices, spec, ensemble=[(RightHalf(), spec)])
    assert both.all()  # s(6) + s(-2) > 1 on both halves
    with pytest.raises(InputError, match="slices"):
        segment_stack(LeftHalf(), slices, spec,
                      ensemble=[(RightHalf(), InputSpec("image_segmentation", 16, 1))])
