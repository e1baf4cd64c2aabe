"""RVF cohort ingest: labels and splits from the two CSVs, pseudonymous ids, every defect
reported (no PatientID, unlabeled video, label with no video, one patient with two classes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from cinelab.data.manifest import read_manifest, validate_manifest
from cinelab.errors import InputError
from cinelab.pipelines.rvf.layout import class_order, ingest_rvf, read_rvf_cohort
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.prep.deid import IdMap, default_idmap_path


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_rvf_cohort(tmp_path_factory.mktemp("rvf") / "raw", n=8, seed=5, size=48,
                            frames=8, multi_video_fraction=0.25)


def _read(raw: Path, **kwargs: object) -> tuple[pd.DataFrame, list]:
    return read_rvf_cohort(raw, raw / "classes.csv", raw / "splits.csv", **kwargs)


def test_manifest_has_labels_splits_and_pseudonymous_ids(raw: Path) -> None:
    manifest, _ = _read(raw)
    truth = pd.read_csv(raw / "truth.csv", dtype={"study_id": str})
    idmap = IdMap.open(default_idmap_path(raw))
    classes = pd.read_csv(raw / "classes.csv").drop_duplicates("id", keep=False)
    expected = truth[truth["study_id"].isin(classes["id"])]
    assert len(manifest) == len(expected) == 10  # 8 patients, 2 of them with two videos
    assert manifest.attrs["class_names"] == ["noRVF", "RVF"]
    assert all(re.fullmatch(r"P[0-9a-f]{12}_[01]", s) for s in manifest["sample_id"])
    assert (manifest["sample_id"].str[:13] == manifest["patient_id"]).all()
    by_patient = {idmap.pseudonym(s): c
                  for s, c in zip(classes["id"], classes["class"], strict=True)}
    assert (manifest["class"] == manifest["patient_id"].map(by_patient)).all()
    assert (manifest["label"] == (manifest["class"] == "RVF").astype(int)).all()
    splits = pd.read_csv(raw / "splits.csv")
    split_of = {idmap.pseudonym(s): v for s, v in zip(splits["id"], splits["split"], strict=True)}
    assert (manifest["split"] == manifest["patient_id"].map(split_of)).all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert validate_manifest(manifest) == []  # ids unique, files there, no split leakage
    assert manifest.groupby("patient_id").size().max() == 2


def test_every_defect_is_reported(raw: Path) -> None:
    _, problems = _read(raw)
    defects = json.loads((raw / "phi_planted.json").read_text())["defects"]
    ids = IdMap.open(default_idmap_path(raw)).ids
    by_column = {}
    for p in problems:
        by_column.setdefault(p.column, []).append(p)
    assert len(by_column["PatientID"]) == 1
    assert re.fullmatch(r"F[0-9a-f]{12}", by_column["PatientID"][0].file)
    unlabeled = [p for p in by_column["class"] if "no label" in p.error]
    assert [p.file for p in unlabeled] == [f"{ids[defects['unlabeled']]}_0"]
    two = [p for p in by_column["class"] if "one class per patient" in p.error]
    assert len(two) == 1 and ids[defects["two_classes"]] in two[0].found
    assert two[0].file == "classes.csv"
    no_video = by_column["id"]
    assert len(no_video) == 1 and "label with no video" in no_video[0].error
    classes = pd.read_csv(raw / "classes.csv")
    assert classes["id"].iloc[no_video[0].row] == defects["label_without_video"]
    text = " ".join(f"{p.file} {p.error} {p.found}" for p in problems)
    assert "REDCAP" not in text and "site_" not in text  # nothing identifying in problems


def test_pseudonyms_are_stable_across_reruns(raw: Path) -> None:
    first, _ = _read(raw)
    again, _ = _read(raw)
    pd.testing.assert_frame_equal(first, again)


def test_without_pseudonymisation_ids_are_study_ids(raw: Path, tmp_path: Path) -> None:
    manifest, problems = _read(raw, pseudonymise=False,
                               idmap_path=tmp_path / "unused.csv")
    assert all(re.fullmatch(r"REDCAP-\d{4}_[01]", s) for s in manifest["sample_id"])
    assert all(Path(p).is_relative_to(raw.resolve()) for p in manifest["path"])
    assert not (tmp_path / "unused.csv").exists()
    assert any(p.column == "PatientID" for p in problems)


def test_ingest_writes_deidentified_sources_and_keeps_them_on_rerun(
        raw: Path, tmp_path: Path) -> None:
    manifest, problems = ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv",
                                    tmp_path / "ingest")
    written = read_manifest(tmp_path / "ingest" / "manifest.csv")
    assert written["sample_id"].tolist() == manifest["sample_id"].tolist()
    sources = sorted((tmp_path / "ingest" / "sources").iterdir())
    assert [p.stem for p in sources] == sorted(manifest["sample_id"])
    assert len(pd.read_csv(tmp_path / "ingest" / "problems.csv")) == len(problems) >= 4
    stamps = {p.name: p.stat().st_mtime_ns for p in sources}
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", tmp_path / "ingest")
    assert {p.name: p.stat().st_mtime_ns for p in sources} == stamps
    with pytest.raises(InputError, match="outside the raw data"):
        ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", raw / "ingest")


def test_class_order_and_table_errors(raw: Path, tmp_path: Path) -> None:
    assert class_order(["RVF", "noRVF"]) == ["noRVF", "RVF"]
    assert class_order(["non-failure", "failure"]) == ["non-failure", "failure"]
    assert class_order(["a", "b", "c"], positive="a") == ["b", "c", "a"]
    with pytest.raises(InputError, match="positive_class"):
        class_order(["RVF", "noRVF"], positive="RV failure")
    with pytest.raises(InputError, match="class CSV"):
        read_rvf_cohort(raw, tmp_path / "missing.csv", raw / "splits.csv")
    (tmp_path / "one.csv").write_text("id\nREDCAP-0001\n")
    with pytest.raises(InputError, match="columns"):
        read_rvf_cohort(raw, tmp_path / "one.csv", raw / "splits.csv")


def test_unreadable_file_is_reported_by_key_without_its_path(tmp_path: Path) -> None:
    raw = synth_rvf_cohort(tmp_path / "raw", n=2, seed=1, size=32, frames=4)
    broken = raw / "site_X" / "Quorvax_Belindra" / "broken.dcm"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a dicom at all" * 10)
    _, problems = _read(raw)
    bad = [p for p in problems if p.stage == "ingest" and p.column == "file"]
    assert len(bad) == 1 and re.fullmatch(r"F[0-9a-f]{12}", bad[0].file)
    assert "Quorvax" not in f"{bad[0].error} {bad[0].found}"
    idmap = IdMap.open(default_idmap_path(raw))
    assert idmap.files[bad[0].file] == "site_X/Quorvax_Belindra/broken.dcm"


def test_burned_in_annotation_is_flagged_by_key(tmp_path: Path) -> None:
    raw = synth_rvf_cohort(tmp_path / "raw", n=2, seed=2, size=32, frames=4)
    first = sorted(raw.rglob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(first)
    _, problems = _read(raw)
    flagged = [p for p in problems if p.column == "BurnedInAnnotation"]
    assert len(flagged) == 1 and re.fullmatch(r"F[0-9a-f]{12}", flagged[0].file)
    assert str(raw) not in flagged[0].error
