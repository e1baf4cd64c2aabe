"""Long-axis ingest: views by SeriesDescription patterns or a mapping table, ages and
covariates joined, subjects with one view kept, problems for missing ages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from cinelab.errors import InputError
from cinelab.formats.ingest import load_ingested
from cinelab.pipelines.age.layout import ingest_lax, read_ages, view_of
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort

N = 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 subjects with 2ch, 3ch and 4ch series; subject S0002 loses its 3ch series."""
    root = tmp_path_factory.mktemp("lax")
    synth_cmr_lax_cohort(root, n=N, seed=3, size=24, frame_choices=(5, 6), missing_rate=0.0,
                         extra_rate=1.0)
    for folder in (root / "dicom" / "S0002").iterdir():
        if folder.name.endswith("_21"):  # series number 21: the 3ch view
            shutil.rmtree(folder)
    return root


@pytest.mark.parametrize(("description", "view"), [
    ("CINE_segmented_LAX_4Ch", "4ch"), ("LAX 4 chamber cine", "4ch"), ("4CH_TF2D", "4ch"),
    ("cine_3ch", "3ch"), ("LVOT 3CH", "3ch"), ("three-chamber", "3ch"),
    ("CINE_segmented_LAX_2Ch", None), ("sax_stack", None),
])
def test_view_patterns(description: str, view: str | None) -> None:
    assert view_of(description, ("3ch", "4ch")) == view


def test_ambiguous_description_is_no_view() -> None:
    assert view_of("3ch and 4ch", ("3ch", "4ch")) is None
    assert view_of("custom", ("3ch", "4ch"), {"3ch": "cust"}) == "3ch"


def test_ingest_keeps_views_and_subjects_with_one_view(cohort: Path, tmp_path: Path) -> None:
    result = ingest_lax(cohort / "dicom", cohort / "ages.csv", tmp_path)
    m = result.manifest.set_index("sample_id")
    expected = {f"S{i:04d}_{v}" for i in range(1, N + 1) for v in ("3ch", "4ch")} - {"S0002_3ch"}
    assert set(m.index) == expected
    assert (m["modality"] == "cine").all() and set(m["view"]) == {"3ch", "4ch"}
    assert m.loc["S0002_4ch", "patient_id"] == "S0002"
    ages = pd.read_csv(cohort / "ages.csv").set_index("subject")
    assert m.loc["S0003_3ch", "age"] == pytest.approx(ages.loc["S0003", "age"])
    assert m.loc["S0003_3ch", "sex"] == ages.loc["S0003", "sex"]
    series = pd.read_csv(m.loc["S0001_4ch", "path"])
    assert series["trigger_time"].is_monotonic_increasing and len(series) in (5, 6)
    assert not result.problems
    back = load_ingested(tmp_path)
    assert len(back.manifest) == len(expected)


def test_mapping_table_overrides_patterns(cohort: Path, tmp_path: Path) -> None:
    two_ch = next(p for p in (cohort / "dicom" / "S0002").iterdir() if p.name.endswith("_20"))
    uid = pydicom.dcmread(next(two_ch.glob("*.dcm"))).SeriesInstanceUID
    four_ch = next(p for p in (cohort / "dicom" / "S0001").iterdir() if p.name.endswith("_22"))
    description = pydicom.dcmread(next(four_ch.glob("*.dcm"))).SeriesDescription
    mapping = tmp_path / "mapping.csv"
    pd.DataFrame({"SeriesInstanceUID": [uid, ""], "SeriesDescription": ["", description],
                  "view": ["3ch", "ignore"]}).to_csv(mapping, index=False)
    result = ingest_lax(cohort / "dicom", cohort / "ages.csv", tmp_path / "out",
                        mapping=mapping)
    m = result.manifest.set_index("sample_id")
    assert m.loc["S0002_3ch", "series_uid"] == uid  # the 2ch series, mapped to 3ch
    assert "S0001_4ch" not in m.index  # its description is mapped to "ignore"
    with pytest.raises(InputError, match="view"):
        bad = tmp_path / "bad.csv"
        pd.DataFrame({"SeriesDescription": ["x"]}).to_csv(bad, index=False)
        ingest_lax(cohort / "dicom", cohort / "ages.csv", tmp_path / "bad", mapping=bad)


def test_missing_and_extra_ages_are_reported(cohort: Path, tmp_path: Path) -> None:
    ages = pd.read_csv(cohort / "ages.csv")
    ages.loc[0, "age"] = None
    extra = pd.DataFrame([{"subject": "S9999", "age": 50, "sex": "F", "height_cm": 160}])
    path = tmp_path / "ages.csv"
    pd.concat([ages, extra]).rename(columns={"subject": "eid"}).to_csv(path, index=False)
    result = ingest_lax(cohort / "dicom", path, tmp_path / "out")
    errors = " | ".join(p.error for p in result.problems)
    assert "S0001: no age" in errors and "S9999" in errors
    assert result.manifest.set_index("sample_id").loc["S0001_4ch", "age"] != \
        result.manifest.set_index("sample_id").loc["S0001_4ch", "age"]  # NaN: kept unlabelled


def test_bad_inputs_raise(cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="subject"):
        bad = tmp_path / "ages.csv"
        pd.DataFrame({"id": ["a"], "age": [1]}).to_csv(bad, index=False)
        read_ages(bad)
    with pytest.raises(InputError, match="root"):
        ingest_lax(tmp_path / "nothing", cohort / "ages.csv", tmp_path / "out")
