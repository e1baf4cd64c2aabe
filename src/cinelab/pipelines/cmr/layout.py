"""Any short-axis CMR folder -> manifest (layout detected), with training splits by patient.

Recognised layouts, in this order: a folder holding manifest.csv (a cleaned DSB conversion,
a pseudo-label subset of `infer.pseudo_pairs`, any CMR manifest), ACDC HDF5 samples, the
ACDC NIfTI layout (patientNNN/Info.cfg) and PNG image + mask folders. A manifest CSV file is
read as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.data.manifest import read_manifest
from cinelab.errors import InputError, Problem
from cinelab.pipelines.cmr.acdc import find_acdc_patients, read_acdc, read_acdc_h5
from cinelab.pipelines.cmr.pngmasks import read_png_masks
from cinelab.utils import resolve_beside

MANIFEST_FILE = "manifest.csv"
PATH_SUFFIX = "_path"
TRAIN, TEST = "train", "test"


def read_cmr_source(folder: str | Path) -> tuple[pd.DataFrame, list[Problem]]:
    """(manifest, problems) of a CMR source: ACDC NIfTI (Info.cfg), ACDC HDF5, a folder
    with manifest.csv (DSB conversion, pseudo-label subset), PNG image/mask folders, or a
    CSV. The problems are the layout reader's (bad Info.cfg, missing frames, broken HDF5,
    unpaired PNGs): callers hand them on to the store's / the run's problems.csv."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix.lower() == ".csv":
        return resolve_paths(read_manifest(folder), folder.parent), []
    if not folder.is_dir():
        raise InputError(folder, "source", "a folder of CMR data (ACDC, HDF5, DSB conversion, "
                         "PNG pairs) or a manifest CSV", "no such folder")
    if (folder / MANIFEST_FILE).exists():
        return resolve_paths(read_manifest(folder / MANIFEST_FILE), folder), []
    if any(folder.rglob("*.h5")):
        return read_acdc_h5(folder)
    if find_acdc_patients(folder):
        return read_acdc(folder, volumes=False)
    return read_png_masks(folder)


def read_cmr_folder(folder: str | Path) -> pd.DataFrame:
    """The manifest of `read_cmr_source` alone (for inspection; the pipeline's prepare,
    predict and run use `read_cmr_source` so that no reader problem is dropped)."""
    return read_cmr_source(folder)[0]


def resolve_paths(manifest: pd.DataFrame, base: Path) -> pd.DataFrame:
    """A copy whose relative `path` and `*_path` values that do not exist as they are (from
    the working folder) are taken relative to `base`, the manifest's folder."""
    out = manifest.copy()
    for column in [c for c in out.columns if c == "path" or str(c).endswith(PATH_SUFFIX)]:
        out[column] = [str(resolve_beside(v, base)) if v else ""
                       for v in out[column].fillna("").astype(str)]
    return out


def assign_splits(manifest: pd.DataFrame, test_fraction: float = 0.0,
                  seed: int = 0) -> pd.DataFrame:
    """A copy whose rows without a split get one per patient: a seeded `test_fraction` of
    those patients (at least one when the fraction is positive and two or more are there)
    'test', the rest 'train'. Rows that had a split keep it."""
    if not 0 <= test_fraction < 1:
        raise InputError(None, "test_fraction", "a fraction in [0, 1)", repr(test_fraction))
    out = manifest.copy()
    split = out["split"].fillna("").astype(str) if "split" in out else pd.Series("", out.index)
    free = split == ""
    patients = np.array(sorted(out.loc[free, "patient_id"].astype(str).unique()))
    n_test = 0
    if test_fraction > 0 and len(patients) >= 2:
        n_test = min(len(patients) - 1, max(1, round(test_fraction * len(patients))))
    order = np.random.default_rng(seed).permutation(len(patients))
    test = set(patients[order[:n_test]].tolist())
    chosen = np.where(out["patient_id"].astype(str).isin(test), TEST, TRAIN)
    out["split"] = np.where(free, chosen, split)
    return out
