"""Subject-level splits: nested folds never leak a subject, strata are balanced, holdout/K-fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cinelab.data.splits import (
    NestedFolds,
    holdout_by_subject,
    kfold_by_subject,
    nested_folds,
    samples_of,
    stratified_folds,
    subject_table,
    target_strata,
)
from cinelab.errors import InputError

N_SUBJECTS, OUTER, INNER = 47, 5, 3


def two_view_manifest(n: int = N_SUBJECTS, seed: int = 0) -> pd.DataFrame:
    """n subjects with a 3ch and a 4ch sample each (subject 3 has only 4ch), ages 40-80."""
    ages = np.random.default_rng(seed).uniform(40, 80, n)
    rows = [{"sample_id": f"s{i}_{v}", "patient_id": f"s{i}", "view": v, "age": ages[i]}
            for i in range(n) for v in ("3ch", "4ch") if not (i == 3 and v == "3ch")]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def folds() -> NestedFolds:
    table = subject_table(two_view_manifest(), "age")
    return nested_folds(table["subject"], table["age"].to_numpy(), OUTER, INNER, seed=1)


def test_each_subject_in_exactly_one_test_fold(folds: NestedFolds) -> None:
    tests = [s for k in range(OUTER) for s in folds.subjects(k, "test")]
    assert sorted(tests) == sorted(folds.table["subject"])
    assert len(tests) == len(set(tests))
    sizes = [len(folds.subjects(k, "test")) for k in range(OUTER)]
    assert max(sizes) - min(sizes) <= 1


def test_no_subject_or_sample_in_train_and_test(folds: NestedFolds) -> None:
    manifest = two_view_manifest()
    for k in range(OUTER):
        test = set(folds.subjects(k, "test"))
        assert not test & set(folds.subjects(k, "train"))
        vals = []
        for j in range(INNER):
            train, val = set(folds.subjects(k, "train", j)), set(folds.subjects(k, "val", j))
            assert not (train & val) and not (train & test) and not (val & test)
            assert train | val == set(folds.subjects(k, "train"))
            test_ids = set(samples_of(manifest, test))
            assert not test_ids & set(samples_of(manifest, train | val))
            vals += list(val)
        # the inner validation folds partition the outer training subjects
        assert sorted(vals) == sorted(folds.subjects(k, "train"))


def test_views_of_a_subject_share_the_fold() -> None:
    out = kfold_by_subject(two_view_manifest(), 4, seed=2, target="age")
    assert (out.groupby("patient_id")["fold"].nunique() == 1).all()
    assert set(out["fold"]) == {0, 1, 2, 3}


def test_strata_spread_evenly_over_folds(folds: NestedFolds) -> None:
    counts = pd.crosstab(folds.table["stratum"], folds.table["outer"])
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()
    means = folds.table.groupby("outer")["target"].mean()
    assert means.max() - means.min() < 6.0  # uniform 40-80: unstratified folds vary more


def test_target_strata_quantiles_and_missing() -> None:
    y = np.array([1.0, 2, 3, 4, 5, 6, np.nan, 8])
    strata = target_strata(y, n_bins=2)
    assert strata[6] == -1
    assert list(strata[[0, 1, 2]]) == [0, 0, 0] and list(strata[[4, 5, 7]]) == [1, 1, 1]
    assert target_strata(y, n_bins=10, min_per_bin=4).max() == 0  # 7 values, folds of 4


def test_subjects_without_target_are_in_no_fold() -> None:
    y = np.r_[np.linspace(40, 80, 10), np.nan]
    nf = nested_folds([f"s{i}" for i in range(11)], y, 2, 2)
    assert nf.table.loc[10, "outer"] == -1
    assert all("s10" not in nf.subjects(k, role, 0) for k in range(2)
               for role in ("train", "val", "test"))


def test_folds_are_reproducible_and_seeded() -> None:
    a = stratified_folds(3, np.zeros(9, int), seed=5)
    assert np.array_equal(a, stratified_folds(3, np.zeros(9, int), seed=5))
    assert not all(np.array_equal(a, stratified_folds(3, np.zeros(9, int), seed=s))
                   for s in range(6, 10))


def test_nested_folds_roundtrip(folds: NestedFolds, tmp_path) -> None:
    back = NestedFolds.read(folds.write(tmp_path / "folds.csv"))
    assert (back.outer, back.inner) == (OUTER, INNER)
    assert back.subjects(2, "val", 1) == folds.subjects(2, "val", 1)


def test_holdout_by_subject_fractions() -> None:
    out = holdout_by_subject(two_view_manifest(200), 0.2, 0.1, seed=0, target="age")
    per_subject = out.groupby("patient_id")["split"].agg(set)
    assert (per_subject.map(len) == 1).all()
    shares = out.drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.2, abs=0.02)
    assert shares["val"] == pytest.approx(0.1, abs=0.02)


def test_bad_requests_raise() -> None:
    with pytest.raises(InputError, match="folds"):
        stratified_folds(5, np.zeros(3, int))
    with pytest.raises(InputError, match="test_fraction"):
        holdout_by_subject(two_view_manifest(10), 0.9, 0.2)
    with pytest.raises(InputError, match="EF"):
        subject_table(two_view_manifest(5), "EF")
    with pytest.raises(InputError, match="role"):
        NestedFolds(pd.DataFrame({"subject": [], "outer": []}), 1, 1).subjects(0, "tune")
