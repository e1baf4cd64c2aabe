"""The DICOM node: C-ECHO, C-STORE of a real ultrasound DICOM -> SR + SEG that highdicom
reads back (values equal to predictions.csv, references to the sent instance), forwarding,
and planted PHI that never reaches logs or outputs."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    UltrasoundMultiFrameImageStorage,
    Verification,
)
from serve_fixtures import PHI, VIEW_WORDS, capture_scp, us_dicom, wait_done

from cinelab.serve.node import start_node
from cinelab.serve.sr import measure_columns, read_sr_measurements, write_sr
from conftest import real_path


def _scu() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    for syntax in (JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ae.add_requested_context(UltrasoundMultiFrameImageStorage, syntax)
    return ae


def _send(port: int, *datasets: Dataset) -> list[int]:
    assoc = _scu().associate("127.0.0.1", port, ae_title="CINELAB")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_echo(service_factory: Any) -> None:
    service = service_factory(node=True)
    assoc = _scu().associate("127.0.0.1", service.dicom_port, ae_title="CINELAB")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


def test_instance_limit_refused_and_quiet_time(service_factory: Any, tmp_path: Path) -> None:
    service = service_factory(start=False, limits={"instances_per_study": 2},
                              dicom={"port": 0, "quiet_seconds": 30})
    service.node = start_node(service.config.dicom, service.arrival)  # no worker threads
    study = "1.2.826.0.1.3680043.8.498.55"
    sent = [us_dicom(tmp_path / f"{i}.dcm", study=study, seed=i) for i in range(3)]
    assert _send(service.dicom_port, *sent) == [0, 0, 0xA700]
    assert not service.worker.step()  # still within the quiet time: not processed yet
    assert service.queue.get(study).status == "receiving"
    assert service.queue.promote_quiet(30, now=time.time() + 31) == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*SequenceOfUltrasoundRegions")
@pytest.mark.filterwarnings("ignore:.*person name")
def test_real_ultrasound_gets_sr_and_seg(service_factory: Any, tmp_path: Path) -> None:
    source = real_path("echo-dicom", "examples_ybr_color.dcm")
    pacs, forwarded = capture_scp()
    try:
        service = service_factory(node=True, forward={
            "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.server_address[1]})
        sent = pydicom.dcmread(source)
        assert _send(service.dicom_port, sent) == [0]
        assert _send(service.dicom_port, sent) == [0]  # a duplicate is accepted, ignored
        study = wait_done(service, str(sent.StudyInstanceUID))
        assert study.n_instances == 1 and study.completions == 1
        folder = service.paths.results(study.uid)
        sop = str(sent.SOPInstanceUID)
        preds = pd.read_csv(folder / "echonet" / "predictions.csv", dtype={"sample_id": str})
        [row] = preds.to_dict("records")
        assert row["sample_id"] == sop
        measured = read_sr_measurements(folder / "sr.dcm")[f"echonet:{sop}"]
        expected = {c: row[c] for c in measure_columns(preds) if pd.notna(row[c])}
        assert "ef" in expected and len(measured) == len(expected)
        assert measured["Left ventricular Ejection fraction"] == pytest.approx(row["ef"])
        sr = hd.sr.srread(str(folder / "sr.dcm"))
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
            .ReferencedSOPInstanceUID == sop
        assert sr.StudyInstanceUID == sent.StudyInstanceUID
        segs = sorted(folder.glob("seg-*.dcm"))
        assert segs
        for path in segs:
            seg = hd.seg.segread(str(path))
            ref = seg.SourceImageSequence[0]
            assert ref.ReferencedSOPInstanceUID == sop
            assert ref.ReferencedSOPClassUID == UltrasoundMultiFrameImageStorage
            assert 1 <= ref.ReferencedFrameNumber <= sent.NumberOfFrames
            mask = seg.pixel_array
            assert mask.shape[-2:] == (sent.Rows, sent.Columns) and mask.any()
        deadline = time.time() + 10
        while len(forwarded) < 1 + len(segs) and time.time() < deadline:
            time.sleep(0.1)
        assert sorted(str(d.Modality) for d in forwarded) == sorted(["SR"] + ["SEG"] * len(segs))
    finally:
        pacs.shutdown()


def test_sr_writes_intervals_and_every_kind(tmp_path: Path) -> None:
    source = us_dicom(tmp_path / "a.dcm")
    for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName",
                    "AccessionNumber"):
        setattr(source, keyword, "")
    sop = str(source.SOPInstanceUID)
    table = pd.DataFrame([{"sample_id": sop, "patient_id": "p", "ef": 55.5, "ef_lo": 48.0,
                           "ef_hi": 61.25, "edv": 120.0, "esv": 54.0, "lv_mass": 140.0,
                           "age": 61.5, "probability": 0.25, "ood_score": 3.0}])
    path = write_sr(tmp_path / "sr.dcm", {"model": table}, {sop: source})
    measured = read_sr_measurements(path)[f"model:{sop}"]
    assert measured == {
        "Left ventricular Ejection fraction": 55.5,
        "Left ventricular Ejection fraction lower interval bound": 48.0,
        "Left ventricular Ejection fraction upper interval bound": 61.25,
        "Left ventricular end diastolic volume": 120.0,
        "Left ventricular end systolic volume": 54.0, "Left ventricular Mass": 140.0,
        "Age estimated from imaging": 61.5, "Probability of the positive finding": 0.25}


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_planted_phi_never_reaches_logs_or_outputs(service_factory: Any, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cinelab")
    original_study = "1.2.826.0.1.3680043.8.498.777"
    planted = {**PHI, "SeriesDescription": "4CH cine PATIENT-12345 John"}
    sent = [us_dicom(tmp_path / f"{i}.dcm", study=original_study, seed=i, phi=planted)
            for i in range(2)]
    service = service_factory(node=True, pseudonymise={"enabled": True,
                                                       "series_description": VIEW_WORDS})
    assert _send(service.dicom_port, *sent) == [0, 0]
    time.sleep(0.1)
    [study] = service.queue.studies()
    assert study.uid != original_study
    wait_done(service, study.uid)
    shutil.copy(service.paths.db, tmp_path / "copy.db")  # WAL content included by sqlite
    haystack = _all_bytes(service.paths.root).lower() + caplog.text.lower().encode()
    for value in [*PHI.values(), "PATIENT-12345", "John",
                  original_study, *(str(d.SOPInstanceUID) for d in sent)]:
        for form in {value, value.replace("^", " ")}:
            assert form.lower().encode() not in haystack, f"{form} leaked"
    stored = [pydicom.dcmread(p) for p in service.paths.incoming(study.uid).glob("*.dcm")]
    assert len(stored) == 2
    assert all(str(d.PatientID).startswith("P") and d.PatientIdentityRemoved == "YES"
               for d in stored)
    assert len({d.PatientID for d in stored}) == 1  # one keyed pseudonym per patient
    assert [d.SeriesDescription for d in stored] == ["4CH", "4CH"]  # only the view word
