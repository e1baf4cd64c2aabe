"""PNG image + mask folders (fastai layout) -> manifest, with unmatched files reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinelab.data.manifest import validate_manifest
from cinelab.errors import InputError
from cinelab.pipelines.cmr.pngmasks import read_png_masks


def _png(path: Path, size: tuple[int, int] = (12, 10), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def test_paired_folders(tmp_path: Path) -> None:
    for name in ("1139-frame004-slice001", "1139-frame004-slice002", "77_frame1_slice3"):
        _png(tmp_path / "images" / f"{name}.png", value=100)
        _png(tmp_path / "masks" / f"{name}.png", value=1)
    _png(tmp_path / "images" / "lonely.png")
    _png(tmp_path / "masks" / "orphan.png")
    _png(tmp_path / "images" / "bad-frame001.png")
    _png(tmp_path / "masks" / "bad-frame001.png", size=(8, 8))
    manifest, problems = read_png_masks(tmp_path)
    assert validate_manifest(manifest) == []
    assert list(manifest["sample_id"]) == ["1139-frame004-slice001", "1139-frame004-slice002",
                                           "77_frame1_slice3"]
    assert list(manifest["patient_id"]) == ["1139", "1139", "77"]
    assert list(manifest["frame"]) == [4, 4, 1] and list(manifest["slice"]) == [1, 2, 3]
    assert (manifest["modality"] == "cmr").all() and (manifest["view"] == "sax").all()
    assert all(Path(p).parent.name == "masks" for p in manifest["mask_path"])
    errors = {Path(p.file).name: p.error for p in problems}
    assert errors == {"lonely.png": "image without a mask", "orphan.png": "mask without an image",
                      "bad-frame001.png": "mask size differs from the image"}


def test_nested_patient_folders_and_label_dir(tmp_path: Path) -> None:
    for patient in ("p1", "p2"):
        _png(tmp_path / "images" / patient / "a.png")
        _png(tmp_path / "labels" / patient / "a.png")
    manifest, problems = read_png_masks(tmp_path)
    assert problems == [] and list(manifest["patient_id"]) == ["p1", "p2"]
    assert list(manifest["sample_id"]) == ["p1__a", "p2__a"]


def test_suffixed_masks(tmp_path: Path) -> None:
    _png(tmp_path / "case1.png")
    _png(tmp_path / "case1_mask.png")
    _png(tmp_path / "sub" / "case2.png")
    _png(tmp_path / "sub" / "case2_mask.png")
    _png(tmp_path / "case3.png")
    manifest, problems = read_png_masks(tmp_path)
    assert list(manifest["sample_id"]) == ["case1", "sub__case2"]
    assert list(manifest["patient_id"]) == ["case1", "sub"]
    assert Path(manifest["mask_path"].iloc[0]).name == "case1_mask.png"
    assert [Path(p.file).name for p in problems] == ["case3.png"]


def test_unreadable_png_is_a_problem(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "good.png")
    _png(tmp_path / "masks" / "good.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    _png(tmp_path / "masks" / "broken.png")
    manifest, problems = read_png_masks(tmp_path)
    assert list(manifest["sample_id"]) == ["good"]
    assert len(problems) == 1 and "unreadable" in problems[0].error


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no folder"):
        read_png_masks(tmp_path / "absent")
    _png(tmp_path / "only_image.png")
    with pytest.raises(InputError, match="no pair"):
        read_png_masks(tmp_path)
