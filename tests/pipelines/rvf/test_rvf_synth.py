"""Synthetic RVF cohorts: DICOM layout with planted PHI and defects; the class lives in the RV
free-wall motion, not in the RV's size at end diastole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cinelab.io.dicom import read_ultrasound
from cinelab.pipelines.rvf.synth import MOTIONS, rvf_phantom_video, synth_rvf_cohort
from cinelab.prep.flow import compute_flow

TAPSE_NORMAL_MIN = 0.4  # fraction of the cohort's median normal TAPSE an RVF wall stays under


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_rvf_cohort(tmp_path_factory.mktemp("rvf") / "raw", n=24, seed=2, size=64,
                            frames=16)


def test_layout_tables_and_planted_phi(cohort: Path) -> None:
    planted = json.loads((cohort / "phi_planted.json").read_text())
    files = planted["files"]
    assert len(files) == len(pd.read_csv(cohort / "truth.csv"))
    assert all((cohort / rel).is_file() for rel in files)
    assert max(len(Path(rel).parts) for rel in files) >= 4  # nested folders
    assert any(not rel.endswith(".dcm") for rel in files)  # DICOMs without a suffix too
    names = {t["PatientName"].split("^")[0] for t in files.values()}
    assert any(any(n in part for n in names) for rel in files for part in Path(rel).parts[:-1])
    rel, tags = next((r, t) for r, t in files.items() if t["study_id"])
    ds = pydicom.dcmread(cohort / rel, stop_before_pixels=True)
    for key in ("PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                "DeviceSerialNumber", "StudyDate"):
        assert str(ds.data_element(key).value) == tags[key]
        assert tags[key] in planted["values"]
    assert ds.PatientID == tags["study_id"] and ds.PatientID.startswith("REDCAP-")
    video = read_ultrasound(cohort / rel)
    assert video.frames.shape == (16, 64, 64, 1) and video.region is not None
    classes = pd.read_csv(cohort / "classes.csv")
    splits = pd.read_csv(cohort / "splits.csv")
    assert list(classes.columns) == ["id", "class"] and list(splits.columns) == ["id", "split"]
    assert set(classes["class"]) == {"RVF", "noRVF"}
    assert set(splits["split"]) == {"train", "val", "test"}
    share = (classes.drop_duplicates("id", keep=False)["class"] == "RVF").mean()
    assert share == pytest.approx(0.4, abs=0.1)


def test_defects_are_planted(cohort: Path) -> None:
    planted = json.loads((cohort / "phi_planted.json").read_text())
    defects = planted["defects"]
    classes = pd.read_csv(cohort / "classes.csv")
    ids_with_video = {t["study_id"] for t in planted["files"].values()}
    no_pid = pydicom.dcmread(cohort / defects["no_patient_id"], stop_before_pixels=True)
    assert not str(no_pid.get("PatientID", "")).strip() and str(no_pid.PatientName)
    assert defects["unlabeled"] in ids_with_video
    assert defects["unlabeled"] not in set(classes["id"])
    assert defects["label_without_video"] in set(classes["id"]) - ids_with_video
    two = classes[classes["id"] == defects["two_classes"]]
    assert sorted(two["class"]) == ["RVF", "noRVF"]
    truth = pd.read_csv(cohort / "truth.csv")
    assert sorted(truth.loc[truth["study_id"] == defects["two_classes"], "class"]) == \
        ["RVF", "noRVF"]


def test_class_is_in_free_wall_motion_not_in_ed_size(cohort: Path) -> None:
    truth = pd.read_csv(cohort / "truth.csv")
    normal, rvf = truth[truth["class"] == "noRVF"], truth[truth["class"] == "RVF"]
    assert set(rvf["motion"]) <= set(MOTIONS) and set(normal["motion"]) == {"normal"}
    assert (normal["delay_s"] == 0).all() and (normal["free_wall_outward_px"] == 0).all()
    limit = TAPSE_NORMAL_MIN * normal["tapse_px"].median()
    abnormal = ((rvf["tapse_px"] < limit) | (rvf["delay_s"] > 0.1)
                | (rvf["free_wall_outward_px"] > 0.5))
    assert abnormal.all() and (normal["tapse_px"] >= limit).all()
    a, b = normal["rv_area_ed_px"], rvf["rv_area_ed_px"]
    pooled = np.sqrt((a.var() + b.var()) / 2)
    assert abs(a.mean() - b.mean()) < 0.5 * pooled  # ED size alike in both classes
    assert max(a.min(), b.min()) < min(a.max(), b.max())  # overlapping ranges


def test_motion_shows_in_flow_of_the_free_wall() -> None:
    """Same heart (same seed), only the free wall differs: normal moves more than reduced."""
    for seed in range(3):
        lateral = []
        for motion in ("normal", "reduced"):
            frames, truth = rvf_phantom_video(np.random.default_rng(seed), motion, size=64,
                                              n_frames=16, fps=30)
            x, y = int(truth["free_wall_x"]), int(truth["free_wall_y"])
            flow = compute_flow(frames)[:, y - 6:y + 7, max(x - 4, 0):x + 5]
            lateral.append(np.abs(flow).mean())
        assert lateral[1] < 0.9 * lateral[0]


def test_same_seed_same_files(tmp_path: Path) -> None:
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix == ".csv":
                h.update(p.read_bytes())
        return h.hexdigest()

    a = synth_rvf_cohort(tmp_path / "a", n=3, seed=9, size=32, frames=6)
    b = synth_rvf_cohort(tmp_path / "b", n=3, seed=9, size=32, frames=6)
    assert digest(a) == digest(b)
    planted_a = json.loads((a / "phi_planted.json").read_text())
    assert planted_a == json.loads((b / "phi_planted.json").read_text())
