"""LV and RV volumes, EF and myocardial mass from short-axis label stacks (plain arrays).

A label stack is (Z, H, W) (one frame) and a label cine (T, Z, H, W); spacing is
(slice spacing, row spacing, column spacing) in mm, slices first like every cinelab cardiac
array. A structure's volume is its pixel count x pixel area x slice spacing, summed over
slices (Simpson's stack summation), in mL; without spacing it stays a voxel count (EF, a
ratio, is still right). End diastole and end systole are the frames with the largest and the
smallest LV cavity volume, never assumed to be frame 1. Myocardial mass is the myocardial
volume at end diastole x MYO_DENSITY_G_PER_ML.

Which integer is which structure is a `LabelMap`: ACDC_LABELS (1 RV, 2 myocardium, 3 LV
cavity) by default; model outputs may number their classes differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from cinelab.errors import InputError

ML_PER_MM3 = 1e-3
MYO_DENSITY_G_PER_ML = 1.05
PERCENT = 100.0
STRUCTURES = ("LV", "MYO", "RV")
MEASURE_COLUMNS = ("ed_frame", "es_frame", "EDV", "ESV", "SV", "EF", "myo_ml", "LVM",
                   "RV_EDV", "RV_ESV", "RV_EF", "units")
UNITS_ML, UNITS_VOXELS = "mL", "voxels"


@dataclass(frozen=True)
class LabelMap:
    """The integer of each structure in a label map; `rv` None when there is no RV class."""

    lv: int = 3
    myo: int = 2
    rv: int | None = 1

    def values(self) -> dict[str, int]:
        """{structure: label} for the structures this map has (LV, MYO[, RV])."""
        out = {"LV": self.lv, "MYO": self.myo}
        if self.rv is not None:
            out["RV"] = self.rv
        return out

    def to_text(self) -> str:
        """'lv=3,myo=2,rv=1' (the form `parse_label_map` reads)."""
        return ",".join(f"{k}={'none' if v is None else v}" for k, v in asdict(self).items())


ACDC_LABELS = LabelMap(lv=3, myo=2, rv=1)
LABEL_PRESETS = {"acdc": ACDC_LABELS}


def parse_label_map(text: str | LabelMap | None) -> LabelMap:
    """A LabelMap from a preset name ('acdc') or 'lv=1,myo=2[,rv=3|none]'; None -> ACDC."""
    if text is None:
        return ACDC_LABELS
    if isinstance(text, LabelMap):
        return text
    if text.strip().lower() in LABEL_PRESETS:
        return LABEL_PRESETS[text.strip().lower()]
    values: dict[str, int | None] = {"rv": None}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if not sep or key not in ("lv", "myo", "rv") or not (value.isdigit() or value == "none"):
            raise InputError(None, "labels", f"a preset {sorted(LABEL_PRESETS)} or "
                             "'lv=N,myo=N[,rv=N|none]'", repr(text))
        values[key] = None if value == "none" else int(value)
    if values.get("lv") is None or values.get("myo") is None:
        raise InputError(None, "labels", "both lv= and myo= labels", repr(text))
    return LabelMap(lv=int(values["lv"]), myo=int(values["myo"]),  # type: ignore[arg-type]
                    rv=values["rv"])


def voxel_ml(spacing: Sequence[float] | None) -> float:
    """Volume of one voxel in mL from (slice, row, column) spacing in mm; 1 when None."""
    if spacing is None:
        return 1.0
    values = [float(s) for s in spacing][-3:]
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(None, "spacing", "3 positive sizes (slice, row, column) in mm",
                         repr(tuple(spacing)))
    return float(np.prod(values)) * ML_PER_MM3


def as_cine(labels: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """A label cine (T, Z, H, W) from a cine, one stack (Z, H, W) or a list of equal stacks."""
    if not isinstance(labels, np.ndarray):
        shapes = {np.shape(s) for s in labels}
        if len(shapes) != 1:
            raise InputError(None, "labels", "stacks of one shape", f"shapes {sorted(shapes)}")
        labels = np.stack([np.asarray(s) for s in labels])
    if labels.ndim == 3:
        labels = labels[None]
    if labels.ndim != 4:
        raise InputError(None, "labels", "a label stack (Z, H, W) or cine (T, Z, H, W)",
                         f"shape {labels.shape}")
    return labels


def pixel_counts(labels: np.ndarray | Sequence[np.ndarray],
                 label_map: LabelMap = ACDC_LABELS) -> pd.DataFrame:
    """Pixels of each structure per frame and slice: frame, slice, LV_px, MYO_px[, RV_px]."""
    cine = as_cine(labels)
    t, z = cine.shape[:2]
    out = pd.DataFrame({"frame": np.repeat(np.arange(t), z), "slice": np.tile(np.arange(z), t)})
    for name, value in label_map.values().items():
        out[f"{name}_px"] = (cine == value).sum(axis=(2, 3)).reshape(-1)
    return out


def frame_volumes(labels: np.ndarray | Sequence[np.ndarray], spacing: Sequence[float] | None,
                  label_map: LabelMap = ACDC_LABELS) -> pd.DataFrame:
    """Per frame: pixel counts summed over slices and volumes (LV_ml, MYO_ml[, RV_ml])."""
    per_slice = pixel_counts(labels, label_map)
    out = per_slice.drop(columns="slice").groupby("frame", as_index=False).sum()
    unit = voxel_ml(spacing)
    for name in label_map.values():
        out[f"{name}_ml"] = out[f"{name}_px"] * unit
    return out


def ed_es_frames(lv_volumes: Sequence[float] | np.ndarray) -> tuple[int, int]:
    """(ED, ES) frame indices: the largest and the smallest LV volume (first on ties)."""
    values = np.asarray(lv_volumes, dtype=float)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise InputError(None, "lv_volumes", "a non-empty 1-D array of finite volumes",
                         f"shape {values.shape}")
    return int(np.argmax(values)), int(np.argmin(values))


def ejection_fraction(edv: float, esv: float) -> float:
    """100 (EDV - ESV) / EDV in percent; NaN when EDV is not positive."""
    return PERCENT * (edv - esv) / edv if edv > 0 else float("nan")


def measures_from_volumes(volumes: pd.DataFrame, units: str = UNITS_ML) -> dict[str, object]:
    """EDV, ESV, SV, EF, myocardial volume and mass at ED, RV volumes from `frame_volumes`."""
    ed_i, es_i = ed_es_frames(volumes["LV_ml"].to_numpy())
    ed, es = volumes.iloc[ed_i], volumes.iloc[es_i]
    edv, esv = float(ed["LV_ml"]), float(es["LV_ml"])
    myo = float(ed["MYO_ml"])
    out: dict[str, object] = {
        "ed_frame": ed["frame"], "es_frame": es["frame"], "EDV": edv, "ESV": esv,
        "SV": edv - esv, "EF": ejection_fraction(edv, esv), "myo_ml": myo,
        "LVM": myo * MYO_DENSITY_G_PER_ML if units == UNITS_ML else float("nan"),
        "RV_EDV": float("nan"), "RV_ESV": float("nan"), "RV_EF": float("nan"), "units": units}
    if "RV_ml" in volumes:
        rv_edv, rv_esv = float(ed["RV_ml"]), float(es["RV_ml"])
        out.update(RV_EDV=rv_edv, RV_ESV=rv_esv, RV_EF=ejection_fraction(rv_edv, rv_esv))
    return out


def cine_measures(labels: np.ndarray | Sequence[np.ndarray], spacing: Sequence[float] | None,
                  label_map: LabelMap = ACDC_LABELS,
                  frame_ids: Sequence[object] | None = None) -> dict[str, object]:
    """EDV, ESV, EF, mass ... of a label cine (T, Z, H, W) or of ED/ES stacks [(Z, H, W)];
    ED and ES are found by LV volume. `frame_ids` name the frames in `ed_frame`/`es_frame`."""
    volumes = frame_volumes(labels, spacing, label_map)
    if frame_ids is not None:
        if len(frame_ids) != len(volumes):
            raise InputError(None, "frame_ids", f"{len(volumes)} names (one per frame)",
                             f"{len(frame_ids)}")
        volumes["frame"] = list(frame_ids)
    return measures_from_volumes(volumes, UNITS_ML if spacing is not None else UNITS_VOXELS)
