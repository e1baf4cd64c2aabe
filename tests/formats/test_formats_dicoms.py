"""Folder-of-DICOMs reader: nested good files become a manifest, bad files become problems."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cinelab.data.manifest import REQUIRED, validate_manifest
from cinelab.errors import InputError
from cinelab.formats.dicoms import read_dicom_folder
from cinelab.synth.dicom import write_ultrasound_dicom

FPS = 20.0


def _clip(path: Path, patient: str, frames: int = 3, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).integers(0, 256, (frames, 12, 16), dtype=np.uint8)
    return write_ultrasound_dicom(path, data, FPS, patient)


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """Good clips at several depths (with and without suffix) mixed with bad files."""
    root = tmp_path / "cohort"
    _clip(root / "p1" / "study1" / "a.dcm", "P1")
    _clip(root / "p1" / "study1" / "b.dcm", "P1", frames=5)
    _clip(root / "p2" / "1.2.840.113619.2.55", "P2")  # UID-named, no suffix
    _clip(root / "top.DCM", "P3")
    nopid = _clip(root / "p4" / "nopid.dcm", "X")
    ds = pydicom.dcmread(nopid)
    del ds.PatientID
    ds.save_as(nopid)
    header_only = _clip(root / "p5" / "header.dcm", "P5")
    ds = pydicom.dcmread(header_only)
    del ds.PixelData
    ds.save_as(header_only)
    ct = get_testdata_file("CT_small.dcm", download=False)
    if ct is not None:
        shutil.copy(ct, root / "p6_ct.dcm")
    (root / "garbage.dcm").write_bytes(b"\x00\x01 not dicom" * 10)
    (root / "p2" / "noext_garbage").write_text("neither is this")
    (root / "empty.dcm").write_bytes(b"")
    (root / "README.txt").write_text("notes, skipped silently")
    (root / "labels.csv").write_text("a,b\n1,2\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00")
    return root


def test_good_files_become_a_manifest(cohort: Path) -> None:
    df, problems = read_dicom_folder(cohort)
    assert list(df.columns[: len(REQUIRED)]) == list(REQUIRED)
    assert sorted(df["sample_id"]) == sorted([
        "p1__study1__a", "p1__study1__b", "p2__1.2.840.113619.2.55", "top", "p4__nopid"])
    row = df.set_index("sample_id").loc["p1__study1__b"]
    assert row["patient_id"] == "P1" and row["modality"] == "echo"
    assert row["n_frames"] == 5 and row["rows"] == 12 and row["columns"] == 16
    assert row["fps"] == pytest.approx(FPS) and row["fold"] == -1 and row["split"] == ""
    assert Path(row["path"]).is_absolute() and Path(row["path"]).is_file()
    assert df.set_index("sample_id").loc["p4__nopid", "patient_id"] == "p4__nopid"
    assert validate_manifest(df) == []


def test_bad_files_become_problems(cohort: Path) -> None:
    _, problems = read_dicom_folder(cohort)
    by_file = {Path(p.file).name: p for p in problems}
    expected = {"nopid.dcm", "header.dcm", "garbage.dcm", "noext_garbage", "empty.dcm"}
    if (cohort / "p6_ct.dcm").exists():
        expected.add("p6_ct.dcm")
        assert by_file["p6_ct.dcm"].column == "Modality"
    assert set(by_file) == expected  # .txt, .csv and hidden files are skipped silently
    assert all(p.stage == "ingest" for p in problems)
    assert by_file["nopid.dcm"].column == "PatientID"
    assert by_file["header.dcm"].column == "PixelData"
    assert "not DICOM" in by_file["garbage.dcm"].error
    assert "empty" in by_file["empty.dcm"].error


def test_not_recursive(cohort: Path) -> None:
    df, _ = read_dicom_folder(cohort, recursive=False)
    assert list(df["sample_id"]) == ["top"]


def test_deterministic_and_collisions_resolved(tmp_path: Path) -> None:
    _clip(tmp_path / "x.dcm", "A")
    _clip(tmp_path / "x", "B")
    first, _ = read_dicom_folder(tmp_path)
    second, _ = read_dicom_folder(tmp_path)
    assert first.equals(second)
    assert sorted(first["sample_id"]) == ["x", "x.dcm"]


def test_empty_and_missing_folder(tmp_path: Path) -> None:
    df, problems = read_dicom_folder(tmp_path)
    assert len(df) == 0 and problems == [] and set(REQUIRED) <= set(df.columns)
    with pytest.raises(InputError, match="root"):
        read_dicom_folder(tmp_path / "absent")
