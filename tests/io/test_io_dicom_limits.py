"""DICOM limits: declared sizes checked before decoding, deflate bombs refused while
inflating, NumberOfFrames against the pixel data, every frame decoded - in all three DICOM
readers (ultrasound, radiograph, MR series)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.cxr_dicom import read_cxr_dicom
from cinelab.io.dicom import (
    MAX_BYTES_ENV,
    check_deflate,
    check_pixel_header,
    read_dataset,
    read_ultrasound,
)
from cinelab.io.dicom_series import read_mr_image
from cinelab.synth.dicom import write_ultrasound_dicom


def _dicom(tmp_path: Path, n: int = 4, **tags: object) -> Path:
    frames = np.random.default_rng(0).integers(0, 256, (n, 16, 16), dtype=np.uint8)
    path = write_ultrasound_dicom(tmp_path / "u.dcm", frames, 25.0, "P")
    if tags:
        ds = pydicom.dcmread(path)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("reader", [read_ultrasound, read_cxr_dicom, read_mr_image])
def test_declared_bomb_is_refused_before_decoding_in_every_reader(tmp_path: Path,
                                                                  reader: object) -> None:
    path = _dicom(tmp_path, n=1, Rows=50000, Columns=50000, NumberOfFrames=1)
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        reader(path)  # type: ignore[operator]
    assert time.monotonic() - start < 5
    assert err.value.field == "declared pixel size"
    assert err.value.found.startswith("2500000000 bytes (Rows 50000 x Columns 50000")


def test_limit_from_argument_and_environment(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _dicom(tmp_path)
    ds = read_dataset(path)
    header = check_pixel_header(path, ds)
    assert (header.rows, header.columns, header.frames, header.total_bytes) == (16, 16, 4, 1024)
    with pytest.raises(InputError, match="at most 1000 bytes decoded"):
        check_pixel_header(path, ds, max_bytes=1000)
    monkeypatch.setenv(MAX_BYTES_ENV, "1000")
    with pytest.raises(InputError, match="declared pixel size"):
        read_ultrasound(path)


def test_deflate_bomb_refused_while_inflating(tmp_path: Path) -> None:
    path = _dicom(tmp_path, n=1)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 2048
    ds.PixelData = bytes(2048 * 2048)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 100_000
    check_deflate(path, max_bytes=8 * 1024**2)  # 4 MiB inflated: within the limit
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        read_dataset(path, max_bytes=1024**2)
    assert time.monotonic() - start < 5
    assert (err.value.field, err.value.found) == (
        "deflated dataset", "more than 1048576 bytes (a decompression bomb?)")
    assert read_ultrasound(path, max_bytes=8 * 1024**2).frames.shape == (1, 2048, 2048, 1)


def test_number_of_frames_against_pixel_data(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError) as err:
        read_ultrasound(_dicom(tmp_path, NumberOfFrames=5))
    assert err.value.found == "1024 bytes (4.00 frames)"
    with pytest.raises(InputError) as err2:
        read_ultrasound(_dicom(tmp_path, NumberOfFrames=2))
    assert not isinstance(err2.value, UnreadableFileError)
    assert err2.value.expected.startswith("512 bytes of pixel data for NumberOfFrames 2")


def test_min_frames_for_a_cine(tmp_path: Path) -> None:
    path = _dicom(tmp_path, n=1)
    assert read_ultrasound(path).n_frames == 1  # the default keeps stills readable
    with pytest.raises(InputError) as err:
        read_ultrasound(path, min_frames=3)
    assert (err.value.field, err.value.found) == ("NumberOfFrames", "1")


def test_special_files_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file type: expected a regular file"):
        read_dataset("/dev/zero")
