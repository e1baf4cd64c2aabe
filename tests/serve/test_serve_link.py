"""Pseudonymised results linked back to the original study: with ``link_to_original`` the
forwarded SR references the original Study/Series/SOP Instance UIDs, while the results kept
on disk (and every forward without it) stay pseudonymised."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from serve_fixtures import (
    PHI,
    QUICK_DICOM,
    capture_scp,
    chest_dicom,
    send_instances,
    tiny_cxr,
    wait_done,
)

from cinelab.serve.link import read_links, record_links, relink, uids_of

WAIT_S = 20.0



def _evidence(sr: Dataset) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs the SR's evidence names."""
    item = sr.CurrentRequestedProcedureEvidenceSequence[0]
    series = item.ReferencedSeriesSequence[0]
    return (str(item.StudyInstanceUID), str(series.SeriesInstanceUID),
            str(series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))


def test_record_read_and_relink(tmp_path: Path) -> None:
    path = tmp_path / "links" / "s.tsv"
    record_links(path, {"StudyInstanceUID": "1.1", "SOPInstanceUID": "1.2"},
                 {"StudyInstanceUID": "2.1", "SOPInstanceUID": "2.2"})
    record_links(path, {"StudyInstanceUID": "1.1"}, {"StudyInstanceUID": "2.1"})
    assert read_links(path) == {"2.1": "1.1", "2.2": "1.2"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    ds = Dataset()
    ds.StudyInstanceUID, ds.SOPInstanceUID = "2.1", "9.9"
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = "2.2"
    ds.ReferencedImageSequence = [ref]
    relink(ds, read_links(path))
    assert uids_of(ds) == {"StudyInstanceUID": "1.1", "SOPInstanceUID": "9.9"}
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2"
    assert read_links(tmp_path / "none.tsv") == {}


@pytest.mark.filterwarnings("ignore:.*person name")
@pytest.mark.parametrize("link", [True, False])
def test_forwarded_sr_links_to_the_original_study(service_factory: Any, tmp_path: Path,
                                                  link: bool) -> None:
    model = tiny_cxr(tmp_path / "cxr")
    pacs, forwarded = capture_scp()
    try:
        service = service_factory(
            node=True, models={"cxr": {"path": str(model), "pipeline": "cxr"}},
            routes=[{"modality": ["CR", "DX"], "models": ["cxr"]}], dicom=QUICK_DICOM,
            pseudonymise={"enabled": True},
            forward={"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.server_address[1],
                     "link_to_original": link})
        sent = chest_dicom(tmp_path / "cxr.dcm")
        for key, value in PHI.items():
            setattr(sent, key, value)
        original = (str(sent.StudyInstanceUID), str(sent.SeriesInstanceUID),
                    str(sent.SOPInstanceUID))
        assert send_instances(service.dicom_port, sent.SOPClassUID, sent) == [0]
        time.sleep(0.1)
        [study] = service.queue.studies()
        assert study.uid != original[0]
        wait_done(service, study.uid)
        deadline = time.time() + WAIT_S
        while not forwarded and time.time() < deadline:
            time.sleep(0.05)
        [out] = forwarded
        kept = pydicom.dcmread(service.paths.results(study.uid) / "sr.dcm")
        pseudonymised = _evidence(kept)
        assert pseudonymised[0] == study.uid and not set(pseudonymised) & set(original)
        assert service.paths.links(study.uid).is_file() == link
        if link:
            assert _evidence(out) == original and out.StudyInstanceUID == original[0]
        else:
            assert _evidence(out) == pseudonymised and out.StudyInstanceUID == study.uid
        assert out.SOPInstanceUID == kept.SOPInstanceUID
    finally:
        pacs.shutdown()
