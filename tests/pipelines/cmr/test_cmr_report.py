"""The cine MRI report: self-contained HTML with tables, plots and worst-case overlays."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cinelab.errors import InputError
from cinelab.io.nifti import write_volume
from cinelab.pipelines.cmr.evaluate import evaluate_cmr
from cinelab.pipelines.cmr.mask_sets import load_mask, mask_index
from cinelab.pipelines.cmr.report import build_cmr_report, case_overlay, dice_pivot
from cinelab.pipelines.cmr.synth import synth_cmr_cohort


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmr_report")
    cohort = synth_cmr_cohort(root / "cohort", n=3, seed=4, layout="acdc", defects=False,
                              n_frames=4, size=(48, 40))
    for _, row in mask_index(cohort.acdc_root).iterrows():
        labels, spacing = load_mask(row["mask_path"])
        shrunk = labels.copy()
        shrunk[(labels == 3) & ~ndimage.binary_erosion(labels == 3)] = 2
        write_volume(root / "pred" / f"{row['image_id']}_pred.nii.gz", shrunk.astype(np.uint8),
                     spacing)
    evaluate_cmr({"eroded": root / "pred"}, cohort.acdc_root, root / "eval")
    return root / "eval"


@pytest.mark.slow
def test_report_is_self_contained(evaluated: Path) -> None:
    path = build_cmr_report(evaluated)
    text = path.read_text()
    assert path == evaluated / "report.html"
    assert not re.findall(r'(?:src|href)="(?!data:image/png;base64,)', text)
    assert "<script" not in text and "http" not in text
    images = re.findall(r'src="data:image/png;base64,', text)
    assert len(images) >= 3 + 3  # dice box, EF scatter, Bland-Altman + 3 worst cases
    for needle in ("Dice per class", "EF absolute difference", "Worst cases", "eroded",
                   "patient001"):
        assert needle in text, needle


def test_report_options_and_errors(evaluated: Path, tmp_path: Path) -> None:
    out = build_cmr_report(evaluated, tmp_path / "r.html", n_worst=0)
    assert "Worst cases" not in out.read_text()
    with pytest.raises(InputError, match="cmr evaluate"):
        build_cmr_report(tmp_path)


def test_case_overlay_and_pivot(evaluated: Path) -> None:
    truth = np.zeros((2, 16, 16), np.uint8)
    truth[:, 4:12, 4:12], truth[:, 6:10, 6:10] = 2, 3
    png = case_overlay(truth, truth, image=np.random.default_rng(0).random((2, 16, 16)))
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == 2 * image.shape[0]  # two slices side by side
    with pytest.raises(InputError, match="shape"):
        case_overlay(truth, truth[:1])
    summary = pd.read_csv(evaluated / "dice_summary.csv")
    pivot = dice_pivot(summary)
    assert {"model", "phase", "LV", "MYO", "RV"} <= set(pivot.columns)
    assert pivot["phase"].tolist() == ["ED", "ES", "all"]
