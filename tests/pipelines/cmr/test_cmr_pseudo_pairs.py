"""Pseudo-label pairs: ED/ES frames of confident predicted cines as PNG image + mask files,
subsets per threshold, and a store prepared from a subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.io.nifti import write_volume
from cinelab.measure.volumes import LabelMap
from cinelab.pipelines.cmr.mask_sets import mask_index
from cinelab.pipelines.cmr.pngmasks import read_png_masks
from cinelab.pipelines.cmr.prepare import prepare_cmr_folder
from cinelab.pipelines.cmr.pseudo import SCORE_COLUMN
from cinelab.pipelines.cmr.pseudo_pairs import (
    export_pseudo_pairs,
    phase_frames,
    to_acdc_labels,
)

MODEL_LABELS = LabelMap(lv=1, myo=2, rv=None)  # a model numbering its classes LV 1, MYO 2
RADII = (6, 8, 5, 3, 4)  # LV radius per frame: ED frame 1, ES frame 3
T, Z, SIDE = len(RADII), 3, 24
SPACING = (0.04, 8.0, 1.5, 1.5)  # (t s, z, y, x mm)


def _cine(radii: tuple[int, ...] = RADII) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) (T, Z, SIDE, SIDE): an LV disk in a myocardial ring."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r = np.hypot(yy - SIDE / 2, xx - SIDE / 2)
    labels = np.zeros((len(radii), Z, SIDE, SIDE), np.uint8)
    for t, radius in enumerate(radii):
        labels[t, :, (r >= radius) & (r < radius + 2)] = MODEL_LABELS.myo
        labels[t, :, r < radius] = MODEL_LABELS.lv
    image = np.where(labels == MODEL_LABELS.lv, 400.0, np.where(labels > 0, 150.0, 60.0))
    return image.astype(np.float32), labels


@pytest.fixture
def predictions(tmp_path: Path) -> Path:
    """An index of three predicted cines (one on a smaller grid than its image)."""
    rows = []
    for unit, patient in (("p1_a", "p1"), ("p2", "p2"), ("p3", "p3")):
        image, labels = _cine()
        if unit == "p3":
            labels = labels[:, :, :20, :20]
        image_path = write_volume(tmp_path / "img" / f"{unit}.nii.gz", image, SPACING)
        mask_path = write_volume(tmp_path / "pred" / f"{unit}.nii.gz", labels, SPACING)
        rows.append({"sample_id": unit, "patient_id": patient, "mask_path": str(mask_path),
                     "source": str(image_path)})
    pd.DataFrame(rows).to_csv(tmp_path / "pred" / "predictions.csv", index=False)
    return tmp_path / "pred"


def _scores() -> pd.DataFrame:
    return pd.DataFrame({"patient_id": ["p1_a", "p3", "p2"], "reference_id": ["p1", "p3", "p2"],
                         SCORE_COLUMN: [3.0, 4.0, 12.0]})


def test_phase_frames_follow_the_lv_volume() -> None:
    _, labels = _cine()
    assert phase_frames(labels, SPACING[1:], MODEL_LABELS) == {"ED": 1, "ES": 3}
    with pytest.raises(Exception, match="changes over the cycle"):
        phase_frames(np.zeros((3, 2, 8, 8), np.uint8), None, MODEL_LABELS)
    assert to_acdc_labels(np.array([0, 1, 2, 5]), MODEL_LABELS).tolist() == [0, 3, 2, 0]


def test_export_writes_ed_es_pairs_per_threshold(predictions: Path, tmp_path: Path) -> None:
    out = tmp_path / "pseudo"
    export = export_pseudo_pairs(mask_index(predictions), _scores(), out, (5, 15),
                                 MODEL_LABELS)
    m = export.manifest
    # p1_a and p2: ED and ES x 3 slices each; p3 (mask grid != image grid) reported, skipped
    assert len(m) == 2 * 2 * Z and set(m["unit_id"]) == {"p1_a", "p2"}
    assert len(export.problems) == 1 and "native" in export.problems[0].error
    first = m[m["unit_id"] == "p1_a"]
    assert first["patient_id"].unique().tolist() == ["p1"]
    assert sorted(set(zip(first["phase"], first["frame"], strict=True))) == [("ED", 1),
                                                                             ("ES", 3)]
    assert (m["split"] == "train").all() and m["pseudo_label"].all()
    _, labels = _cine()
    es = first[(first["phase"] == "ES") & (first["slice"] == 2)].iloc[0]
    assert es["sample_id"] == "p1_a-frame003-slice002"
    mask = np.asarray(Image.open(es["mask_path"]))
    np.testing.assert_array_equal(mask, to_acdc_labels(labels[3, 1], MODEL_LABELS))
    image = np.asarray(Image.open(es["path"]))
    assert image[mask == 3].min() > image[mask == 0].max()  # image and mask line up
    assert es["lv_pixels"] == int((labels[3, 1] == MODEL_LABELS.lv).sum())
    # per threshold: the units at or below it
    five = pd.read_csv(export.subsets["confident_5pct"], dtype=str)
    assert set(five["unit_id"]) == {"p1_a"} and len(five) == 2 * Z
    fifteen = pd.read_csv(out / "confident_15pct" / "manifest.csv", dtype=str)
    assert len(fifteen) == len(m)
    assert len(pd.read_csv(out / "pairs" / "problems.csv")) == 1
    # the pair folder is also a plain PNG image/mask layout
    assert len(read_png_masks(out / "pairs")[0]) == len(m)


def test_export_resumes_and_feeds_a_store(predictions: Path, tmp_path: Path) -> None:
    out = tmp_path / "pseudo"
    first = export_pseudo_pairs(mask_index(predictions), _scores(), out, (15,), MODEL_LABELS)
    stamp = Path(first.manifest["path"].iloc[0]).stat().st_mtime_ns
    again = export_pseudo_pairs(mask_index(predictions), _scores(), out, (15,), MODEL_LABELS)
    assert Path(again.manifest["path"].iloc[0]).stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(first.manifest, again.manifest)
    summary = prepare_cmr_folder(out / "confident_15pct", tmp_path / "store", size=16,
                                 workers=1)
    store = PreparedStore(tmp_path / "store")
    assert summary.usable == len(first.manifest) and set(store.manifest["split"]) == {"train"}
    sid = "p2-frame001-slice001"
    assert store.frames(sid).shape == (1, 16, 16, 1)
    assert set(np.unique(store.mask(sid))) == {0, 2, 3}


def test_nothing_confident_writes_no_subset(predictions: Path, tmp_path: Path) -> None:
    scores = _scores().assign(**{SCORE_COLUMN: [30.0, 40.0, 50.0]})
    export = export_pseudo_pairs(mask_index(predictions), scores, tmp_path / "o", (5,))
    assert export.manifest.empty and not export.subsets
    assert not (tmp_path / "o" / "confident_5pct").exists()


@pytest.mark.slow
def test_real_acdc_stacks_as_pairs(tmp_path: Path) -> None:
    """The real ACDC HDF5 samples, their reference labels standing in for predictions:
    every slice of every (patient, phase) stack becomes a pair that matches its label."""
    from cinelab.pipelines.cmr.acdc import load_acdc_h5
    from cinelab.pipelines.cmr.measure import measure_mask_set
    from cinelab.pipelines.cmr.pseudo import confidence_scores
    from conftest import real_path

    index = mask_index(real_path("acdc-h5", "data"))
    volumes = measure_mask_set(index)[0]
    reference = volumes.assign(reference_id=volumes["patient_id"], EDV_ref=volumes["EDV"],
                               ESV_ref=volumes["ESV"] * 1.08)  # 8 % off: kept at 10, not 5
    scores = confidence_scores(volumes, reference[["reference_id", "EDV_ref", "ESV_ref"]])
    export = export_pseudo_pairs(index, scores, tmp_path, (5, 10))
    n_slices = sum(len(load_acdc_h5(p)[1]) for p in index["mask_path"])
    assert len(export.manifest) == n_slices and not export.problems
    assert "confident_5pct" not in export.subsets
    assert len(pd.read_csv(export.subsets["confident_10pct"])) == n_slices
    row = export.manifest.iloc[len(export.manifest) // 2]
    source = index[index["patient_id"] == row["patient_id"]]
    source = source[source["phase"] == row["phase"]].iloc[0]
    labels = load_acdc_h5(source["mask_path"])[1][int(row["slice"]) - 1]
    np.testing.assert_array_equal(np.asarray(Image.open(row["mask_path"])), labels)


def test_export_every_frame_of_confident_cines(predictions: Path, tmp_path: Path) -> None:
    export = export_pseudo_pairs(mask_index(predictions), _scores(), tmp_path / "all", (15,),
                                 MODEL_LABELS, frames="all")
    m = export.manifest
    assert len(m) == 2 * len(RADII) * Z  # p1_a and p2: every frame x every slice
    first = m[m["unit_id"] == "p1_a"]
    assert sorted(first["frame"].unique().tolist()) == list(range(len(RADII)))
    phases = first.drop_duplicates("frame").set_index("frame")["phase"].fillna("")
    assert phases.to_dict() == {t: {1: "ED", 3: "ES"}.get(t, "") for t in range(len(RADII))}
    _, labels = _cine()
    row = first[(first["frame"] == 0) & (first["slice"] == 1)].iloc[0]
    np.testing.assert_array_equal(np.asarray(Image.open(row["mask_path"])),
                                  to_acdc_labels(labels[0, 0], MODEL_LABELS))
    with pytest.raises(InputError, match="frames"):
        export_pseudo_pairs(mask_index(predictions), _scores(), tmp_path / "x", (15,),
                            frames="some")
