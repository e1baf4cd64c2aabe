"""Splits by subject: holdout, K-fold and nested K x J cross-validation, stratified on the target.

Everything is assigned per subject (the manifest's patient_id), never per sample, so the
samples of a subject (e.g. its 3- and 4-chamber cines) always share a fold: no subject is in
both the training and the test data of a fold.

Stratification (`target_strata`): subjects are cut into `n_bins` quantile bins of the target
(fewer when there are too few subjects for every fold to get one of each bin). Assignment
(`stratified_folds`): subjects are ordered by bin, randomly (seeded) within a bin, and dealt
to the folds in turn, with the fold labels then permuted at random: fold sizes differ by at
most one and every bin is spread evenly over the folds. Subjects without a finite target get
fold -1 (they are in no fold) when stratifying.

Nested cross-validation (`nested_folds`): K outer folds over all subjects; then, for each
outer fold k, J inner folds over the subjects outside it (stratified again, on their own
bins). Outer fold k is the test set of model k; inner fold j of the rest is the validation
set of inner model (k, j), trained on the remaining inner folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.utils import write_csv

DEFAULT_BINS = 5
NO_FOLD = -1
SUBJECT = "subject"
ROLES = ("train", "val", "test")


def _seeded(seed: int | Sequence[int]) -> np.random.Generator:
    return np.random.default_rng(list(seed) if isinstance(seed, Sequence) else seed)


def target_strata(y: np.ndarray, n_bins: int = DEFAULT_BINS, min_per_bin: int = 1) -> np.ndarray:
    """Quantile bin of each finite target (0..b-1), -1 for missing ones; at most
    len(finite) // min_per_bin bins."""
    y = np.asarray(y, dtype=float)
    out = np.full(len(y), NO_FOLD, dtype=int)
    finite = np.isfinite(y)
    bins = int(min(n_bins, max(1, finite.sum() // max(1, min_per_bin))))
    if finite.sum() == 0 or bins <= 1:
        out[finite] = 0
        return out
    edges = np.quantile(y[finite], np.linspace(0, 1, bins + 1)[1:-1])
    out[finite] = np.searchsorted(edges, y[finite], side="right")
    return out


def stratified_folds(n_folds: int, strata: np.ndarray | None = None, n: int | None = None,
                     seed: int | Sequence[int] = 0) -> np.ndarray:
    """Fold (0..n_folds-1) of each item, balanced within strata; -1 where the stratum is -1."""
    strata = np.zeros(int(n or 0), dtype=int) if strata is None else np.asarray(strata, int)
    usable = np.flatnonzero(strata >= 0)
    if n_folds < 2 or len(usable) < n_folds:
        raise InputError(None, "folds", f"at least 2 folds and at least {n_folds} subjects "
                         "with a target", f"{n_folds} folds, {len(usable)} subject(s)")
    rng = _seeded(seed)
    order = usable[np.lexsort((rng.random(len(usable)), strata[usable]))]
    folds = np.full(len(strata), NO_FOLD, dtype=int)
    folds[order] = rng.permutation(n_folds)[np.arange(len(order)) % n_folds]
    return folds


def subject_table(manifest: pd.DataFrame, target: str | None = None,
                  group: str = "patient_id") -> pd.DataFrame:
    """One row per subject (sorted): `subject` and, with a target, its mean over samples."""
    if group not in manifest.columns:
        raise InputError(None, group, "a subject column in the manifest",
                         f"columns {list(manifest.columns)}")
    subjects = manifest[group].astype(str)
    if target is None:
        return pd.DataFrame({SUBJECT: sorted(subjects.unique())})
    if target not in manifest.columns:
        raise InputError(None, target, "a target column in the manifest",
                         f"columns {list(manifest.columns)}")
    values = pd.to_numeric(manifest[target], errors="coerce")
    table = values.groupby(subjects).mean().rename(target).reset_index()
    return table.rename(columns={group: SUBJECT, "index": SUBJECT}).sort_values(SUBJECT) \
        .reset_index(drop=True)


def kfold_by_subject(manifest: pd.DataFrame, k: int, seed: int = 0, target: str | None = None,
                     n_bins: int = DEFAULT_BINS, group: str = "patient_id") -> pd.DataFrame:
    """A copy of the manifest with `fold` set per subject (stratified when `target` is given)."""
    table = subject_table(manifest, target, group)
    strata = target_strata(table[target].to_numpy(), n_bins, k) if target else None
    table["fold"] = stratified_folds(k, strata, len(table), seed)
    out = manifest.copy()
    out["fold"] = out[group].astype(str).map(dict(zip(table[SUBJECT], table["fold"],
                                                          strict=True))).astype(int)
    return out


def holdout_by_subject(manifest: pd.DataFrame, test_fraction: float = 0.2,
                       val_fraction: float = 0.1, seed: int = 0, target: str | None = None,
                       n_bins: int = DEFAULT_BINS, group: str = "patient_id") -> pd.DataFrame:
    """A copy of the manifest with `split` train/val/test per subject (stratified by target)."""
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise InputError(None, "test_fraction/val_fraction", "fractions in (0, 1) summing "
                         "below 1", f"{test_fraction}, {val_fraction}")
    table = subject_table(manifest, target, group)
    parts = 20  # assign twentieths, then map them to splits
    strata = target_strata(table[target].to_numpy(), n_bins, parts) if target else None
    slot = stratified_folds(parts, strata, len(table), seed)
    n_test, n_val = round(test_fraction * parts), round(val_fraction * parts)
    split = np.where(slot < 0, "", np.where(slot < n_test, "test",
                                            np.where(slot < n_test + n_val, "val", "train")))
    out = manifest.copy()
    out["split"] = out[group].astype(str).map(dict(zip(table[SUBJECT], split, strict=True)))
    return out


@dataclass
class NestedFolds:
    """Outer and inner fold of every subject (table columns: subject, target, stratum,
    outer, inner_<k> = inner fold of the subject when outer fold k is held out)."""

    table: pd.DataFrame
    outer: int
    inner: int

    def _column(self, k: int) -> pd.Series:
        return self.table[f"inner_{k}"]

    def subjects(self, k: int, role: str, j: int | None = None) -> list[str]:
        """Subjects of outer fold k in `role`: test (fold k), train and val (inner fold j
        of the others: val is fold j, train the rest); without j, train is all non-test."""
        if role not in ROLES:
            raise InputError(None, "role", f"one of {ROLES}", repr(role))
        outer = self.table["outer"]
        if role == "test":
            mask = outer == k
        elif j is None:  # no inner fold: every non-test subject trains, none validates
            mask = (outer >= 0) & (outer != k) & (role == "train")
        else:
            inner = self._column(k)
            mask = (outer >= 0) & (outer != k) & ((inner == j) if role == "val" else
                                                   (inner != j))
        return self.table.loc[mask, SUBJECT].astype(str).tolist()

    def write(self, path: str | Path) -> Path:
        """The table as CSV."""
        return write_csv(self.table, path)

    @classmethod
    def read(cls, path: str | Path) -> NestedFolds:
        """A table written by `write`."""
        table = pd.read_csv(path, dtype={SUBJECT: str})
        inner_cols = [c for c in table.columns if c.startswith("inner_")]
        if "outer" not in table.columns or not inner_cols:
            raise InputError(path, "columns", "subject, outer, inner_<k>",
                             f"columns {list(table.columns)}")
        inner = int(table[inner_cols].max().max()) + 1
        return cls(table, len(inner_cols), inner)


def nested_folds(subjects: Sequence[str], y: np.ndarray | None, outer: int, inner: int,
                 n_bins: int = DEFAULT_BINS, seed: int = 0) -> NestedFolds:
    """Outer folds over all subjects and inner folds within each outer training set."""
    subjects = [str(s) for s in subjects]
    y_arr = np.full(len(subjects), 0.0) if y is None else np.asarray(y, dtype=float)
    strata = target_strata(y_arr, n_bins, outer)
    table = pd.DataFrame({SUBJECT: subjects, "target": y_arr, "stratum": strata})
    table["outer"] = stratified_folds(outer, strata, seed=(seed, 0))
    for k in range(outer):
        rest = np.flatnonzero((table["outer"] >= 0) & (table["outer"] != k))
        inner_strata = target_strata(y_arr[rest], n_bins, inner)
        column = np.full(len(subjects), NO_FOLD, dtype=int)
        column[rest] = stratified_folds(inner, inner_strata, seed=(seed, k + 1))
        table[f"inner_{k}"] = column
    return NestedFolds(table, outer, inner)


def samples_of(manifest: pd.DataFrame, subjects: Sequence[str],
               group: str = "patient_id") -> list[str]:
    """Sample ids (manifest order) of the given subjects."""
    keep = manifest[group].astype(str).isin({str(s) for s in subjects})
    return manifest.loc[keep, "sample_id"].astype(str).tolist()
