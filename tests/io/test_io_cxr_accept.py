"""Which DICOMs count as chest radiographs (modality, view, size) and Presentation LUT Shape
INVERSE honoured when reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cinelab.errors import InputError
from cinelab.io.cxr_dicom import (
    CxrAcceptance,
    read_cxr,
    read_cxr_dicom,
    read_cxr_header,
    write_cxr_dicom,
)

SIDE = 256
RAMP = (np.arange(SIDE * SIDE) % 256).reshape(SIDE, SIDE).astype(np.uint8)


@pytest.mark.parametrize(("tags", "field"), [
    ({"Modality": "CT"}, "Modality"),
    ({"Modality": "OT"}, "Modality"),
    ({"ViewPosition": "LL"}, "ViewPosition"),
    ({"ViewPosition": "LATERAL"}, "ViewPosition"),
])
def test_non_cxr_dicoms_are_refused(tmp_path: Path, tags: dict, field: str) -> None:
    path = write_cxr_dicom(tmp_path / "x.dcm", RAMP, **tags)
    with pytest.raises(InputError) as info:
        read_cxr(path, accept=CxrAcceptance())
    assert info.value.field == field
    read_cxr(path)  # no acceptance asked: read as before


def test_frontal_cr_dx_dr_and_missing_view_are_accepted(tmp_path: Path) -> None:
    for modality, view in (("CR", "PA"), ("DX", "AP SUPINE"), ("DX", None)):
        tags = {"ViewPosition": view} if view else {}
        path = write_cxr_dicom(tmp_path / f"{modality}.dcm", RAMP, modality=modality, **tags)
        assert read_cxr(path, accept=CxrAcceptance()).shape == (SIDE, SIDE)
    dr = write_cxr_dicom(tmp_path / "dr.dcm", RAMP, Modality="DR")
    assert read_cxr(dr, accept=CxrAcceptance()).shape == (SIDE, SIDE)


def test_minimum_side_and_a_configured_list(tmp_path: Path) -> None:
    small = write_cxr_dicom(tmp_path / "s.dcm", RAMP[:64, :200])
    with pytest.raises(InputError, match="256"):
        read_cxr(small, accept=CxrAcceptance())
    assert read_cxr(small, accept=CxrAcceptance(min_side=64)).shape == (64, 200)
    ct = write_cxr_dicom(tmp_path / "ct.dcm", RAMP, Modality="CT")
    assert read_cxr(ct, accept=CxrAcceptance(modalities=("CT",))).shape == (SIDE, SIDE)
    assert read_cxr_header(ct).modality == "CT"


def test_presentation_lut_shape_inverse_is_honoured(tmp_path: Path) -> None:
    plain = read_cxr_dicom(write_cxr_dicom(tmp_path / "p.dcm", RAMP))
    inverse = read_cxr_dicom(write_cxr_dicom(tmp_path / "i.dcm", RAMP,
                                             PresentationLUTShape="INVERSE"))
    np.testing.assert_array_equal(inverse, 255 - plain)
    mono1 = read_cxr_dicom(write_cxr_dicom(tmp_path / "m.dcm", RAMP, photometric="MONOCHROME1",
                                           PresentationLUTShape="INVERSE"))
    np.testing.assert_array_equal(mono1, 255 - plain)  # the standard DX pairing: inverted once
