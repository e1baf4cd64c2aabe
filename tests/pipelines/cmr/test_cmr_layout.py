"""Any CMR source folder -> manifest (layout detected); splits by patient; relative paths."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.errors import InputError
from cinelab.pipelines.cmr.layout import assign_splits, read_cmr_folder
from cinelab.pipelines.cmr.synth import synth_cmr_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return synth_cmr_cohort(tmp_path_factory.mktemp("cmrfolder"), n=3, seed=0, layout="acdc",
                            defects=False, n_frames=4, size=(32, 32))


def test_layouts_are_detected(cohort, tmp_path: Path) -> None:
    acdc = read_cmr_folder(cohort.acdc_root)
    assert len(acdc) == 6 and set(acdc["phase"]) == {"ED", "ES"}
    rel = acdc.assign(path=[Path(p).relative_to(cohort.acdc_root) for p in acdc["path"]],
                      mask_path=[Path(p).relative_to(cohort.acdc_root)
                                 for p in acdc["mask_path"]])
    write_manifest(rel, cohort.acdc_root / "subset.csv")
    again = read_cmr_folder(cohort.acdc_root / "subset.csv")  # paths beside the CSV
    assert again["path"].tolist() == acdc["path"].tolist()
    assert again["mask_path"].tolist() == acdc["mask_path"].tolist()
    with pytest.raises(InputError, match="source"):
        read_cmr_folder(tmp_path / "missing")
    with pytest.raises(InputError, match="images"):
        read_cmr_folder(tmp_path)  # no layout at all


def test_splits_by_patient() -> None:
    rows = [{"sample_id": f"p{i}_{ph}", "patient_id": f"p{i}", "path": "x", "phase": ph,
             "split": "val" if i == 9 else ""} for i in range(10) for ph in ("ED", "ES")]
    out = assign_splits(new_manifest(rows), test_fraction=0.2, seed=3)
    per_patient = out.groupby("patient_id")["split"].agg(set)
    assert (per_patient.map(len) == 1).all()  # a patient's rows share a split
    counts = out.drop_duplicates("patient_id")["split"].value_counts().to_dict()
    assert counts == {"train": 7, "test": 2, "val": 1}  # the given split is kept
    assert (assign_splits(new_manifest(rows))["split"].iloc[:18] == "train").all()
    pd.testing.assert_frame_equal(out, assign_splits(new_manifest(rows), 0.2, seed=3))
    with pytest.raises(InputError, match="test_fraction"):
        assign_splits(new_manifest(rows), test_fraction=1.0)
