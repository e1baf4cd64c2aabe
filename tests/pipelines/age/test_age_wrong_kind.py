"""The wrong-kind age inputs: prepared like a cine, deterministic by rng, typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.pipelines.age.prepare import TARGET_FRAMES
from cinelab.pipelines.age.wrong_kind import WRONG_KINDS, wrong_kind_cine


@pytest.mark.parametrize("kind", WRONG_KINDS)
def test_wrong_kind_cine_is_a_prepared_cine_and_deterministic(kind):
    a = wrong_kind_cine(np.random.default_rng(3), kind, frames=10, render=24, size=8)
    b = wrong_kind_cine(np.random.default_rng(3), kind, frames=10, render=24, size=8)
    assert a.shape == (TARGET_FRAMES, 8, 8, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_blank_is_one_grey_level_and_cxr_is_still():
    blank = wrong_kind_cine(np.random.default_rng(0), "blank", render=24, size=8)
    assert np.unique(blank).size == 1
    cxr = wrong_kind_cine(np.random.default_rng(0), "cxr", render=24, size=8)
    assert np.array_equal(cxr, np.repeat(cxr[:1], len(cxr), axis=0)) and cxr.std() > 0


def test_unknown_kind_is_a_typed_error():
    with pytest.raises(InputError, match="kind"):
        wrong_kind_cine(np.random.default_rng(0), "mri")
