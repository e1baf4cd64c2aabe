"""Synthetic short-axis cine MRI cohorts with known LV/RV volumes, in DSB and ACDC layouts.

`synth_cmr_cohort(out, n, seed, layout)` writes, deterministically by seed::

    out/truth.csv      one row per patient: group, EDV, ESV, EF, myocardial volume and mass,
                       RV volumes (all mL, from the voxel masks x voxel size), the analytic
                       half-ellipsoid volumes, ED/ES frames (0-based), geometry
    out/defects.csv    pid, defect, expected_problem (DSB patients with an injected defect)
    out/dsb/           <pid>/study/sax_<n>/*.dcm + train.csv (wide) + solution.csv (long)
    out/acdc/          training|testing/patientNNN/ (Info.cfg, _4d, ED/ES frames + _gt)

Patient i is group GROUPS[i % 5]; with `defects=True` patient i (1 <= i <= len(DEFECTS))
gets defect DEFECTS[i - 1]; every LANDSCAPE_EVERY-th patient is stored landscape
(rows < columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.pipelines.cmr.synth_writers import (
    DEFECT_PROBLEMS,
    DEFECTS,
    Placement,
    write_acdc_patient,
    write_dsb_patient,
)
from cinelab.synth.cmr_phantom import (
    GROUPS,
    CineStack,
    Grid,
    analytic_lv_ml,
    random_heart,
    render_stack,
    voxel_volumes_ml,
)
from cinelab.utils import write_csv

LAYOUTS = ("dsb", "acdc", "both")
DEFAULT_SIZE = (112, 96)  # (rows, columns), portrait like most DSB studies
PIXEL_SPACING_RANGE = (2.0, 2.4)  # mm
SLICE_SPACINGS = (8.0, 10.0)  # mm
MIN_SLICES, MAX_SLICES = 8, 12
FIRST_SLICE_FRACTION = 0.4  # first slice centre this many spacings below the base plane
RR_RANGE = (800.0, 1100.0)  # ms
SCALE_RANGE = (400.0, 800.0)  # stored value of blood
NOISE = 0.04  # Rician sigma relative to blood
LANDSCAPE_EVERY = 4
MYO_DENSITY_G_PER_ML = 1.05
HEIGHT_RANGE, WEIGHT_RANGE = (155.0, 195.0), (50.0, 110.0)
TRAIN_FRACTION = 0.75  # DSB train.csv / ACDC training share; the rest is solution / testing
DSB_DIR, ACDC_DIR = "dsb", "acdc"


@dataclass
class CmrCohort:
    """Where a synthetic cohort went and its ground truth."""

    root: Path
    dsb_root: Path | None
    acdc_root: Path | None
    truth: pd.DataFrame
    defects: pd.DataFrame


def synth_cmr_cohort(out: str | Path, n: int = 12, seed: int = 0, layout: str = "dsb",
                     defects: bool = True, size: tuple[int, int] = DEFAULT_SIZE,
                     n_frames: int = 20, noise: float = NOISE) -> CmrCohort:
    """Render `n` patients and write them in `layout` ("dsb", "acdc" or "both")."""
    if layout not in LAYOUTS:
        raise InputError(None, "layout", f"one of {LAYOUTS}", repr(layout))
    if n < 1 or n_frames < 4 or min(size) < 16:
        raise InputError(None, "n, n_frames, size", "n >= 1, n_frames >= 4, size >= 16 px",
                         f"n={n}, n_frames={n_frames}, size={size}")
    out = Path(out)
    dsb = out / DSB_DIR if layout in ("dsb", "both") else None
    acdc = out / ACDC_DIR if layout in ("acdc", "both") else None
    truth, defect_rows = [], []
    n_train = max(1, int(round(n * TRAIN_FRACTION)))
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        stack, placement = _patient(rng, i, size, n_frames, noise)
        row = _truth_row(i, stack)
        defect = DEFECTS[i - 1] if defects and 1 <= i <= len(DEFECTS) else None
        if dsb is not None:
            write_dsb_patient(dsb, row["pid"], stack, placement, rng, defect, seed)
            if defect:
                defect_rows.append({"pid": row["pid"], "defect": defect,
                                    "expected_problem": DEFECT_PROBLEMS[defect]})
        if acdc is not None:
            part = "training" if i < n_train else "testing"
            write_acdc_patient(acdc / part, i + 1, stack, placement, rng,
                               _acdc_info(rng, row, n_frames))
        truth.append(row)
    truth_df = pd.DataFrame(truth)
    defects_df = pd.DataFrame(defect_rows, columns=["pid", "defect", "expected_problem"])
    write_csv(truth_df, out / "truth.csv")
    write_csv(defects_df, out / "defects.csv")
    if dsb is not None:
        _write_dsb_volumes(dsb, truth_df, n_train)
    return CmrCohort(out, dsb, acdc, truth_df, defects_df)


def _patient(rng: np.random.Generator, i: int, size: tuple[int, int], n_frames: int,
             noise: float) -> tuple[CineStack, Placement]:
    """Draw patient i's heart and acquisition, render its cine."""
    heart = random_heart(rng, GROUPS[i % len(GROUPS)])
    rows, cols = size if (i + 1) % LANDSCAPE_EVERY else size[::-1]
    pixel = float(rng.uniform(*PIXEL_SPACING_RANGE))
    spacing = float(rng.choice(SLICE_SPACINGS))
    first = -FIRST_SLICE_FRACTION * spacing
    depth = heart.length_mm + heart.radius_mm * 0.4  # cavity plus an apical wall margin
    n_slices = int(np.clip(np.ceil((depth + first) / spacing) + 1, MIN_SLICES, MAX_SLICES))
    stack = render_stack(heart, Grid(rows, cols, (pixel, pixel)), n_slices, spacing, n_frames,
                         float(rng.uniform(*RR_RANGE)), first)
    placement = Placement(orientation=_oblique_orientation(rng),
                          centre=rng.uniform(-60, 60, 3),
                          scale=float(rng.uniform(*SCALE_RANGE)), noise=noise)
    return stack, placement


