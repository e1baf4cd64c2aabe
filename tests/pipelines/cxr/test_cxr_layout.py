"""CXR layouts -> manifest: the DeepCOVID-XR folder tree, label CSVs, NIH ChestX-ray14."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from cinelab.data.manifest import validate_manifest
from cinelab.errors import InputError
from cinelab.io.cxr_dicom import write_cxr_dicom
from cinelab.io.image import write_image
from cinelab.pipelines.cxr.layout import find_mask, parse_label, read_cxr_folders, read_cxr_labels
from cinelab.pipelines.cxr.nih import (
    NIH_FINDINGS,
    assign_patient_splits,
    findings_text,
    parse_findings,
    patient_split,
    read_nih,
)
from conftest import real_path

SIZE = 32


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, _img(seed))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Mixed-case split/label folders, an images/ level, a mask, a DICOM, a stray file."""
    root = tmp_path / "cohort"
    _png(root / "TRAIN" / "positive" / "images" / "a.png")
    _png(root / "Train" / "Negative" / "b.jpg")
    _png(root / "Validation" / "Positive" / "c.png")
    _png(root / "test" / "NEGATIVE" / "a.png")  # stem clash with Train/positive/images/a
    _png(root / "Train" / "Negative" / "masks" / "b.png")  # b's lung mask, not an image
    root.joinpath("Test", "Positive").mkdir(parents=True)
    write_cxr_dicom(root / "Test" / "Positive" / "d.dcm", _img(), ViewPosition="AP",
                    PatientID="PX")
    _png(root / "Train" / "stray.png")  # no label folder
    (root / "Train" / "notes.txt").write_text("ignored")
    return root


def test_folder_tree_gives_splits_labels_masks_and_views(tree: Path) -> None:
    cohort = read_cxr_folders(tree)
    m = cohort.manifest.set_index("sample_id")
    assert sorted(m.index) == ["TRAIN__positive__images__a", "b", "c", "d",
                               "test__NEGATIVE__a"]
    assert m.loc["b", "split"] == "train" and m.loc["b", "label"] == 0
    assert m.loc["c", "split"] == "val" and m.loc["c", "label"] == 1
    assert m.loc["test__NEGATIVE__a", "split"] == "test"
    assert m.loc["b", "mask_path"].endswith("masks/b.png") and m.loc["c", "mask_path"] == ""
    assert m.loc["d", "view"] == "AP" and m.loc["d", "patient_id"] == "PX"
    assert (m["modality"] == "cxr").all() and m["label"].dtype.kind == "i"
    assert m.loc["c", "rows"] == SIZE
    assert [Path(p.file).name for p in cohort.problems] == ["stray.png"]
    assert validate_manifest(cohort.manifest) == []


def test_folder_without_split_level(tmp_path: Path) -> None:
    _png(tmp_path / "Positive" / "x.png")
    _png(tmp_path / "Negative" / "y.png")
    m = read_cxr_folders(tmp_path, check="none").manifest
    assert m["split"].tolist() == ["", ""] and sorted(m["label"]) == [0, 1]


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        read_cxr_folders(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        read_cxr_folders(tmp_path / "empty")
    _png(tmp_path / "x" / "Positive" / "a.png")
    with pytest.raises(InputError, match="check"):
        read_cxr_folders(tmp_path / "x", check="full")


def _bad_folder(root: Path) -> Path:
    """Good files beside every kind of bad one, in the DeepCOVID-XR tree."""
    pos, neg = root / "Train" / "Positive", root / "Train" / "Negative"
    _png(pos / "good.png")
    _png(neg / "good2.png", 1)
    (pos / "empty.png").write_bytes(b"")
    noisy = _png(pos / "trunc.png", 2)
    noisy.write_bytes(noisy.read_bytes()[:200])
    write_image(pos / "deep16.png", (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 60)
                .astype(np.uint16))
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(neg / "rgba.png")
    write_cxr_dicom(neg / "mono1.dcm", (4095 - np.arange(SIZE * SIZE) % 4096)
                    .reshape(SIZE, SIZE).astype(np.uint16), photometric="MONOCHROME1",
                    bits_stored=12)
    nopix = write_cxr_dicom(neg / "nopix.dcm", _img())
    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)
    return root


