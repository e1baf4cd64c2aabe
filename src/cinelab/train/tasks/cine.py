"""Task "cine_regression": video regression on cine MRI clips with MRI augmentation.

The same datasets, loss, metrics and output-bias initialisation (training-set mean of the
target) as "video_regression"; while training, every batch is augmented on the device by
`cinelab.data.mri_augment.RandomCineAugment` built from the recipe's ``data.augment``
(rotate, scale, shift, gain, gamma, time_shift, fill) before normalisation, then translated
by ``data.pad`` as usual. An empty ``data.augment`` trains without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from cinelab.data.mri_augment import RandomCineAugment
from cinelab.data.store import PreparedStore
from cinelab.train.modules import VideoRegressionModule
from cinelab.train.recipe import Recipe
from cinelab.train.setup import TASK_SETUPS, TaskSetup, register_task_setup

TASK = "cine_regression"
BASE_TASK = "video_regression"


class CineRegressionModule(VideoRegressionModule):
    """`VideoRegressionModule` whose training batches get `augment` before normalisation."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 augment: RandomCineAugment | None = None, **kwargs: Any) -> None:
        super().__init__(model, mean, std, **kwargs)
        self.augment = augment

    def prepare_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        """uint8 clips -> (augmented, in training) normalised float clips."""
        clips, target = batch
        if self.training and self.augment is not None:
            clips = self.augment(clips)
        return super().prepare_batch((clips, target))


def augment_from_recipe(spec: Mapping[str, Any] | None) -> RandomCineAugment | None:
    """The recipe's ``data.augment`` as an augmentation (None when empty)."""
    return RandomCineAugment.from_dict(spec) if spec else None


@register_task_setup(TASK)
def setup_cine_regression(recipe: Recipe, store: PreparedStore, train_ids: list[str],
                          val_ids: list[str]) -> TaskSetup:
    """The video-regression setup with its module replaced by a `CineRegressionModule`."""
    setup = TASK_SETUPS.get(BASE_TASK)(recipe, store, train_ids, val_ids)
    base = setup.module
    spec = setup.input_spec
    setup.module = CineRegressionModule(
        base.model, spec.mean, spec.std, augment=augment_from_recipe(recipe.data.augment),
        target_mean=None, loss=base.loss_fn, optim=recipe.optim, schedule=recipe.schedule,
        pad=recipe.data.pad, channels_last=base.channels_last)
    spec.task = TASK
    return setup
