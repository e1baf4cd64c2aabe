"""Synthetic CXR cohorts: layouts, determinism, mask alignment, a learnable but non-trivial
positive/negative difference, and the NIH multi-label variant."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cinelab.data.manifest import validate_manifest
from cinelab.errors import InputError
from cinelab.pipelines.cxr.crop import lung_crop_box
from cinelab.pipelines.cxr.layout import read_cxr_folders, read_cxr_labels
from cinelab.pipelines.cxr.nih import NIH_FINDINGS, read_nih
from cinelab.pipelines.cxr.synth import cxr_phantom, draw_anatomy, synth_cxr_cohort

SIZE = 128


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_cxr_cohort(tmp_path_factory.mktemp("cxr") / "c", n=120, seed=0, size=SIZE)


def _auc(values: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = values[labels == 1], values[labels == 0]
    greater = (pos[:, None] > neg[None, :]).mean()
    return float(greater + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_folder_layout_reads_back_with_masks(cohort: Path) -> None:
    found = read_cxr_folders(cohort, check="decode")
    m = found.manifest
    assert found.problems == [] and len(m) == 120
    assert set(m["split"]) == {"train", "val", "test"} and set(m["label"]) == {0, 1}
    assert (m["mask_path"] != "").all() and (m["rows"] == SIZE).all()
    for split, folder in (("train", "Train"), ("val", "Validation"), ("test", "Test")):
        assert m.loc[m["split"] == split, "path"].str.contains(f"/{folder}/").all()
    labelled = read_cxr_labels(cohort / "labels.csv", check="none").manifest
    assert len(labelled) == 120 and labelled["patient_id"].nunique() < 120
    assert validate_manifest(labelled) == []  # patient-wise splits: no leakage
    assert set(labelled["view"]) == {"AP", "PA"}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = synth_cxr_cohort(tmp_path / "a", n=6, seed=5, size=64)
    b = synth_cxr_cohort(tmp_path / "b", n=6, seed=5, size=64)
    c = synth_cxr_cohort(tmp_path / "c", n=6, seed=6, size=64)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 12  # images and masks
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    assert (a / "labels.csv").read_text() != (c / "labels.csv").read_text()


def test_masks_align_with_dark_lung_fields_and_crop_well(cohort: Path) -> None:
    table = pd.read_csv(cohort / "labels.csv")
    for rel in table["file"][:20]:
        path = cohort / rel
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(float)
        mask = cv2.imread(str(path.parent / "masks" / path.name), cv2.IMREAD_GRAYSCALE) > 0
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        ring &= ~mask
        assert image[mask].mean() < image[ring].mean() - 5  # lungs darker than their rim
        box, reason = lung_crop_box(mask)
        assert box is not None, reason
        y0, x0, y1, x1 = box
        assert mask[y0:y1, x0:x1].sum() >= 0.99 * mask.sum()


def test_positives_differ_in_lung_opacity_not_in_image_mean(cohort: Path) -> None:
    table = pd.read_csv(cohort / "labels.csv")
    image_mean, lung_contrast = [], []
    for rel in table["file"]:
        path = cohort / rel
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(float)
        mask = cv2.imread(str(path.parent / "masks" / path.name), cv2.IMREAD_GRAYSCALE) > 0
        rows = np.nonzero(mask)[0]
        lower = mask & (np.arange(SIZE)[:, None] > np.median(rows))
        spread = np.percentile(image, 99) - image.min()
        image_mean.append(image.mean())
        lung_contrast.append((image[lower].mean() - image[mask & ~lower].mean()) / spread)
    labels = table["label"].to_numpy()
    mean_auc = _auc(np.asarray(image_mean), labels)
    lung_auc = _auc(np.asarray(lung_contrast), labels)
    assert 0.3 < mean_auc < 0.75  # exposure varies more than the opacities shift the mean
    assert 0.65 < lung_auc < 0.99  # lower lungs whiter in positives, on average, not always
    negatives = table.loc[table["label"] == 0, "findings"]
    assert negatives.eq("clear").any() and negatives.ne("clear").any()


def test_phantom_findings_change_only_the_lungs_as_drawn() -> None:
    anatomy = draw_anatomy(np.random.default_rng(0))
    clear, mask = cxr_phantom(np.random.default_rng(1), SIZE, anatomy, ())
    sick, mask2 = cxr_phantom(np.random.default_rng(1), SIZE, anatomy, ("covid",))
    np.testing.assert_array_equal(mask, mask2)
    assert clear.shape == (SIZE, SIZE) and clear.dtype == np.uint8
    changed = np.abs(sick.astype(int) - clear) > 2
    near_lungs = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert changed.sum() > 50 and changed[near_lungs].sum() >= 0.95 * changed.sum()
    big, _ = cxr_phantom(np.random.default_rng(1), SIZE, anatomy, ("cardiomegaly",))
    assert (big.astype(int) - clear).mean() > 0.5  # a larger heart: a whiter image


def test_nih_layout_has_multilabel_targets_and_several_images_per_patient(
        tmp_path: Path) -> None:
    root = synth_cxr_cohort(tmp_path / "nih", n=40, seed=1, size=64, layout="nih")
    table = pd.read_csv(root / "Data_Entry_2017.csv")
    assert list(table.columns[:4]) == ["Image Index", "Finding Labels", "Follow-up #",
                                       "Patient ID"]
    assert table["Patient ID"].value_counts().max() > 1
    assert table["Finding Labels"].str.contains("|", regex=False).any()
    cohort = read_nih(root, check="header")
    m = cohort.manifest
    assert cohort.problems == [] and len(m) == 40 and (m["mask_path"] != "").all()
    targets = m[list(NIH_FINDINGS)]
    assert targets.to_numpy().sum() > 10 and (targets.sum(axis=1) == 0).any()
    assert validate_manifest(m) == []
    with pytest.raises(InputError, match="layout"):
        synth_cxr_cohort(tmp_path / "x", n=2, layout="dicom")