def test_bad_files_are_reported_and_the_rest_kept(tmp_path: Path) -> None:
    cohort = read_cxr_folders(_bad_folder(tmp_path), check="decode")
    kept = sorted(cohort.manifest["sample_id"])
    assert kept == ["deep16", "good", "good2", "mono1", "rgba"]
    bad = {Path(p.file).name: p for p in cohort.problems}
    assert sorted(bad) == ["empty.png", "nopix.dcm", "trunc.png"]
    assert "0 bytes" in bad["empty.png"].error and "truncated" in bad["trunc.png"].error
    assert bad["nopix.dcm"].column == "PixelData"
    header_only = read_cxr_folders(tmp_path, check="header")  # truncation needs a decode
    assert sorted(Path(p.file).name for p in header_only.problems) == ["empty.png",
                                                                        "nopix.dcm"]


def test_label_csv_with_aliases_and_problems(tmp_path: Path) -> None:
    for name in ("p1.png", "p2.png", "n1.png", "n2.png"):
        _png(tmp_path / "img" / name)
    _png(tmp_path / "img" / "p1-mask.png")
    pd.DataFrame({
        "FileName": ["p1.png", "p2.png", "n1.png", "n2.png", "gone.png", "p1.png"],
        "Label": ["Positive", "1", "neg", "maybe", "1", "1"],
        "PatientID": ["A", "B", "C", "D", "E", "A"],
        "Split": ["Train", "VALID", "test", "train", "train", "train"],
        "View": ["ap supine", "PA", "", "PA", "PA", "PA"],
        "modality": ["X-ray"] * 6, "age": [50, 60, 70, 80, 90, 50]}).to_csv(
        tmp_path / "labels.csv", index=False)
    cohort = read_cxr_labels(tmp_path / "labels.csv", tmp_path / "img")
    m = cohort.manifest.set_index("sample_id")
    assert sorted(m.index) == ["n1", "p1", "p2"]
    assert m.loc["p1", "label"] == 1 and m.loc["n1", "label"] == 0
    assert m.loc["p2", "split"] == "val" and m.loc["p1", "view"] == "AP"
    assert m.loc["p1", "patient_id"] == "A" and m.loc["p1", "age"] == 50
    assert m.loc["p1", "csv_modality"] == "X-ray" and m.loc["p1", "modality"] == "cxr"
    assert m.loc["p1", "mask_path"].endswith("p1-mask.png")
    errors = " | ".join(p.error for p in cohort.problems)
    assert "'maybe'" in errors and "no such image" in errors and "listed twice" in errors


def test_label_csv_needs_file_and_label_columns(tmp_path: Path) -> None:
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(InputError, match="file_column"):
        read_cxr_labels(tmp_path / "l.csv")
    with pytest.raises(InputError, match="label_column"):
        read_cxr_labels(tmp_path / "l.csv", file_column="x")


def test_parse_label_and_find_mask(tmp_path: Path) -> None:
    assert [parse_label(v) for v in (1, 0.0, "YES", "Negative", "x", None)] == \
        [1, 0, 1, 0, None, None]
    assert parse_label("COVID-19", ("covid-19",)) == 1
    assert parse_label("Pneumonia", ("covid-19",)) == 0
    image = _png(tmp_path / "x.png")
    assert find_mask(image) is None
    mask = _png(tmp_path / "x_mask.png")
    assert find_mask(image) == mask


@pytest.mark.parametrize("source,count", [("agchung+Actualmed-COVID-chestxray-dataset", 12),
                                          ("suyash091+covid-chestxray-dataset", 16)])
def test_real_covid_metadata_and_every_image_decodes(source: str, count: int) -> None:
    root = real_path("cxr-covid", source)
    cohort = read_cxr_labels(root / "metadata.csv", root / "images", label_column="finding",
                             positive=("COVID-19",), check="decode")
    m = cohort.manifest
    assert cohort.problems == [] and len(m) == count
    assert set(m["label"]) == {0, 1} and set(m["view"]) <= {"AP", "PA"}
    assert (m["rows"] > 100).all() and m["patient_id"].notna().all()
    assert validate_manifest(m) == []


# --- NIH ChestX-ray14 -------------------------------------------------------------------


