"""Issue 12 wired into CXR preparation: a lung mask whose aspect ratio is not its image's is
a problem row, never stretched onto the image and logged "ok"; the other samples are
exactly what a cohort without it gives."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.pipelines.cxr.crop import fit_mask
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.prepare import prepare_cxr_stores
from cinelab.pipelines.cxr.synth import synth_cxr_cohort

SIZE = 64


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    cohort = synth_cxr_cohort(tmp_path_factory.mktemp("cxr") / "cohort", n=4, seed=3,
                              size=SIZE)
    return read_cxr_folders(cohort).manifest.reset_index(drop=True)


def test_mask_of_another_aspect_is_a_problem(manifest: pd.DataFrame, tmp_path: Path) -> None:
    bad = manifest.copy()
    wrong = tmp_path / "wrong.png"
    mask = cv2.imread(str(bad.loc[1, "mask_path"]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(wrong), cv2.resize(mask, (40, SIZE), interpolation=cv2.INTER_NEAREST))
    bad.loc[1, "mask_path"] = str(wrong)
    half = tmp_path / "half.png"  # the same aspect at half size: resized, fine
    cv2.imwrite(str(half), mask[::2, ::2])
    bad.loc[2, "mask_path"] = str(half)
    mixed = prepare_cxr_stores(bad, tmp_path / "mixed", sizes=[32], crops=("crop",),
                               channels=1, workers=1)
    (problem,) = mixed.problems
    assert problem.file == str(bad.loc[1, "path"])
    assert (problem.column, problem.found) == ("lung mask shape", "64x40 (width/height 0.625)")
    assert problem.expected.startswith("the image's aspect ratio (64x64, width/height 1.000")
    clean = prepare_cxr_stores(manifest.drop(index=1), tmp_path / "clean", sizes=[32],
                               crops=("crop",), channels=1, workers=1)
    assert clean.problems == []
    good = PreparedStore(clean.stores[("crop", 32)])
    store = PreparedStore(mixed.stores[("crop", 32)])
    assert sorted(store.ids) == sorted(good.ids)
    for sid in good.ids:
        if sid != str(bad.loc[2, "sample_id"]):  # its mask was halved: a nearby crop
            np.testing.assert_array_equal(store.frames(sid), good.frames(sid))


def test_fit_mask_tolerance() -> None:
    assert fit_mask(np.ones((100, 101), bool), (200, 200)).shape == (200, 200)  # 1 %: ok
    with pytest.raises(InputError) as err:
        fit_mask(np.ones((100, 110), bool), (200, 200))
    assert err.value.field == "lung mask shape" and err.value.found.startswith("100x110")
