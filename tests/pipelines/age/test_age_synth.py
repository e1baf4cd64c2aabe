"""Synthetic long-axis cohorts: DICOM series with descriptions and trigger times, ages that
change the anatomy and the filling curve, missing views, determinism."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cinelab.errors import InputError
from cinelab.pipelines.age.synth import (
    DESCRIPTIONS,
    EFFECTS,
    contraction,
    heart_masks,
    random_lax_heart,
    render_view,
    synth_cmr_lax_cohort,
)
from cinelab.synth.cmr_phantom import BLOOD

N = 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return synth_cmr_lax_cohort(tmp_path_factory.mktemp("lax"), n=N, seed=2, size=32,
                                frame_choices=(6, 8), missing_rate=0.3, extra_rate=0.5)


def test_ages_and_truth_tables(cohort) -> None:
    ages = pd.read_csv(cohort.root / "ages.csv")
    assert list(ages.columns) == ["subject", "age", "sex", "height_cm"]
    assert ages["age"].between(40, 80).all() and len(ages) == N
    truth = pd.read_csv(cohort.root / "truth.csv")
    assert list(truth["subject"]) == list(ages["subject"])
    for views in truth["views"]:
        assert {"3ch", "4ch"} & set(views.split(","))  # never without a long-axis view


def test_series_are_mr_dicom_with_times(cohort) -> None:
    truth = pd.read_csv(cohort.root / "truth.csv").set_index("subject")
    for folder in sorted(cohort.dicom_root.glob("*/*")):
        files = sorted(folder.glob("*.dcm"))
        subject = folder.parent.name
        assert len(files) == truth.loc[subject, "frames"]
        headers = [pydicom.dcmread(f) for f in files]
        descriptions = {h.SeriesDescription for h in headers}
        assert len(descriptions) == 1 and descriptions.pop() in sum(DESCRIPTIONS.values(), ())
        times = [float(h.TriggerTime) for h in headers]
        assert times == sorted(times) and times[0] == 0.0
        assert headers[0].Modality == "MR" and headers[0].PatientID == subject
        assert int(headers[0].CardiacNumberOfImages) == len(files)
        assert headers[0].pixel_array.shape == (32, 32)


def test_same_seed_same_cohort(cohort, tmp_path: Path) -> None:
    again = synth_cmr_lax_cohort(tmp_path, n=N, seed=2, size=32, frame_choices=(6, 8),
                                 missing_rate=0.3, extra_rate=0.5)
    pd.testing.assert_frame_equal(again.ages, cohort.ages)
    first = sorted(cohort.dicom_root.rglob("*.dcm"))[0]
    twin = tmp_path / first.relative_to(cohort.root)
    assert np.array_equal(pydicom.dcmread(first).pixel_array, pydicom.dcmread(twin).pixel_array)


def test_age_effects_have_the_documented_sign() -> None:
    rng = np.random.default_rng(0)
    ages = rng.uniform(40, 80, 400)
    hearts = [random_lax_heart(rng, a) for a in ages]
    for name, (_, slope, _) in EFFECTS.items():
        if slope:
            values = np.array([getattr(h, name) for h in hearts])
            assert np.sign(np.corrcoef(ages, values)[0, 1]) == np.sign(slope), name


def test_older_hearts_refill_later_and_have_more_wall() -> None:
    young = random_lax_heart(np.random.default_rng(1), 45)
    young = dataclasses.replace(young, **{k: v + s * -0.75 for k, (v, s, _) in EFFECTS.items()})
    old = dataclasses.replace(young, **{k: v + s * 0.75 for k, (v, s, _) in EFFECTS.items()})
    phases = np.array([0.0, 0.35, 0.5, 0.6, 0.99])
    c_young, c_old = contraction(young, phases), contraction(old, phases)
    assert c_young[0] == pytest.approx(0) and c_young[1] == pytest.approx(1)
    assert c_old[2] > c_young[2] and c_old[3] > c_young[3]  # slower early refilling
    x, y = np.meshgrid(np.linspace(-80, 80, 161), np.linspace(-80, 80, 161))
    wall_young, _ = heart_masks(young, "3ch", x, y, 0.0)
    wall_old, _ = heart_masks(old, "3ch", x, y, 0.0)
    assert wall_old.sum() > 1.1 * wall_young.sum()  # thicker walls around a smaller cavity
    frame = render_view(old, "4ch", 48, 2.2, phases[:1])[0]
    assert frame.max() > 0.8 * BLOOD and frame.shape == (48, 48)


def test_missing_views_and_bad_requests(tmp_path: Path) -> None:
    one = synth_cmr_lax_cohort(tmp_path, n=3, seed=0, size=24, frame_choices=(4,),
                               missing_rate=1.0, extra_rate=0.0)
    assert all(len(v.split(",")) == 1 for v in one.truth["views"])
    with pytest.raises(InputError, match="views"):
        synth_cmr_lax_cohort(tmp_path / "x", n=2, views=("sax",))
