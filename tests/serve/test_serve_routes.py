"""The non-echo routes end to end over the DICOM node: a DX chest radiograph -> the CXR
ensemble -> results JSON and an SR holding the probability and referencing the sent instance;
a short-axis cine MR study -> the CMR segmenter -> volumes and EF in the SR, SEGs of the
end-diastolic and end-systolic masks referencing the source instances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
)
from serve_fixtures import (
    QUICK_DICOM,
    chest_dicom,
    send_instances,
    tiny_cmr,
    tiny_cxr,
    wait_done,
)

from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.serve.sr import read_sr_measurements

PROBABILITY = "Probability of the positive finding"


@pytest.fixture(scope="module")
def cxr_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CXR ensemble shared by this module's tests."""
    return tiny_cxr(tmp_path_factory.mktemp("serve_cxr") / "cxr")


@pytest.mark.filterwarnings("ignore:.*person name")
def test_chest_radiograph_gets_probability_in_json_and_sr(service_factory: Any, cxr_model: Path,
                                                         tmp_path: Path) -> None:
    service = service_factory(node=True, models={"cxr": {"path": str(cxr_model),
                                                         "pipeline": "cxr"}},
                              routes=[{"modality": ["CR", "DX"], "models": ["cxr"]}],
                              dicom=QUICK_DICOM)
    sent = chest_dicom(tmp_path / "cxr.dcm")
    assert send_instances(service.dicom_port, DigitalXRayImageStorageForPresentation, sent) == [0]
    study = wait_done(service, str(sent.StudyInstanceUID))
    folder = service.paths.results(study.uid)
    results = json.loads((folder / "results.json").read_text())
    sop = str(sent.SOPInstanceUID)
    [row] = results["models"]["cxr"]["predictions"]
    assert row["sample_id"] == sop and 0.0 <= row["probability"] <= 1.0
    assert results["files"] == ["sr.dcm"]
    measured = read_sr_measurements(folder / "sr.dcm")[f"cxr:{sop}"]
    assert measured[PROBABILITY] == pytest.approx(row["probability"])
    sr = hd.sr.srread(str(folder / "sr.dcm"))
    assert sr.StudyInstanceUID == sent.StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == sop
    [group] = sr.content.get_image_measurement_groups()
    [image] = group.get_measurements()[0].referenced_images
    assert image.referenced_sop_instance_uid == sop


def _cine_study(root: Path) -> list[Dataset]:
    """A synthetic short-axis cine (every third slice of 11: 4 slices x 4 frames) as one
    series of single-frame instances sharing one Frame of Reference."""
    cohort = synth_cmr_cohort(root, n=1, seed=2, layout="dsb", size=(40, 36), n_frames=4,
                              defects=False)
    frame_of_reference, series = generate_uid(), generate_uid()
    found = [pydicom.dcmread(p) for p in sorted(cohort.dsb_root.rglob("*.dcm"))]
    locations = sorted({float(d.SliceLocation) for d in found})[::3]
    sent = [d for d in found if float(d.SliceLocation) in locations]
    for ds in sent:
        ds.FrameOfReferenceUID, ds.SeriesInstanceUID = frame_of_reference, series
    return sent


@pytest.mark.filterwarnings("ignore:.*person name")
def test_cine_mr_gets_volumes_in_sr_and_segs(service_factory: Any, tmp_path: Path) -> None:
    model = tiny_cmr(tmp_path / "cmr")
    service = service_factory(node=True, models={"cmr": {"path": str(model),
                                                         "pipeline": "cmr"}},
                              routes=[{"modality": "MR", "models": ["cmr"]}], dicom=QUICK_DICOM)
    sent = _cine_study(tmp_path / "synth")
    assert set(send_instances(service.dicom_port, MRImageStorage, *sent)) == {0}
    study = wait_done(service, str(sent[0].StudyInstanceUID))
    folder = service.paths.results(study.uid)
    results = json.loads((folder / "results.json").read_text())
    [row] = results["models"]["cmr"]["predictions"]
    assert row["sample_id"] == study.uid and row["edv"] > row["esv"] > 0
    measured = read_sr_measurements(folder / "sr.dcm")[f"cmr:{study.uid}"]
    assert measured["Left ventricular end diastolic volume"] == pytest.approx(row["edv"])
    assert measured["Left ventricular end systolic volume"] == pytest.approx(row["esv"])
    assert measured["Left ventricular Ejection fraction"] == pytest.approx(row["ef"])
    by_sop = {str(d.SOPInstanceUID): d for d in sent}
    segs = [hd.seg.segread(str(folder / f)) for f in results["files"] if f.startswith("seg-")]
    assert len(segs) == 2 and not list(folder.glob(".cine-*"))  # ED and ES, one series
    for seg in segs:
        assert [d.SegmentLabel for d in seg.SegmentSequence] == \
            ["Right ventricle", "Myocardium", "Left ventricle"]
        refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        sources = [by_sop[r.ReferencedSOPInstanceUID] for r in refs]
        assert len(sources) == 4 and seg.StudyInstanceUID == sent[0].StudyInstanceUID
        assert len({float(d.TriggerTime) for d in sources}) == 1  # the slices of one frame
        uids = [str(d.SOPInstanceUID) for d in sources]
        lv = seg.get_pixels_by_source_instance(uids, segment_numbers=[3])[..., 0] > 0
        image = np.stack([d.pixel_array for d in sources]).astype(float)
        assert lv.shape == image.shape and lv.any() and not lv.all()
        assert image[lv].mean() > image[~lv].mean() + 20  # the bright blood pool
