"""De-identification by the DICOM PS3.15 Basic Application Level Confidentiality Profile.

A synthetic ultrasound multi-frame DICOM gets a unique marker value in EVERY attribute of the
profile table (prep.ps315, Table E.1-1) at the top level and again inside a sequence item, plus
the repeating groups (curves, overlays), private elements (top level and nested), the file meta
(AE titles, private information, implementation identity) and an age over 89. The de-identified
copy must contain none of the planted values anywhere in its bytes, while the pixels, the timing
and the geometry the pipelines read survive, and a rerun must write the same bytes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UltrasoundMultiFrameImageStorage

from cinelab.errors import InputError
from cinelab.io.dicom import read_ultrasound
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.prep import deid
from cinelab.prep.deid import (
    DUMMY_TEXT,
    burned_in_annotation,
    deidentify_dataset,
    phi_values,
    profile_action,
    write_deidentified,
)
from cinelab.prep.ps315 import BASIC_PROFILE
from cinelab.synth.dicom import write_ultrasound_dicom

PSEUDONYM = "P00112233aabb"
SECRET = b"profile-test-secret"
FPS = 25.0
SPACING = (0.25, 0.3)
COMMAND_GROUP = (0x00001000, 0x00001001)  # command-set UIDs: not storable in a file
NESTING_SEQUENCE = "DerivationCodeSequence"  # not in the table: kept, its items walked
BINARY_VRS = ("OB", "OW", "UN")


class Planter:
    """Unique, VR-valid marker values; remembers every text that must not survive."""

    def __init__(self) -> None:
        self.n = 0
        self.needles: dict[str, str] = {}  # needle -> where it was planted

    def value(self, vr: str, where: str) -> object:
        self.n += 1
        i = self.n
        day = (dt.date(1931, 1, 1) + dt.timedelta(days=i)).strftime("%Y%m%d")
        if vr == "PN":
            value = f"ZQ{i:04d}F^ZQ{i:04d}G"
            needles = value.split("^")
        elif vr == "DA":
            value = needles = day
        elif vr == "TM":
            value = needles = f"235959.{900000 + i:06d}"
        elif vr == "DT":
            value = needles = f"{day}235959.{800000 + i:06d}"
        elif vr == "UI":
            value = needles = f"1.2.826.0.1.3680043.9.7777.{1000 + i}"
        elif vr == "DS":
            value = needles = f"{7000000 + i}.125"
        elif vr == "IS":
            value = needles = f"{880000000000 + i}"  # 12 digits: never inside a keyed UID
        elif vr == "AS":
            value = needles = "097Y" if i < 500 else "098Y"
        elif vr == "US":
            value, needles = 0xF1E1 + 0x0101 * (i % 8), None
            self.needles["hex:" + int(value).to_bytes(2, "little").hex()] = where
        elif vr in BINARY_VRS:
            value = f"ZQ{i:04d}B".encode()
            needles = value.decode()
        else:  # AE CS LO LT SH ST UC UR UT
            value = needles = f"ZQ{i:04d}T"
        for needle in [needles] if isinstance(needles, str) else needles or []:
            self.needles[needle] = where
        return value


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def _plant_profile(ds: Dataset, planter: Planter, where: str,
                   skip: tuple[int, ...] = ()) -> list[int]:
    """Every profile attribute into `ds`; returns the tags planted."""
    planted = []
    for tag in sorted(BASIC_PROFILE):
        if tag in COMMAND_GROUP or tag in skip:
            continue
        vr = _vr(tag)
        name = f"{where}:{keyword_for_tag(tag) or hex(tag)}"
        if vr == "SQ":
            item = Dataset()
            if BASIC_PROFILE[tag].endswith("U*"):  # reference sequences: UIDs inside
                item.ReferencedSOPClassUID = UltrasoundMultiFrameImageStorage
                item.ReferencedSOPInstanceUID = planter.value("UI", name)
            else:
                item.CodeMeaning = planter.value("LO", name)
            ds.add_new(tag, "SQ", Sequence([item]))
        elif tag >> 16 == 0x0002 and where == "top":  # MediaStorageSOPInstanceUID
            ds.file_meta.add_new(tag, vr, planter.value(vr, name))
        else:
            ds.add_new(tag, vr, planter.value(vr, name))
        planted.append(tag)
    return planted


def _plant_extras(ds: Dataset, planter: Planter, where: str) -> None:
    """Private elements, curve and overlay groups."""
    block = ds.private_block(0x0009, "ZQ PRIVATE CREATOR", create=True)
    planter.needles["ZQ PRIVATE CREATOR"] = f"{where}:private creator"
    block.add_new(0x01, "LO", planter.value("LO", f"{where}:private LO"))
    block.add_new(0x02, "UN", planter.value("UN", f"{where}:private UN"))
    ds.add_new(0x60000022, "LO", planter.value("LO", f"{where}:OverlayDescription"))
    ds.add_new(0x60001500, "LO", planter.value("LO", f"{where}:OverlayLabel"))
    ds.add_new(0x60004000, "LT", planter.value("LT", f"{where}:OverlayComments"))
    ds.add_new(0x60003000, "OW", planter.value("OW", f"{where}:OverlayData"))
    ds.add_new(0x50002500, "LO", planter.value("LO", f"{where}:CurveLabel"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("deid")
    rng = np.random.default_rng(12)
    frames = rng.integers(0, 0x80, (6, 48, 64), dtype=np.uint8)  # bytes < 0x80: no US marker
    planter = Planter()
    src = write_ultrasound_dicom(base / "raw.dcm", frames, FPS, "ZQSTUDY0001",
                                 pixel_spacing_mm=SPACING)
    ds = pydicom.dcmread(src)
    top = _plant_profile(ds, planter, "top")
    _plant_extras(ds, planter, "top")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113072", "DCM", "x"
    nested = _plant_profile(item, planter, "nested")
    _plant_extras(item, planter, "nested")
    ds.add_new(tag_for_keyword(NESTING_SEQUENCE), "SQ", Sequence([item]))
    meta = ds.file_meta
    for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                    "ReceivingApplicationEntityTitle", "ImplementationVersionName"):
        setattr(meta, keyword, planter.value("AE", f"meta:{keyword}"))
    meta.ImplementationClassUID = planter.value("UI", "meta:ImplementationClassUID")
    meta.PrivateInformationCreatorUID = planter.value("UI", "meta:PrivateInformationCreatorUID")
    meta.PrivateInformation = planter.value("OB", "meta:PrivateInformation")
    ds.save_as(src)  # as it is: enforce_file_format would reset the SOP instance UID in the meta
    out_a = write_deidentified(src, base / "a.dcm", PSEUDONYM, SECRET)
    out_b = write_deidentified(src, base / "b.dcm", PSEUDONYM, SECRET)
    return {"src": src, "a": out_a, "b": out_b, "frames": frames, "top": top,
            "nested": nested, "needles": planter.needles}


def test_every_profile_attribute_was_planted(planted: dict) -> None:
    assert len(BASIC_PROFILE) == 438
    assert set(planted["top"]) == set(BASIC_PROFILE) - set(COMMAND_GROUP)
    assert set(planted["nested"]) == set(BASIC_PROFILE) - set(COMMAND_GROUP)
    raw = pydicom.dcmread(planted["src"])
    assert raw.PatientAge == "097Y" and raw.file_meta.SourceApplicationEntityTitle
    data = planted["src"].read_bytes()
    missing = [(n, w) for n, w in planted["needles"].items() if _find(data, n) < 0]
    assert missing == []  # the raw file does hold every planted value (the scan can see)
    assert len(planted["needles"]) > 2 * len(BASIC_PROFILE)


def _find(data: bytes, needle: str) -> int:
    """Offset of a needle (text, or hex of a binary value) in data, -1 when absent."""
    if needle.startswith("hex:"):
        return data.find(bytes.fromhex(needle[4:]))
    return data.find(needle.encode())


def test_no_planted_value_survives_in_any_byte(planted: dict) -> None:
    data = planted["a"].read_bytes()
    hits = [(w, n) for n, w in planted["needles"].items() if _find(data, n) >= 0]
    assert hits == []


def test_rerun_writes_identical_bytes(planted: dict) -> None:
    assert planted["a"].read_bytes() == planted["b"].read_bytes()


def test_profile_actions_and_bookkeeping(planted: dict) -> None:
    raw, clean = pydicom.dcmread(planted["src"]), pydicom.dcmread(planted["a"])
    assert clean.PatientID == PSEUDONYM and clean.PatientName == PSEUDONYM
    assert clean.PatientIdentityRemoved == "YES"
    assert clean.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    for keyword in ("PatientAge", "StudyDescription", "SeriesDescription", "ProtocolName",
                    "ImageComments", "ReferringPhysicianAddress", "Occupation",
                    "RequestingService", "ReferencedPatientSequence", "OtherPatientIDs"):
        assert keyword not in clean, keyword
    assert clean.StudyDate == "" and clean.AccessionNumber == ""  # Z: kept, empty
    assert clean.PersonName == DUMMY_TEXT  # D: a dummy value
    assert clean.StudyInstanceUID.startswith("2.25.")  # U: keyed UID
    refs = clean.ReferencedImageSequence[0]  # X/Z/U*: kept, the UIDs inside replaced
    assert refs.ReferencedSOPClassUID == UltrasoundMultiFrameImageStorage
    assert refs.ReferencedSOPInstanceUID.startswith("2.25.")
    nested = clean[NESTING_SEQUENCE][0]
    assert nested.CodeValue == "113072" and "PatientAge" not in nested
    assert [e.keyword for e in clean.iterall() if _removed(profile_action(int(e.tag)))] == []
    assert not any(e.tag.is_private for e in clean.iterall())
    assert not any(e.tag.group & 0xFF00 in (0x5000, 0x6000) for e in clean.iterall())
    assert set(clean.file_meta.keys()) <= {0x00020000, 0x00020001, 0x00020002, 0x00020003,
                                           0x00020010, 0x00020012, 0x00020013}
    assert clean.file_meta.MediaStorageSOPInstanceUID == clean.SOPInstanceUID
    written = {PSEUDONYM, DUMMY_TEXT, "19000101000000"}  # pseudonym and dummies
    assert [v for v in phi_values(clean) if v not in written and not v.startswith("2.25.")] == []
    raw_phi = set(phi_values(pydicom.dcmread(planted["src"])))
    assert {"ZQ PRIVATE CREATOR", "097Y", raw.PatientID} <= raw_phi


def test_pixels_timing_and_geometry_survive(planted: dict) -> None:
    raw, clean = pydicom.dcmread(planted["src"]), pydicom.dcmread(planted["a"])
    for keyword in ("Rows", "Columns", "NumberOfFrames", "FrameTime", "FrameIncrementPointer",
                    "SOPClassUID", "PhotometricInterpretation", "BitsStored"):
        assert clean.get(keyword) == raw.get(keyword), keyword
    assert clean.SequenceOfUltrasoundRegions == raw.SequenceOfUltrasoundRegions
    np.testing.assert_array_equal(clean.pixel_array, planted["frames"])
    video = read_ultrasound(planted["a"])
    np.testing.assert_array_equal(video.frames[..., 0], planted["frames"])
    assert video.fps == pytest.approx(FPS)
    assert video.pixel_spacing_mm == pytest.approx(SPACING)


def _text_band(frames: np.ndarray) -> np.ndarray:
    out = frames.copy()
    for frame in out:
        cv2.putText(frame, "DOE JANE 12/03/1957", (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    255, 1, cv2.LINE_AA)
    return out


def test_burned_in_annotation_flag_and_top_band_heuristic() -> None:
    rng = np.random.default_rng(4)
    frames = (rng.random((10, 96, 128)) * 60 + 40).astype(np.uint8)  # moving speckle
    flagged = Dataset()
    flagged.BurnedInAnnotation = "YES"
    assert burned_in_annotation(flagged) == "BurnedInAnnotation (0028,0301) is YES"
    clean = Dataset()
    clean.BurnedInAnnotation = "NO"
    assert burned_in_annotation(clean) is None
    assert burned_in_annotation(clean, frames) is None
    smooth = np.broadcast_to(np.linspace(0, 255, 128, dtype=np.float32), (4, 96, 128))
    assert burned_in_annotation(None, smooth.astype(np.uint8)) is None
    found = burned_in_annotation(None, _text_band(frames))
    assert found is not None and found.startswith("text-like content in the top 12 rows")
    rgb = np.repeat(_text_band(frames)[..., None], 3, axis=-1)
    assert burned_in_annotation(clean, rgb) == found
    assert burned_in_annotation(None, _text_band(frames)[0]) is not None  # one frame
    assert burned_in_annotation(None, np.zeros((3, 4, 4), np.uint8)) is None  # too small


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("with_time", [True, False])
@pytest.mark.parametrize("bad", ["2016-05-03", "garbage", "20161399", "1", "ZQ^Doe^Jane"])
def test_unreadable_dates_outside_the_table_are_removed_not_a_crash(bad: str,
                                                                     with_time: bool) -> None:
    ds = Dataset()
    ds.DateOfLastCalibration = bad  # not in the table
    if with_time:
        ds.TimeOfLastCalibration = bad
    ds.add_new(0x00181202, "DT", bad)  # DateTimeOfLastCalibration, not in the table
    deidentify_dataset(ds, PSEUDONYM, SECRET)
    assert "DateOfLastCalibration" not in ds and 0x00181202 not in ds
    assert ds.get("TimeOfLastCalibration") in (None, "")  # emptied with its unreadable date
    assert ds.PatientID == PSEUDONYM


def test_a_time_with_more_values_than_its_date_is_emptied() -> None:
    ds = Dataset()
    ds.DateOfLastCalibration, ds.TimeOfLastCalibration = "20160503", ["120850", "130000"]
    deidentify_dataset(ds, PSEUDONYM, SECRET)
    assert ds.TimeOfLastCalibration is None and ds.DateOfLastCalibration != "20160503"


def test_readable_dates_outside_the_table_are_shifted_the_same_way_each_time() -> None:
    def shifted() -> tuple[str, str]:
        ds = Dataset()
        ds.DateOfLastCalibration, ds.TimeOfLastCalibration = "20160503", "120850"
        deidentify_dataset(ds, PSEUDONYM, SECRET)
        return ds.DateOfLastCalibration, ds.TimeOfLastCalibration

    first = shifted()
    assert first == shifted() and first[0] != "20160503"


def _removed(action: str | None) -> bool:
    """Does the profile remove the attribute (X, and X/Z, X/D, X/Z/D chosen as X)?"""
    return bool(action) and action.startswith("X") and not action.endswith("U*")


def test_rvf_ingest_writes_no_planted_value(tmp_path: Path) -> None:
    """The ingest that pseudonymises (RVF) on a cohort whose every DICOM has the whole profile
    planted: no output file (manifest, problems, de-identified copies) holds any of it."""
    def cohort(name: str) -> Path:
        return synth_rvf_cohort(tmp_path / name, n=3, seed=5, size=32, frames=6,
                                multi_video_fraction=0.0)

    plain = cohort("plain")
    expected, expected_problems = ingest_rvf(plain, plain / "classes.csv", plain / "splits.csv",
                                             tmp_path / "plain-ingest")
    raw = cohort("raw")
    (raw / ".cinelab-secret").write_bytes((plain / ".cinelab-secret").read_bytes())  # same keys
    planter = Planter()
    studies = set()
    for path in sorted(raw.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        _plant_profile(ds, planter, path.name, skip=(0x00100020, 0x00020003))  # ingest keys
        _plant_extras(ds, planter, path.name)
        ds.file_meta.SourceApplicationEntityTitle = planter.value("AE", f"{path.name}:AE")
        ds.save_as(path)
        studies.add(str(ds.get("PatientID") or ""))
    out = tmp_path / "ingest"
    manifest, problems = ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", out)
    assert len(manifest) >= 3  # the planted cohort ingests exactly like the plain one
    assert list(manifest["sample_id"]) == list(expected["sample_id"])
    assert [(p.file, p.error) for p in problems] == [(p.file, p.error)
                                                    for p in expected_problems]
    needles = {n: w for n, w in planter.needles.items()  # 2-byte US values would match the
               if not n.startswith("hex:")}  # phantom's pixels (the fixture test has them)
    needles.update({s: "study id" for s in studies if s})
    hits = [(str(f.relative_to(out)), w) for f in out.rglob("*") if f.is_file()
            for n, w in needles.items() if _find(f.read_bytes(), n) >= 0]
    assert hits == []
    copies = [pydicom.dcmread(f) for f in sorted((out / "sources").glob("*.dcm"))]
    assert len(copies) == len(manifest)
    assert [e.keyword for ds in copies for e in ds.iterall()
            if _removed(profile_action(int(e.tag)))] == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_a_value_no_handler_can_read_is_refused_naming_only_the_tag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_ultrasound_dicom(tmp_path / "raw.dcm", np.zeros((2, 16, 16), np.uint8), FPS,
                                 "ZQSTUDY0009")
    ds = pydicom.dcmread(src)
    ds.DateOfLastCalibration = "ZQ-Doe-Jane"
    ds.save_as(src)
    monkeypatch.setattr(deid, "_readable", lambda elem: True)  # let dicognito meet it
    with pytest.raises(InputError) as caught:
        write_deidentified(src, tmp_path / "out.dcm", PSEUDONYM, SECRET)
    assert caught.value.field == "DICOM header (0018,1200)"
    assert caught.value.found == "ValueError while de-identifying (0018,1200)"
    assert "ZQ-Doe" not in str(caught.value) and not (tmp_path / "out.dcm").exists()