def test_parse_findings_round_trip() -> None:
    values, unknown = parse_findings("Effusion|Pleural_Thickening|Hernia")
    assert unknown == [] and sum(values.values()) == 3 and values["Hernia"] == 1
    assert findings_text(values) == "Effusion|Pleural_Thickening|Hernia"
    none, _ = parse_findings("No Finding")
    assert sum(none.values()) == 0 and findings_text(none) == "No Finding"
    assert parse_findings("Effusion|Covid")[1] == ["Covid"]
    assert len(NIH_FINDINGS) == 14


def _nih(root: Path, test_list: bool) -> Path:
    rows = []
    for p in range(12):
        for k in range(1 + p % 3):
            name = f"{p:08d}_{k:03d}.png"
            _png(root / "images_001" / "images" / name, p)
            rows.append({"Image Index": name, "Finding Labels": ["No Finding", "Mass|Edema",
                                                                  "Cardiomegaly"][k],
                         "Follow-up #": k, "Patient ID": p, "Patient Age": 40 + p,
                         "Patient Gender": "F", "View Position": "PA" if k else "AP"})
    rows.append({"Image Index": "absent.png", "Finding Labels": "Mass", "Patient ID": 99})
    rows.append({"Image Index": rows[0]["Image Index"], "Finding Labels": "Flu",
                 "Patient ID": 0})
    pd.DataFrame(rows).to_csv(root / "Data_Entry_2017.csv", index=False)
    if test_list:
        names = [r["Image Index"] for r in rows[:-2] if int(r["Image Index"][:8]) >= 9]
        (root / "test_list.txt").write_text("\n".join(names) + "\n")
    return root


def test_read_nih_targets_views_and_official_split(tmp_path: Path) -> None:
    cohort = read_nih(_nih(tmp_path, test_list=True))
    m = cohort.manifest.set_index("sample_id")
    assert len(m) == 24 and set(NIH_FINDINGS) <= set(m.columns)
    row = m.loc["00000001_001"]
    assert (row["Mass"], row["Edema"], row["Effusion"], row["label"]) == (1, 1, 0, 1)
    assert m.loc["00000001_000", list(NIH_FINDINGS)].sum() == 0
    assert m.loc["00000001_000", "view"] == "AP" and m.loc["00000001_000", "patient_id"] == "1"
    test_patients = set(m.loc[m["split"] == "test", "patient_id"])
    assert test_patients == {"9", "10", "11"}
    assert set(m["split"]) == {"train", "val", "test"}
    assert validate_manifest(cohort.manifest) == []  # includes the patient leakage check
    columns = sorted(p.column for p in cohort.problems)
    assert columns == ["Finding Labels", "Image Index"]


def test_read_nih_random_split_is_seeded(tmp_path: Path) -> None:
    root = _nih(tmp_path, test_list=False)
    a = read_nih(root, split="random", seed=3).manifest
    b = read_nih(root, split="random", seed=3).manifest
    assert a["split"].tolist() == b["split"].tolist()
    assert validate_manifest(a) == []
    assert set(read_nih(root, split="none").manifest["split"]) == {""}
    with pytest.raises(InputError, match="split"):
        read_nih(root, split="bad")


def test_patient_split_fractions_and_determinism() -> None:
    patients = [p for p in range(300) for _ in range(1 + p % 4)]
    split = patient_split(patients, (0.7, 0.1, 0.2), seed=1)
    assert split == patient_split(patients, (0.7, 0.1, 0.2), seed=1)
    assert split != patient_split(patients, (0.7, 0.1, 0.2), seed=2)
    images = pd.Series([split[str(p)] for p in patients]).value_counts(normalize=True)
    assert abs(images["train"] - 0.7) < 0.05 and abs(images["test"] - 0.2) < 0.05
    with pytest.raises(InputError, match="fractions"):
        patient_split(patients, (0.5, 0.5))


def test_assign_patient_splits_keeps_existing_splits() -> None:
    m = pd.DataFrame({"sample_id": list("abcdef"), "patient_id": list("ppqrst"),
                      "split": ["test", "", "", "", "", ""]})
    out = assign_patient_splits(m, (0.5, 0.5, 0.0), seed=0)
    assert out.loc[1, "split"] == "test"  # joins the split its patient already has
    assert out.loc[0, "split"] == "test" and set(out.loc[2:, "split"]) <= {"train", "val"}
