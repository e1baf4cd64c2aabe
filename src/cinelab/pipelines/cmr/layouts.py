"""The cmr pipeline's dataset layouts for `cinelab ingest` (`formats.ingest.register_layout`).

Each detect function claims only its own layout, so auto-detection never sees two:

  acdc      patientNNN/Info.cfg folders (root, its children, or training/ and testing/)
  acdc-h5   patientNNN_frameNN.h5 files, no Info.cfg patient folder
  dsb       <pid>/study/sax_*/ DICOM folders (Kaggle Data Science Bowl); converted to 4D
            NIfTI cines under options["convert_to"] (or options["out"]/dsb_nifti)
  cmr-png   images/ + masks/ PNG folders, or <name>.png beside <name>_mask.png, and no
            Info.cfg, .h5 or DSB study folder
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError
from cinelab.formats.ingest import Ingested, Layout
from cinelab.io.table import read_table
from cinelab.pipelines.cmr.acdc import (
    H5_NAME,
    INFO_FILE,
    find_acdc_patients,
    read_acdc,
    read_acdc_h5,
)
from cinelab.pipelines.cmr.dsb import SAX_PREFIX, STUDY_DIR, convert_dsb, find_dsb_patients
from cinelab.pipelines.cmr.pngmasks import MASK_SUFFIX, PNG, paired_dirs, read_png_masks

EF_RANGE = {"EF": (0.0, 100.0)}
DSB_CONVERTED = "dsb_nifti"


def is_acdc(root: Path) -> bool:
    """patientNNN folders holding Info.cfg."""
    return root.is_dir() and any((p / INFO_FILE).is_file() for p in find_acdc_patients(root))


def is_acdc_h5(root: Path) -> bool:
    """patientNNN_frameNN.h5 files (and no ACDC NIfTI patient folder)."""
    if not root.is_dir() or is_acdc(root):
        return False
    return any(H5_NAME.match(p.stem) for p in root.rglob("*.h5"))


def is_dsb(root: Path) -> bool:
    """<pid>/study/sax_* folders."""
    return root.is_dir() and any(any((p / STUDY_DIR).glob(f"{SAX_PREFIX}*"))
                                 for p in find_dsb_patients(root))


def is_png_masks(root: Path) -> bool:
    """images/ + masks/ with PNGs, or a <name>_mask.png, and none of the other CMR layouts."""
    if not root.is_dir() or is_acdc(root) or is_acdc_h5(root) or is_dsb(root):
        return False
    images, masks = paired_dirs(root)
    if images is not None and masks is not None:
        return any(images.rglob(f"*{PNG}")) and any(masks.rglob(f"*{PNG}"))
    return any(root.rglob(f"*{MASK_SUFFIX}{PNG}"))


def with_labels(manifest: pd.DataFrame, labels: str | Path | None) -> pd.DataFrame:
    """The manifest with the columns of a labels CSV joined on sample_id or patient_id."""
    if labels is None or manifest.empty:
        return manifest
    table = read_table(labels, text_columns=("sample_id", "patient_id"))
    key = next((c for c in ("sample_id", "patient_id") if c in table.columns), None)
    if key is None:
        raise InputError(labels, "columns", "a sample_id or patient_id column",
                         f"columns {list(table.columns)}")
    extra = [c for c in table.columns if c not in manifest.columns or c == key]
    return manifest.merge(table[extra], on=key, how="left")


def read_acdc_layout(root: Path, options: Mapping[str, Any]) -> Ingested:
    """ACDC NIfTI: one row per ED/ES frame with EDV/ESV/EF/LVM (mL, g) from the masks."""
    manifest, problems = read_acdc(root)
    return Ingested(with_labels(manifest, options.get("labels")), "acdc", None, problems)


def read_acdc_h5_layout(root: Path, options: Mapping[str, Any]) -> Ingested:
    """ACDC HDF5: one row per patientNNN_frameNN.h5 (volumes in voxels only)."""
    manifest, problems = read_acdc_h5(root)
    return Ingested(with_labels(manifest, options.get("labels")), "acdc-h5", None, problems)


def read_dsb_layout(root: Path, options: Mapping[str, Any]) -> Ingested:
    """DSB DICOM: every patient cleaned and written as a 4D NIfTI cine (one row each)."""
    target = options.get("convert_to") or (
        Path(options["out"]) / DSB_CONVERTED if options.get("out") else None)
    if target is None:
        raise InputError(root, "convert_to", "a folder for the cleaned NIfTI cines",
                         "none given", "pass --option convert_to=FOLDER (or run `cinelab "
                         "cmr convert` first and ingest its output)")
    result = convert_dsb(root, target)
    return Ingested(with_labels(result.manifest, options.get("labels")), "dsb", None,
                    result.problems)


def read_png_layout(root: Path, options: Mapping[str, Any]) -> Ingested:
    """PNG image/mask pairs: one row per pair."""
    manifest, problems = read_png_masks(root)
    return Ingested(with_labels(manifest, options.get("labels")), "cmr-png", None, problems)


CMR_LAYOUTS = (
    Layout("acdc", is_acdc, read_acdc_layout,
           "ACDC NIfTI: patientNNN/Info.cfg, _4d.nii.gz, _frameNN(_gt).nii.gz", EF_RANGE),
    Layout("acdc-h5", is_acdc_h5, read_acdc_h5_layout,
           "ACDC HDF5: patientNNN_frameNN.h5 with image and label"),
    Layout("dsb", is_dsb, read_dsb_layout,
           "Kaggle DSB: <pid>/study/sax_*/*.dcm (+ train.csv, solution.csv)", EF_RANGE),
    Layout("cmr-png", is_png_masks, read_png_layout,
           "CMR PNG pairs: images/ + masks/, or <name>.png + <name>_mask.png"),
)