def _oblique_orientation(rng: np.random.Generator) -> np.ndarray:
    """A short-axis-like oblique plane: row and column direction cosines."""
    normal = np.array([-0.6, 0.5, -0.6]) + rng.normal(0, 0.1, 3)
    normal /= np.linalg.norm(normal)
    row = np.cross(normal, [0.0, 0.0, 1.0])
    row /= np.linalg.norm(row)
    return np.concatenate([row, np.cross(normal, row)])


def _truth_row(i: int, stack: CineStack) -> dict[str, object]:
    """Volumes from the voxel masks and the analytic shape."""
    vol = voxel_volumes_ml(stack.labels, stack.voxel_mm3)
    ed, es = int(np.argmax(vol["LV"])), int(np.argmin(vol["LV"]))
    edv, esv = float(vol["LV"][ed]), float(vol["LV"][es])
    h = stack.heart
    a_edv = analytic_lv_ml(h, float(stack.contraction.min()))
    a_esv = analytic_lv_ml(h, float(stack.contraction.max()))
    return {"pid": str(i + 1), "acdc_id": f"patient{i + 1:03d}", "group": h.group,
            "EDV": edv, "ESV": esv, "EF": 100.0 * (edv - esv) / edv,
            "myo_ml": float(vol["MYO"][ed]),
            "LVM": float(vol["MYO"][ed]) * MYO_DENSITY_G_PER_ML,
            "RV_EDV": float(vol["RV"][ed]), "RV_ESV": float(vol["RV"][es]),
            "analytic_EDV": a_edv, "analytic_ESV": a_esv,
            "analytic_EF": 100.0 * (a_edv - a_esv) / a_edv,
            "ed_frame": ed, "es_frame": es, "frames": len(stack.contraction),
            "slices": len(stack.z), "rows": stack.grid.rows, "cols": stack.grid.cols,
            "pixel_spacing": stack.grid.spacing[0], "slice_spacing": stack.slice_spacing}


def _acdc_info(rng: np.random.Generator, row: dict, n_frames: int) -> dict[str, object]:
    """Info.cfg fields (ED/ES 1-based as in ACDC)."""
    return {"ED": int(row["ed_frame"]) + 1, "ES": int(row["es_frame"]) + 1,
            "Group": row["group"], "Height": round(float(rng.uniform(*HEIGHT_RANGE)), 1),
            "Weight": round(float(rng.uniform(*WEIGHT_RANGE)), 1), "NbFrame": n_frames}


def _write_dsb_volumes(root: Path, truth: pd.DataFrame, n_train: int) -> None:
    """train.csv (Id, Systole, Diastole) and the rest as solution.csv (long, as on Kaggle)."""
    vols = truth[["pid", "ESV", "EDV"]].round(2)
    vols.columns = ["Id", "Systole", "Diastole"]
    write_csv(vols.iloc[:n_train], root / "train.csv")
    rest = vols.iloc[n_train:]
    long = pd.DataFrame({
        "Id": [f"{pid}_{phase}" for pid in rest["Id"] for phase in ("Diastole", "Systole")],
        "Volume": [v for d, s in zip(rest["Diastole"], rest["Systole"], strict=True)
                   for v in (d, s)],
        "Usage": "Private"})
    write_csv(long, root / "solution.csv")
