"""Content checks for decoded arrays (NIfTI, HDF5, NumPy): each raises InputError naming the
file, the field, what was expected and what was found.

Readers call them right after decoding, before anything enters a store or a volume table:

- `check_finite(array, path, field)`: no NaN or infinity (one NaN slice otherwise zeroes a
  normalised stack, or turns a volume into NaN);
- `check_spacing(spacing, path, field)`: every voxel size finite and > 0 (zero spacing turns
  volumes into 0 and EF into nonsense);
- `check_labels(array, allowed, path, field)`: a label map holds only values of its label set
  (and integers);
- `check_keys(mapping, required, path)`: an HDF5 file / npz / dict has every required key, and
  none of them empty.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cinelab.errors import InputError

MAX_LISTED = 5  # values / indices quoted in a message


def check_finite(array: Any, path: str | Path | None = None, field: str = "values") -> np.ndarray:
    """The array, or InputError when any value is NaN or infinite (says how many and where)."""
    arr = np.asarray(array)
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(path, field, "numeric values", f"dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        nan = int(np.isnan(arr).sum())
        raise InputError(path, field, "finite values (no NaN or infinity)",
                         f"{int(bad.sum())} of {arr.size} non-finite ({nan} NaN), the first at "
                         f"index {first}", "fix or drop the image; cinelab never fills them in")
    return arr


def check_spacing(spacing: Iterable[Any], path: str | Path | None = None,
                  field: str = "spacing", ndim: int | None = None) -> tuple[float, ...]:
    """Voxel sizes as floats, or InputError unless every one is finite and > 0."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError) as exc:
        raise InputError(path, field, "numeric voxel sizes", repr(spacing)) from exc
    if ndim is not None and len(values) != ndim:
        raise InputError(path, field, f"{ndim} voxel sizes", f"{len(values)}: {values}")
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(path, field, "voxel sizes that are finite and > 0 (mm)", repr(values),
                         "fix the header's pixel spacing / zooms")
    return values


def check_labels(array: Any, allowed: Collection[int], path: str | Path | None = None,
                 field: str = "labels") -> np.ndarray:
    """A label map whose every value is in `allowed` (integers), or InputError."""
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        check_finite(arr, path, field)
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(path, field, f"integer labels in {sorted(allowed)}",
                             "fractional values (an image, not a label map?)")
    elif arr.dtype.kind not in "biu":
        raise InputError(path, field, f"integer labels in {sorted(allowed)}",
                         f"dtype {arr.dtype}")
    found = np.unique(arr)
    extra = [v.item() for v in found if v.item() not in set(allowed)]
    if extra:
        listed = ", ".join(str(v) for v in extra[:MAX_LISTED])
        more = f" and {len(extra) - MAX_LISTED} more" if len(extra) > MAX_LISTED else ""
        raise InputError(path, field, f"labels in {sorted(allowed)}", f"{listed}{more}",
                         "check the label convention of this dataset")
    return arr


def check_keys(mapping: Mapping[str, Any] | Any, required: Iterable[str],
               path: str | Path | None = None) -> None:
    """Every required key present (h5py File/Group, npz, dict) and none of them empty."""
    keys = set(mapping.keys())
    missing = [k for k in required if k not in keys]
    if missing:
        raise InputError(path, "keys", f"the keys {list(required)}",
                         f"missing {missing} (keys: {sorted(keys)})")
    for key in required:
        shape = getattr(mapping[key], "shape", None)
        if shape is not None and int(np.prod(shape)) == 0:
            raise InputError(path, key, "a non-empty array", f"shape {tuple(shape)}")
