"""Pseudonymised DICOM-folder ingest: no names, raw PatientIDs or raw paths in what is
written; burned-in annotation flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.formats.ingest import ingest
from cinelab.prep.deid import IdMap, default_idmap_path
from cinelab.prep.deid_ingest import burned_in_problems, protect_dicom_ingest
from cinelab.synth.dicom import write_ultrasound_dicom

NAME_FOLDER = "Doe_John_1957"
RAW_ID = "MRN-4455667"


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for k, burned in enumerate(("NO", "YES")):
        write_ultrasound_dicom(root / NAME_FOLDER / f"{NAME_FOLDER}_{k}.dcm",
                               rng.integers(0, 255, (3, 12, 16), dtype=np.uint8), 30.0,
                               RAW_ID, PatientName="Doe^John", BurnedInAnnotation=burned)
    write_ultrasound_dicom(root / "Roe_Jane" / "clip.dcm",
                           rng.integers(0, 255, (3, 12, 16), dtype=np.uint8), 30.0, "MRN-1")
    (root / NAME_FOLDER / "broken.dcm").write_bytes(b"not a dicom")
    return root


def _written_text(out: Path) -> str:
    text = "".join(p.read_text() for p in out.glob("*.csv"))
    return text + "".join(str(pydicom.dcmread(p)) for p in (out / "sources").glob("*.dcm"))


def test_pseudonymised_ingest_keeps_no_identifier(raw, tmp_path):
    out = tmp_path / "ingest"
    run = CliRunner().invoke(app, ["ingest", str(raw), "--out", str(out), "--layout", "dicom",
                                   "--option", "pseudonymise=true"])
    assert run.exit_code == 0, run.output
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    idmap = IdMap.open(default_idmap_path(raw))
    patient = idmap.pseudonym(RAW_ID)
    assert sorted(manifest["sample_id"]) == sorted([f"{patient}_1", f"{patient}_2",
                                                    f"{idmap.pseudonym('MRN-1')}_1"])
    assert manifest["path"].str.startswith(str(out / "sources")).all()
    text = _written_text(out)
    for secret in (NAME_FOLDER, "Doe", "Roe_Jane", RAW_ID, str(raw)):
        assert secret not in text, secret
    problems = pd.read_csv(out / "problems.csv", dtype=str)
    burned = problems[problems["column"] == "BurnedInAnnotation"]
    assert len(burned) == 1 and burned["file"].iat[0].startswith("F")
    assert len(problems) == 2  # the broken file, named by its key
    assert pydicom.dcmread(manifest["path"].iat[0]).PatientID == patient


def test_plain_ingest_flags_burned_in_annotation_too(raw, tmp_path):
    result = ingest(raw, layout="dicom")
    assert any(NAME_FOLDER in s for s in result.manifest["sample_id"])  # ids from paths
    protected = protect_dicom_ingest(result, raw, tmp_path / "o")
    flagged = [p for p in protected.problems if p.column == "BurnedInAnnotation"]
    assert len(flagged) == 1 and flagged[0].file.endswith("_1.dcm")
    assert burned_in_problems(result.manifest.iloc[:0]) == []
