"""NIfTI volumes and cines (nibabel), in NIfTI axis order or in cinelab's slices-first order.

NIfTI stores arrays as (x, y, z[, t]) with voxel sizes (zooms) per axis. cinelab's cardiac
arrays are slices first: a volume is (z, y, x) and a cine is (t, z, y, x), with spacing in the
same order (as the ACDC HDF5 samples and the cleaned DSB cines are). `read_volume` and
`write_volume` convert between the two by reversing the axes; `read_nifti`/`write_nifti` keep
the file's own order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.checks import check_finite, check_labels, check_spacing
from cinelab.io.files import refuse_special
from cinelab.utils import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SPATIAL_UNITS = "mm"
TIME_UNITS = "sec"
MIN_DIMS, MAX_DIMS = 2, 4
NIFTI1_HEADER, NIFTI2_HEADER = 348, 540  # sizeof_hdr, the first field of each header
MAX_DECODED_BYTES = 4 * 1024**3  # refuse a (compressed) volume that would not fit memory


def is_nifti(path: str | Path) -> bool:
    """True for names ending in .nii or .nii.gz."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    spacing: Sequence[float],
    affine: np.ndarray | None = None,
) -> Path:
    """Write `array` (NIfTI order: x, y, z[, t]) atomically; `spacing` gives the zooms.

    `spacing` has one value per axis, or one per spatial axis (time step then 1).
    Without `affine` the voxel-to-world matrix is diagonal in the spatial spacing.
    """
    path = Path(path)
    array = np.asarray(array)
    if not MIN_DIMS <= array.ndim <= MAX_DIMS:
        raise InputError(path, "array", f"{MIN_DIMS} to {MAX_DIMS} dimensions",
                         f"shape {array.shape}")
    zooms = _zooms(path, array.ndim, spacing)
    if affine is None:
        affine = np.diag([*zooms[:3], *[1.0] * (3 - min(array.ndim, 3)), 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(array), np.asarray(affine, dtype=float))
    image.header.set_zooms(zooms)
    image.header.set_xyzt_units(SPATIAL_UNITS, TIME_UNITS if array.ndim == MAX_DIMS else None)
    image.header["sform_code"] = image.header["qform_code"] = 1
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + suffix)  # nibabel picks compression by suffix
        try:
            nib.save(image, target)
            target.replace(tmp)
        finally:
            target.unlink(missing_ok=True)
    return path


def _zooms(path: Path, ndim: int, spacing: Sequence[float]) -> tuple[float, ...]:
    """Voxel sizes for every axis from a full or spatial-only spacing."""
    values = [float(s) for s in spacing]
    if len(values) == min(ndim, 3) and ndim == MAX_DIMS:
        values.append(1.0)
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(path, "spacing", f"{ndim} positive voxel sizes (one per axis)",
                         repr(tuple(spacing)))
    return tuple(values)


def read_nifti(path: str | Path, dtype: np.dtype | type | None = None, *,
               check: bool = True, labels: Collection[int] | None = None,
               max_bytes: int = MAX_DECODED_BYTES) -> tuple[np.ndarray, tuple]:
    """(array in NIfTI order, zooms per axis); errors name the file.

    The declared size (shape x dtype) is checked against `max_bytes` before loading. With
    `check` (default) every value must be finite and the spatial zooms > 0; with `labels`
    every value must be one of those labels (a label map).
    """
    path = refuse_special(path)
    if not path.is_file():
        raise InputError(path, "path", "an existing NIfTI file", "nothing at that path")
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.header.get_data_shape())
        size = int(np.prod(shape, dtype=np.int64)) * image.header.get_data_dtype().itemsize
        if size > max_bytes:
            raise InputError(path, "dim", f"at most {max_bytes} bytes of voxels",
                             f"{size} bytes (shape {shape})", "refused before loading")
        array = np.asarray(image.dataobj)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on corrupt files
        raise UnreadableFileError(path, "file", "a readable NIfTI file",
                                  f"{type(exc).__name__}: {exc}") from exc
    zooms = tuple(float(z) for z in image.header.get_zooms()[: array.ndim])
    if check:
        raw = stored_zooms(path)  # nibabel replaces a zero pixdim by 1 when loading
        raw = None if raw is None else tuple(abs(v) for v in raw)  # as nibabel reads signs
        spatial = min(array.ndim, 3)
        check_spacing(raw[:spatial] if raw is not None else zooms[:spatial], path,
                      "pixdim (voxel size)")
        if labels is None:
            check_finite(array, path, "voxels")
    if labels is not None:
        check_labels(array, labels, path, "labels")
    return (array if dtype is None else array.astype(dtype)), zooms


def stored_zooms(path: str | Path) -> tuple[float, ...] | None:
    """pixdim[1..7] exactly as stored in a NIfTI-1/2 header (None for other headers)."""
    try:
        with ImageOpener(path) as f:
            head = f.read(NIFTI2_HEADER)
    except Exception:  # noqa: BLE001 - the loader reports unreadable files
        return None
    for size, offset, kind in ((NIFTI1_HEADER, 76, "f4"), (NIFTI2_HEADER, 104, "f8")):
        for order in ("<", ">"):
            if len(head) >= size and int(np.frombuffer(head[:4], f"{order}i4")[0]) == size:
                pixdim = np.frombuffer(head[offset:offset + 8 * int(kind[1])], f"{order}{kind}")
                return tuple(float(v) for v in pixdim[1:])
    return None


def nifti_affine(path: str | Path) -> np.ndarray:
    """The voxel-to-world (RAS) matrix of a NIfTI file."""
    return np.asarray(nib.load(Path(path)).affine)


def to_nifti_order(array: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple]:
    """Slices-first (z, y, x) / (t, z, y, x) -> NIfTI (x, y, z) / (x, y, z, t), and spacing."""
    return np.transpose(array), tuple(float(s) for s in spacing)[::-1]


def read_volume(path: str | Path, dtype: np.dtype | type | None = None, *,
                check: bool = True, labels: Collection[int] | None = None,
                ) -> tuple[np.ndarray, tuple]:
    """A NIfTI file as a slices-first array ((z, y, x) or (t, z, y, x)) and its spacing.

    Validated as `read_nifti` does (finite values, spacing > 0, `labels` when given).
    """
    array, zooms = read_nifti(path, dtype, check=check, labels=labels)
    return to_nifti_order(array, zooms)  # reversing the axes is its own inverse


def write_volume(
    path: str | Path,
    array: np.ndarray,
    spacing: Sequence[float],
    affine: np.ndarray | None = None,
) -> Path:
    """Write a slices-first array ((z, y, x) or (t, z, y, x)) with spacing in the same order."""
    nifti_array, zooms = to_nifti_order(np.asarray(array), spacing)
    return write_nifti(path, nifti_array, zooms, affine)
