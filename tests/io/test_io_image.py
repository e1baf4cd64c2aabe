"""Still images (PNG/JPEG, 8/16-bit, grey/RGB/RGBA/palette) and CR/DX DICOM radiographs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.cxr_dicom import (
    is_dicom_file,
    read_cxr,
    read_cxr_dicom,
    read_cxr_header,
    write_cxr_dicom,
)
from cinelab.io.image import probe_image, read_image, write_image
from conftest import real_path

H, W = 48, 64


def _ramp(dtype: type = np.uint8, top: int = 255) -> np.ndarray:
    return np.linspace(0, top, H * W).reshape(H, W).astype(dtype)


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# --- PNG / JPEG -------------------------------------------------------------------------


def test_grey_png_round_trip_and_rgb_replication(tmp_path: Path) -> None:
    image = _ramp()
    path = write_image(tmp_path / "g.png", image)
    np.testing.assert_array_equal(read_image(path), image)
    rgb = read_image(path, rgb=True)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], image)
    np.testing.assert_array_equal(rgb[..., 2], image)


def test_rgb_png_keeps_channel_order_and_greys_by_luma(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    path = write_image(tmp_path / "c.png", rgb)
    out = read_image(path, rgb=True)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert read_image(path)[0, 0] == round(0.299 * 200)


def test_rgba_png_drops_alpha_without_compositing(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 120
    rgba[..., 3] = 0  # fully transparent: still the stored grey, not the background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (H, W) and (out == 120).all()
    assert read_image(tmp_path / "a.png", rgb=True).shape == (H, W, 3)


def test_grey_alpha_and_palette_png(tmp_path: Path) -> None:
    la = np.stack([np.full((H, W), 90, np.uint8), np.full((H, W), 30, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 90).all()
    pal = Image.fromarray(_ramp()).convert("P")
    pal.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (H, W) and abs(int(out[-1, -1]) - 255) <= 8


def test_16bit_png_scaling_modes(tmp_path: Path) -> None:
    image = _ramp(np.uint16, 4095)  # 12-bit data in a 16-bit file
    image[0, 0] = 65535  # one hot pixel
    path = write_image(tmp_path / "d.png", image)
    robust = read_image(path)
    full = read_image(path, scale16="full")
    minmax = read_image(path, scale16="minmax")
    assert robust.dtype == np.uint8 and robust.shape == (H, W)
    assert robust[-1, -1] == 255 and robust[H // 2, W // 2] > 100  # the hot pixel is ignored
    assert full[-1, -1] == round(4095 / 65535 * 255) and full[0, 0] == 255
    assert minmax[-1, -1] < 20  # the hot pixel sets the top of the range
    with pytest.raises(InputError, match="scale16"):
        read_image(path, scale16="nope")


def test_jpeg_reads_close_to_the_source(tmp_path: Path) -> None:
    image = cv2.GaussianBlur(_ramp(), (5, 5), 2)
    path = write_image(tmp_path / "j.jpg", image)
    assert np.abs(read_image(path).astype(int) - image).mean() < 3


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_images_raise_unreadable(tmp_path: Path, suffix: str) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    path = _truncate(write_image(tmp_path / f"t{suffix}", noise))
    with pytest.raises(UnreadableFileError, match="truncated") as info:
        read_image(path)
    assert info.value.path == str(path) and info.value.fix


def test_empty_missing_and_non_image_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="0 bytes"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(UnreadableFileError, match="0 bytes"):
        probe_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UnreadableFileError, match="decodable image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(InputError, match="nothing at that path"):
        read_image(tmp_path / "absent.png")


def test_probe_reads_the_header_only(tmp_path: Path) -> None:
    path = write_image(tmp_path / "p.png", _ramp())
    info = probe_image(path)
    assert (info.width, info.height, info.mode, info.format) == (W, H, "L", "PNG")


def test_write_image_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="image"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))


def test_real_deepcovid_samples_decode() -> None:
    root = real_path("cxr-covid", "IVPLatNU+DeepCovidXR")
    for name in ("neg_sample1.png", "pos_sample1.png"):
        grey = read_image(root / name)
        assert grey.shape == (224, 224) and grey.dtype == np.uint8 and grey.std() > 20


# --- CR/DX DICOM ------------------------------------------------------------------------


def test_window_center_width_maps_the_window_to_0_255(tmp_path: Path) -> None:
    image = _ramp(np.uint16, 4095)
    path = write_cxr_dicom(tmp_path / "w.dcm", image, window=(1000, 500), bits_stored=12)
    out = read_cxr_dicom(path)
    assert out.dtype == np.uint8 and out.shape == (H, W)
    assert (out[image <= 750] == 0).all() and (out[image >= 1250] == 255).all()
    mid = (image > 900) & (image < 1100)
    assert 80 < out[mid].mean() < 175


def test_window_wider_than_the_data_keeps_its_contrast(tmp_path: Path) -> None:
    image = _ramp(np.uint16, 1000)
    path = write_cxr_dicom(tmp_path / "w.dcm", image, window=(2048, 4096), bits_stored=12)
    out = read_cxr_dicom(path)
    assert out.max() < 80  # not stretched to the full range


def test_voi_lut_sequence_is_preferred(tmp_path: Path) -> None:
    image = _ramp(np.uint16, 4095)
    lut = (4095 - np.arange(4096)).astype(np.uint16)  # an inverting LUT
    path = write_cxr_dicom(tmp_path / "l.dcm", image, window=(2048, 4096), bits_stored=12,
                           voi_lut=lut)
    assert read_cxr_header(path).voi == "lut"
    out = read_cxr_dicom(path)
    assert out[0, 0] == 255 and out[-1, -1] == 0


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    image = _ramp(np.uint16, 4095)
    mono2 = read_cxr_dicom(write_cxr_dicom(tmp_path / "m2.dcm", image, bits_stored=12,
                                           window=(2048, 4096)))
    mono1 = read_cxr_dicom(write_cxr_dicom(tmp_path / "m1.dcm", 4095 - image,
                                           photometric="MONOCHROME1", bits_stored=12,
                                           window=(2048, 4096)))
    np.testing.assert_allclose(mono1.astype(int), mono2.astype(int), atol=1)
    assert mono1[0, 0] < 5 and mono1[-1, -1] > 250  # bone bright, air dark


def test_12_and_16_bit_without_window_and_8_bit_kept(tmp_path: Path) -> None:
    for bits, top in ((12, 4095), (16, 60000)):
        out = read_cxr_dicom(write_cxr_dicom(tmp_path / f"b{bits}.dcm", _ramp(np.uint16, top),
                                             bits_stored=bits))
        assert out.min() == 0 and out.max() == 255
    eight = _ramp(np.uint8, 200)
    np.testing.assert_array_equal(read_cxr_dicom(write_cxr_dicom(tmp_path / "e.dcm", eight)),
                                  eight)


def test_dicom_without_pixel_data_raises_named_error(tmp_path: Path) -> None:
    path = write_cxr_dicom(tmp_path / "n.dcm", _ramp())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    assert read_cxr_header(path).has_pixels is False
    with pytest.raises(UnreadableFileError, match="PixelData") as info:
        read_cxr_dicom(path)
    assert info.value.field == "PixelData"


def test_header_fields_and_modality_check(tmp_path: Path) -> None:
    path = write_cxr_dicom(tmp_path / "h.dcm", _ramp(), modality="CR", ViewPosition="AP",
                           PatientID="P7")
    header = read_cxr_header(path)
    assert (header.view, header.patient_id, header.modality) == ("AP", "P7", "CR")
    assert (header.rows, header.columns, header.has_pixels) == (H, W, True)
    ds = pydicom.dcmread(path)
    ds.Modality = "CT"
    ds.save_as(path)
    with pytest.raises(InputError, match="Modality"):
        read_cxr_dicom(path, require_cxr=True)
    assert read_cxr_dicom(path).shape == (H, W)


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="image"):
        write_cxr_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="bits_stored"):
        write_cxr_dicom(tmp_path / "x.dcm", _ramp(np.uint16, 5000), bits_stored=12)
    with pytest.raises(InputError, match="NotAKeyword"):
        write_cxr_dicom(tmp_path / "x.dcm", _ramp(), NotAKeyword=1)


def test_read_cxr_dispatches_on_content(tmp_path: Path) -> None:
    dcm = write_cxr_dicom(tmp_path / "a.dcm", _ramp())
    bare = tmp_path / "no_suffix"
    bare.write_bytes(dcm.read_bytes())
    png = write_image(tmp_path / "b.png", _ramp())
    assert is_dicom_file(bare) and is_dicom_file(dcm) and not is_dicom_file(png)
    for path in (dcm, bare, png):
        np.testing.assert_array_equal(read_cxr(path), _ramp())
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="0 bytes"):
        read_cxr(tmp_path / "empty.dcm")
