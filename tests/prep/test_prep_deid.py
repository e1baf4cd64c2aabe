"""Pseudonymisation: keyed pseudonyms, the id map, DICOM de-identification, and no PHI in any
file written by ingest -> prepare -> flow on a synthetic RVF cohort with planted PHI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cinelab.data.manifest import read_manifest
from cinelab.errors import InputError
from cinelab.io.dicom import read_ultrasound
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.prep.deid import (
    IdMap,
    default_idmap_path,
    phi_values,
    pseudonym,
    scrub_value,
    write_deidentified,
)
from cinelab.prep.flow import prepare_flow
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.synth.dicom import write_ultrasound_dicom

PHI = {"PatientName": "Quorvax^Belindra", "PatientBirthDate": "19570314",
       "AccessionNumber": "ACC90817263", "InstitutionName": "Grimsvale Heart Hospital",
       "DeviceSerialNumber": "USX7712049K", "StudyDate": "20190405",
       "ReferringPhysicianName": "Drovkin^Hesper", "StudyTime": "101502"}


def _files(root: Path) -> list[Path]:
    """Every file under root, links included (not followed)."""
    return [Path(d) / f for d, _, names in os.walk(root) for f in names]


def _hits(roots: list[Path], values: list[str]) -> list[tuple[str, str]]:
    """(file, value) for every planted value found in the bytes (or link target) of a file."""
    needles = [v.encode() for v in values if v]
    hits = []
    for root in roots:
        for path in _files(root):
            data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
            data += str(path.relative_to(root)).encode()  # file names count too
            hits += [(str(path), n.decode()) for n in needles if n in data]
    return hits


def test_pseudonym_is_keyed_short_hex_and_stable() -> None:
    p = pseudonym("REDCAP-0012", b"secret-a")
    assert re.fullmatch(r"P[0-9a-f]{12}", p)
    assert pseudonym(" REDCAP-0012 ", b"secret-a") == p
    assert pseudonym("REDCAP-0012", b"secret-b") != p
    assert pseudonym("REDCAP-0013", b"secret-a") != p


def test_idmap_reuses_its_secret_and_refuses_a_lost_one(tmp_path: Path) -> None:
    path = default_idmap_path(tmp_path)
    first = IdMap.open(path)
    p = first.pseudonym("REDCAP-0001")
    key = first.file_key("Doe_Jane/echo.dcm")
    first.save()
    assert (tmp_path / ".cinelab-secret").stat().st_mode & 0o077 == 0
    again = IdMap.open(path)
    assert again.ids == {"REDCAP-0001": p} and again.pseudonym("REDCAP-0001") == p
    assert again.files[key] == "Doe_Jane/echo.dcm"
    other = IdMap.open(tmp_path / "elsewhere" / "map.csv")  # a new secret: new pseudonyms
    assert other.pseudonym("REDCAP-0001") != p
    (tmp_path / ".cinelab-secret").unlink()
    with pytest.raises(InputError, match="secret"):
        IdMap.open(path)


def test_scrub_value_replaces_longest_first() -> None:
    text = "/data/Doe_Jane/x.dcm: unreadable (Doe_Jane)"
    assert scrub_value(text, ["Doe_Jane", "/data/Doe_Jane/x.dcm"], "F1") == "F1: unreadable (F1)"


def test_deidentified_copy_has_no_phi_and_same_pixels(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (3, 24, 32), dtype=np.uint8)
    src = write_ultrasound_dicom(tmp_path / "raw.dcm", frames, 30.0, "REDCAP-0042",
                                 pixel_spacing_mm=(0.3, 0.3), **PHI)
    ds = pydicom.dcmread(src)
    ds.add_new(0x00091010, "LO", "Quorvax private note")  # a private tag
    ds.save_as(src)
    planted = phi_values(pydicom.dcmread(src))
    assert {"Quorvax", "Belindra", "20190405", "Drovkin"} <= set(planted)
    out1 = write_deidentified(src, tmp_path / "a.dcm", "P0123456789ab", b"k")
    out2 = write_deidentified(src, tmp_path / "b.dcm", "P0123456789ab", b"k")
    data = out1.read_bytes()
    assert data == out2.read_bytes()  # deterministic: reruns write the same file
    assert [v for v in [*planted, *PHI.values(), "REDCAP-0042", "private note"]
            if v.encode() in data] == []
    clean = pydicom.dcmread(out1)
    assert clean.PatientID == "P0123456789ab" and clean.PatientIdentityRemoved == "YES"
    assert clean.StudyInstanceUID != ds.StudyInstanceUID
    assert clean.SOPInstanceUID == clean.file_meta.MediaStorageSOPInstanceUID
    video = read_ultrasound(out1)
    np.testing.assert_array_equal(video.frames[..., 0], frames)
    assert video.pixel_spacing_mm == pytest.approx((0.3, 0.3))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rvf")
    raw = synth_rvf_cohort(base / "raw", n=6, seed=3, size=48, frames=12)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", base / "ingest")
    manifest_path = base / "ingest" / "manifest.csv"
    summary = prepare(read_manifest(manifest_path), base / "store", PrepSpec(size=32),
                      workers=1)
    assert summary.prepared >= 6 and summary.failed == 0
    flow = prepare_flow(base / "store", workers=1)
    assert flow.computed == summary.prepared and flow.failed == 0
    return {"raw": raw, "ingest": base / "ingest", "store": base / "store"}


def test_no_planted_phi_in_any_output_file(pipeline: dict[str, Path]) -> None:
    planted = json.loads((pipeline["raw"] / "phi_planted.json").read_text())
    values, ids = planted["values"], planted["study_ids"]
    assert {"PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName",
            "DeviceSerialNumber", "StudyDate"} <= set(next(iter(planted["files"].values())))
    assert _hits([pipeline["raw"]], values)  # the raw data does hold them (the test can see)
    outputs = [pipeline["ingest"], pipeline["store"]]
    kinds = {p.name.split(".", 1)[-1] for root in outputs for p in _files(root)}
    assert {"csv", "json", "npy", "flow.npy", "flow.json", "dcm"} <= kinds
    assert _hits(outputs, values) == []
    assert _hits(outputs, ids) == []  # study ids are pseudonymised too


def test_id_map_stays_with_the_raw_data(pipeline: dict[str, Path]) -> None:
    idmap = IdMap.open(default_idmap_path(pipeline["raw"]))
    planted = json.loads((pipeline["raw"] / "phi_planted.json").read_text())
    assert set(planted["study_ids"]) <= set(idmap.ids)
    manifest = pd.read_csv(pipeline["ingest"] / "manifest.csv", dtype=str)
    assert set(manifest["patient_id"]) <= set(idmap.ids.values())
    assert all(Path(p).parent == pipeline["ingest"].resolve() / "sources"
               for p in manifest["path"])
    store_ids = {p.name.split(".")[0] for p in (pipeline["store"] / "samples").glob("*.npy")}
    assert store_ids <= set(idmap.files)  # every output key traces back to its raw file
    assert all((pipeline["raw"] / idmap.files[k]).is_file() for k in store_ids)
