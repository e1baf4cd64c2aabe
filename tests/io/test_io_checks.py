"""io.checks: finite values, positive spacing, label sets, required keys."""

from __future__ import annotations

import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.io.checks import check_finite, check_keys, check_labels, check_spacing


def test_check_finite() -> None:
    assert check_finite(np.arange(4)).tolist() == [0, 1, 2, 3]
    a = np.zeros((2, 3), np.float32)
    a[1, 2] = np.inf
    with pytest.raises(InputError) as err:
        check_finite(a, "x.h5", "image")
    assert (err.value.path, err.value.field) == ("x.h5", "image")
    assert err.value.found == "1 of 6 non-finite (0 NaN), the first at index (1, 2)"


@pytest.mark.parametrize("spacing", [(1.0, 0.0), (1.0, -2.0), (np.nan, 1.0), (), ("a", 1)])
def test_check_spacing_refuses(spacing: tuple) -> None:
    with pytest.raises(InputError):
        check_spacing(spacing, "f.nii")


def test_check_spacing_accepts_and_counts() -> None:
    assert check_spacing(np.array([1.5, 1.5, 10.0])) == (1.5, 1.5, 10.0)
    with pytest.raises(InputError, match="expected 3 voxel sizes"):
        check_spacing((1.0, 1.0), ndim=3)


def test_check_labels() -> None:
    assert check_labels(np.array([0, 1, 3]), {0, 1, 2, 3}).tolist() == [0, 1, 3]
    assert check_labels(np.array([0.0, 2.0]), {0, 1, 2, 3}).tolist() == [0.0, 2.0]
    with pytest.raises(InputError) as err:
        check_labels(np.arange(12), {0, 1, 2, 3}, "l.nii")
    assert err.value.found == "4, 5, 6, 7, 8 and 3 more"
    with pytest.raises(InputError, match="fractional values"):
        check_labels(np.array([0.5]), {0, 1})


def test_check_keys() -> None:
    check_keys({"image": np.zeros(2), "label": np.ones(2)}, ["image", "label"])
    with pytest.raises(InputError, match="missing \\['label'\\]"):
        check_keys({"image": np.zeros(2)}, ["image", "label"], "p.h5")
    with pytest.raises(InputError) as err:
        check_keys({"image": np.zeros((0, 3))}, ["image"], "p.h5")
    assert (err.value.field, err.value.found) == ("image", "shape (0, 3)")
