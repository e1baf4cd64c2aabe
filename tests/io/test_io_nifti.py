"""NIfTI reading and writing: exact round trips, axis orders, affines and clear errors."""

from __future__ import annotations

import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.nifti import (
    is_nifti,
    nifti_affine,
    read_nifti,
    read_volume,
    stored_zooms,
    write_nifti,
    write_volume,
)


def _array(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random(shape) * 200).astype(dtype)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16, np.uint16])
def test_round_trip_3d_exact(tmp_path: Path, suffix: str, dtype: type) -> None:
    array = _array((7, 6, 5), dtype)
    path = write_nifti(tmp_path / f"v{suffix}", array, (1.5, 1.25, 8.0))
    back, zooms = read_nifti(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert zooms == pytest.approx((1.5, 1.25, 8.0))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_round_trip_4d_with_time_step(tmp_path: Path) -> None:
    array = _array((6, 5, 4, 3))
    _, zooms = read_nifti(write_nifti(tmp_path / "c.nii.gz", array, (1.0, 2.0, 10.0, 0.05)))
    assert zooms == pytest.approx((1.0, 2.0, 10.0, 0.05))
    _, zooms = read_nifti(write_nifti(tmp_path / "d.nii.gz", array, (1.0, 2.0, 10.0)))
    assert zooms == pytest.approx((1.0, 2.0, 10.0, 1.0))  # spatial spacing only: time step 1


def test_slices_first_volume_reverses_axes(tmp_path: Path) -> None:
    cine = _array((4, 3, 8, 6))  # (t, z, y, x)
    path = write_volume(tmp_path / "cine.nii.gz", cine, (0.04, 10.0, 1.5, 1.25))
    raw, zooms = read_nifti(path)
    assert raw.shape == (6, 8, 3, 4)  # NIfTI (x, y, z, t)
    assert zooms == pytest.approx((1.25, 1.5, 10.0, 0.04))
    back, spacing = read_volume(path)
    np.testing.assert_array_equal(back, cine)
    assert spacing == pytest.approx((0.04, 10.0, 1.5, 1.25))
    np.testing.assert_array_equal(raw[2, 5, 1, 3], cine[3, 1, 5, 2])


def test_affine_kept_and_default_diagonal(tmp_path: Path) -> None:
    affine = np.array([[-1.5, 0, 0, 10.0], [0, -1.5, 0, 20.0], [0, 0, 8.0, -30.0], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "a.nii.gz", _array((4, 4, 3)), (1.5, 1.5, 8.0), affine)
    np.testing.assert_allclose(nifti_affine(path), affine)
    plain = write_nifti(tmp_path / "b.nii.gz", _array((4, 4, 3)), (1.5, 2.0, 8.0))
    np.testing.assert_allclose(nifti_affine(plain), np.diag([1.5, 2.0, 8.0, 1.0]))


def test_dtype_conversion_on_read(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "m.nii.gz", _array((3, 3, 2), np.uint8), (1, 1, 1))
    array, _ = read_nifti(path, np.float32)
    assert array.dtype == np.float32


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, np.nan, 2.0)])
def test_bad_spacing_names_the_field(tmp_path: Path, spacing: tuple) -> None:
    with pytest.raises(InputError, match="spacing"):
        write_nifti(tmp_path / "x.nii.gz", _array((3, 3, 3)), spacing)
    assert not list(tmp_path.iterdir())


def test_bad_dimensions(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dimensions"):
        write_nifti(tmp_path / "x.nii.gz", np.zeros(5), (1.0,))


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing at that path"):
        read_nifti(tmp_path / "absent.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    with pytest.raises(UnreadableFileError, match="bad.nii.gz"):
        read_nifti(bad)


def test_is_nifti() -> None:
    assert is_nifti("a/sa.nii.gz") and is_nifti("B.NII") and not is_nifti("a.png")


# --- validation: finite values, spacing, labels, declared size --------------------------


def test_validation_on_read(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 2), np.float32)
    a[1, 1, 1] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", a, (1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="voxels: expected finite values"):
        read_nifti(tmp_path / "nan.nii.gz")
    assert np.isnan(read_nifti(tmp_path / "nan.nii.gz", check=False)[0]).sum() == 1

    labels = np.zeros((4, 4, 2), np.uint8)
    labels[0, 0, 0] = 9
    write_nifti(tmp_path / "lab.nii.gz", labels, (1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="labels: expected labels in \\[0, 1, 2, 3\\], found 9"):
        read_volume(tmp_path / "lab.nii.gz", labels={0, 1, 2, 3})

    path = write_nifti(tmp_path / "z.nii", np.zeros((4, 4, 2), np.float32), (1.0, 1.0, 2.0))
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 80, 0.0)  # pixdim[1] = 0
    path.write_bytes(bytes(data))
    assert stored_zooms(path)[:3] == (0.0, 1.0, 2.0)
    assert nib.load(path).header.get_zooms()[0] == 1.0  # nibabel would hide it
    with pytest.raises(InputError, match="pixdim \\(voxel size\\)"):
        read_nifti(path)


def test_declared_size_refused_before_loading(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    image.header.set_data_shape((2048, 2048, 2048))
    path = tmp_path / "huge.nii"
    path.write_bytes(image.header.binaryblock + bytes(36))
    with pytest.raises(InputError) as err:
        read_nifti(path)
    assert err.value.field == "dim"
    assert err.value.found == "34359738368 bytes (shape (2048, 2048, 2048))"
