"""TTA: seeded views, deterministic twins, exact flips/shifts, averaging, clips."""

import pytest
import torch

from cinelab.data.transforms import Translate
from cinelab.errors import InputError
from cinelab.infer.tta import (
    Affine2D,
    RandomAffine2D,
    augment_from_recipe,
    tta_predict,
    tta_views,
)


def _batch() -> torch.Tensor:
    return torch.rand(3, 1, 16, 20, generator=torch.Generator().manual_seed(0)) * 255


def test_views_are_seeded_and_start_with_identity():
    a, b = tta_views(6, seed=4), tta_views(6, seed=4)
    assert a == b and len(a) == 6
    assert a[0].is_identity and not any(v.is_identity for v in a[1:])
    assert tta_views(6, seed=5)[1:] != a[1:]
    assert tta_views(3, include_identity=False)[0] != Affine2D()


def test_flip_and_integer_shift_are_exact():
    x = _batch()
    assert torch.equal(Affine2D(flip=True)(x), torch.flip(x, dims=(-1,)))
    shifted = Affine2D(dx=3 / 20, dy=-2 / 16)(x)
    torch.testing.assert_close(shifted, Translate(-2, 3)(x), atol=1e-3, rtol=0)


def test_rotation_keeps_the_centre_and_fills_corners():
    x = torch.full((1, 1, 21, 21), 100.0)
    out = Affine2D(angle=45.0, fill=7.0)(x)
    assert out[0, 0, 10, 10] == pytest.approx(100.0)
    assert out[0, 0, 0, 0] == pytest.approx(7.0)


def test_clips_get_one_transform_for_every_frame():
    clip = torch.rand(2, 1, 4, 16, 16)
    out = Affine2D(angle=10.0, dx=0.1)(clip)
    assert out.shape == clip.shape
    torch.testing.assert_close(out[:, :, 2], Affine2D(angle=10.0, dx=0.1)(clip[:, :, 2]))


def test_tta_predict_averages_the_views():
    x = _batch()
    views = tta_views(4, seed=1)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return batch.mean(dim=(1, 2, 3))

    mean, outs = tta_predict(predict, x, n=4, seed=1, return_all=True)
    assert outs.shape == (4, 3)
    expected = torch.stack([predict(v(x)) for v in views]).mean(0)
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(tta_predict(predict, x, n=1), predict(x))
    # batch-invariant: one image alone gets the same TTA prediction as in the batch
    torch.testing.assert_close(tta_predict(predict, x[1:2], n=4, seed=1), mean[1:2])


def test_bad_settings_are_named():
    with pytest.raises(InputError, match="n"):
        tta_views(0)
    with pytest.raises(InputError, match="shift"):
        RandomAffine2D(shift=2.0)
    with pytest.raises(InputError, match="shape"):
        Affine2D(flip=True)(torch.zeros(4, 4))


def test_views_follow_the_training_augmentation():
    recipe = {"data": {"augment": {"preset": "none", "rotate": 20, "shift": 0.05,
                                   "zoom": [0.9, 1.2], "p_affine": 1.0}}}
    aug = augment_from_recipe(recipe)
    assert (aug.rotate, aug.shift, aug.flip) == (20.0, 0.05, False)
    assert aug.zoom == pytest.approx(0.2)
    assert augment_from_recipe({"data": {"augment": {"preset": "normal"}}}).flip
    assert augment_from_recipe({}) == RandomAffine2D() and not RandomAffine2D().flip
