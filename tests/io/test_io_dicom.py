"""Ultrasound DICOM reader and the synthetic DICOM writer: real files, pydicom's test files,
round trips and a malformed-input corpus."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import RLELossless, UltrasoundMultiFrameImageStorage

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.dicom import frame_rate, read_header, read_ultrasound
from cinelab.synth.dicom import write_ultrasound_dicom
from conftest import real_path

FPS = 25.0


def _testdata(name: str) -> str:
    """A file shipped with pydicom, or skip."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped with this pydicom")
    return str(path)


def _frames(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- real echo DICOM --------------------------------------------------------------------


def test_real_ybr_jpeg_echo() -> None:
    path = real_path("echo-dicom", "examples_ybr_color.dcm")
    with pytest.warns(UserWarning, match="do not fit"):
        video = read_ultrasound(path)
    assert video.frames.shape == (30, 240, 320, 3) and video.frames.dtype == np.uint8
    assert video.n_frames == 30
    assert video.fps == pytest.approx(30.0, abs=0.01) and video.fps_source == "FrameTime"
    assert video.photometric == "YBR_FULL_422"
    assert video.transfer_syntax == "1.2.840.10008.1.2.4.50"
    assert video.modality == "US" and video.patient_id == "204"
    # The header's region (x 84-595, y 31-414) and spacing describe the 640x480 original
    # this clip was reduced from: they do not fit 320x240, so they are dropped, not trusted.
    assert video.region is None and video.pixel_spacing_mm is None
    rgb = video.frames.astype(int)
    lit = rgb.mean(-1) > 20
    spread = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
    assert np.median(spread[lit]) <= 4  # a grey echo: R ~ G ~ B (not YCbCr left unconverted)
    assert rgb[lit].mean() > 40


def test_real_header_has_geometry_tags() -> None:
    ds = read_header(real_path("echo-dicom", "examples_ybr_color.dcm"))
    region = ds.SequenceOfUltrasoundRegions[0]
    assert region.PhysicalUnitsXDirection == 3 and region.PhysicalDeltaX == pytest.approx(0.05105,
                                                                                          rel=1e-3)
    assert "PixelData" not in ds


# --- pydicom's shipped files -------------------------------------------------------------


@pytest.mark.parametrize(("name", "shape", "photometric"), [
    ("examples_rgb_color.dcm", (1, 240, 320, 3), "RGB"),
    ("examples_palette.dcm", (1, 350, 800, 3), "PALETTE COLOR"),
    ("examples_jpeg2k.dcm", (1, 480, 640, 3), "YBR_RCT"),
])
def test_pydicom_ultrasound_files(name: str, shape: tuple, photometric: str) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        video = read_ultrasound(_testdata(name), default_fps=17.0)
    assert any(name in str(w.message) and "FrameTime" in str(w.message) for w in record)
    assert video.frames.shape == shape and video.frames.dtype == np.uint8
    assert video.fps == 17.0 and video.fps_source == "default"
    assert video.photometric == photometric
    assert video.frames.max() > 100  # decoded, not blank


def test_rgb_and_jpeg2k_decode_the_same_picture() -> None:
    """examples_jpeg2k is examples_rgb_color at double size, losslessly coded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb = read_ultrasound(_testdata("examples_rgb_color.dcm")).frames[0].astype(float)
        j2k = read_ultrasound(_testdata("examples_jpeg2k.dcm")).frames[0].astype(float)
    small = j2k.reshape(240, 2, 320, 2, 3).mean(axis=(1, 3))
    assert np.abs(small - rgb).mean() < 10


def test_rle_non_ultrasound_allowed_by_flag() -> None:
    path = _testdata("MR_small_RLE.dcm")
    with pytest.raises(InputError) as err:
        read_ultrasound(path)
    assert err.value.field == "Modality" and "US" in err.value.expected
    with pytest.warns(UserWarning, match="no frame rate"):
        video = read_ultrasound(path, require_ultrasound=False)
    assert video.frames.shape == (1, 64, 64, 1) and video.transfer_syntax == RLELossless
    assert video.frames.min() == 0 and video.frames.max() == 255  # 16-bit stretched to uint8
    ds = pydicom.dcmread(_testdata("MR_small.dcm"))  # the same image, uncompressed
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(float)
    expected = (windowed - windowed.min()) / (windowed.max() - windowed.min()) * 255
    assert np.abs(video.frames[0, ..., 0] - expected).max() <= 1.0


# --- round trips through the writer ------------------------------------------------------


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "rle"])
@pytest.mark.parametrize("shape", [(5, 24, 32, 3), (4, 24, 32)])
def test_round_trip(tmp_path: Path, syntax: str, shape: tuple) -> None:
    frames = _frames(shape)
    path = write_ultrasound_dicom(
        tmp_path / "a" / "clip.dcm", frames, FPS, "P001", pixel_spacing_mm=(0.3, 0.25),
        region=(2, 3, 20, 30), transfer_syntax=syntax, PatientName="Doe^Jane",
        StudyDate="20240102", AccessionNumber="ACC1", InstitutionName="Somewhere",
        DeviceSerialNumber="SN9", PatientBirthDate="19700101")
    video = read_ultrasound(path)
    expected = frames if frames.ndim == 4 else frames[..., None]
    assert np.array_equal(video.frames, expected)
    assert video.fps == pytest.approx(FPS) and video.fps_source == "FrameTime"
    assert video.pixel_spacing_mm == pytest.approx((0.3, 0.25))
    assert video.region == (2, 3, 20, 30)
    assert video.patient_id == "P001" and video.modality == "US"
    ds = read_header(path)
    assert ds.SOPClassUID == UltrasoundMultiFrameImageStorage
    assert ds.PatientName == "Doe^Jane" and ds.DeviceSerialNumber == "SN9"
    assert int(ds.CineRate) == 25 and ds.StudyDate == "20240102"
    assert (ds.file_meta.TransferSyntaxUID == RLELossless) == (syntax == "rle")
    assert not list(path.parent.glob(".*tmp*"))  # atomic write leaves no temporary


def test_single_frame_and_no_geometry(tmp_path: Path) -> None:
    path = write_ultrasound_dicom(tmp_path / "one.dcm", _frames((1, 8, 8, 3)), 10.0, "P")
    video = read_ultrasound(path)
    assert video.frames.shape == (1, 8, 8, 3) and video.n_frames == 1
    assert video.region is None and video.pixel_spacing_mm is None


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="frames"):
        write_ultrasound_dicom(tmp_path / "x.dcm", np.zeros((2, 4, 4), np.float32), 30, "P")
    with pytest.raises(InputError, match="transfer_syntax"):
        write_ultrasound_dicom(tmp_path / "x.dcm", _frames((2, 4, 4)), 30, "P",
                               transfer_syntax="jpeg")
    with pytest.raises(InputError, match="NotATag"):
        write_ultrasound_dicom(tmp_path / "x.dcm", _frames((2, 4, 4)), 30, "P", NotATag="v")
    assert not (tmp_path / "x.dcm").exists()


# --- frame-rate tags ---------------------------------------------------------------------


def _header(**tags: object) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(("tags", "fps", "source"), [
    ({"FrameTime": "20", "CineRate": 10}, 50.0, "FrameTime"),
    ({"FrameTimeVector": ["0", "40", "40", "40"], "CineRate": 10}, 25.0, "FrameTimeVector"),
    ({"FrameTime": "0", "CineRate": 12}, 12.0, "CineRate"),
    ({"RecommendedDisplayFrameRate": 60}, 60.0, "RecommendedDisplayFrameRate"),
    ({}, None, "default"),
])
def test_frame_rate_tag_order(tags: dict, fps: float | None, source: str) -> None:
    got, got_source = frame_rate(_header(**tags))
    assert got_source == source
    assert got == (None if fps is None else pytest.approx(fps))


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    frames = _frames((3, 6, 7))
    path = write_ultrasound_dicom(tmp_path / "m1.dcm", frames, FPS, "P")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    assert np.array_equal(read_ultrasound(path).frames[..., 0], 255 - frames)


# --- malformed inputs --------------------------------------------------------------------


def test_not_dicom_empty_missing(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("this is not a DICOM file\n" * 20)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    for path, found in ((text, "not DICOM"), (empty, "empty file")):
        with pytest.raises(UnreadableFileError) as err:
            read_ultrasound(path)
        assert err.value.path == str(path) and err.value.field == "file"
        assert found in err.value.found
    with pytest.raises(InputError, match="nothing at that path"):
        read_ultrasound(tmp_path / "absent.dcm")


def test_no_pixel_data(tmp_path: Path) -> None:
    path = write_ultrasound_dicom(tmp_path / "h.dcm", _frames((2, 4, 4)), FPS, "P")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(UnreadableFileError) as err:
        read_ultrasound(path)
    assert err.value.field == "PixelData" and str(path) in str(err.value)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    path = write_ultrasound_dicom(tmp_path / "t.dcm", _frames((4, 16, 16)), FPS, "P")
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(UnreadableFileError) as err:
        read_ultrasound(path)
    assert str(path) in str(err.value)


def test_ct_is_not_ultrasound() -> None:
    path = _testdata("CT_small.dcm")
    with pytest.raises(InputError) as err:
        read_ultrasound(path)
    assert not isinstance(err.value, UnreadableFileError)
    assert err.value.field == "Modality" and "CT" in err.value.found
    assert "require_ultrasound=False" in str(err.value)
