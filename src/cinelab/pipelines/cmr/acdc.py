"""ACDC layouts -> manifests: the NIfTI challenge folders and the HDF5 ED/ES samples.

NIfTI layout (the challenge's; `root` may hold patient folders directly or inside
training/ and testing/)::

    patientNNN/Info.cfg                    ED, ES (1-based frames), Group, Height, Weight, NbFrame
    patientNNN/patientNNN_4d.nii.gz        the cine (x, y, z, t)
    patientNNN/patientNNN_frameNN.nii.gz   ED and ES frames, and their _gt.nii.gz masks

HDF5 layout (SSL4MIS preprocessing): `patientNNN_frame01.h5` (ED) and `_frame02.h5` (ES),
each with `image` (float32, slices x H x W, min-max normalised) and `label` (uint8); no voxel
spacing is kept, so volumes are voxel counts and only ratios (EF) are physical.

Labels: 0 background, 1 RV, 2 LV myocardium, 3 LV cavity. Arrays come back slices first,
(z, y, x), with spacing in the same order. Bad files and rows are reported as `Problem`s.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cinelab.data.manifest import new_manifest
from cinelab.errors import InputError, Problem, UnreadableFileError
from cinelab.io.checks import check_finite, check_keys, check_labels
from cinelab.io.nifti import read_volume

INFO_FILE = "Info.cfg"
INT_FIELDS = ("ED", "ES", "NbFrame")
FLOAT_FIELDS = ("Height", "Weight")
PHASES = ("ED", "ES")
PATIENT_DIR = re.compile(r"^patient(\d{3})$")
H5_NAME = re.compile(r"^(patient(\d{3}))_frame(\d{2})$")
H5_PHASES = {1: "ED", 2: "ES"}
H5_IMAGE, H5_LABEL = "image", "label"
GROUP_BY_NUMBER = ((20, "DCM"), (40, "HCM"), (60, "MINF"), (80, "NOR"), (100, "RV"))
SPLIT_DIRS = {"training": "train", "testing": "test"}
RV_LABEL, MYO_LABEL, LV_LABEL = 1, 2, 3
LABEL_VALUES = (0, RV_LABEL, MYO_LABEL, LV_LABEL)
MYO_DENSITY_G_PER_ML = 1.05
ML_PER_MM3 = 1e-3
MODALITY, VIEW = "cmr", "sax"
STAGE = "acdc"


def acdc_group(number: int) -> str:
    """Diagnostic group of ACDC patient `number` (1-100: 20 per group, in order)."""
    for last, group in GROUP_BY_NUMBER:
        if 1 <= number <= last:
            return group
    return ""


def read_info_cfg(path: str | Path) -> dict[str, object]:
    """Info.cfg 'Key: value' lines; ED/ES/NbFrame as int, Height/Weight as float."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", f"an {INFO_FILE}", "nothing at that path")
    info: dict[str, object] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise InputError(path, f"line {n}", "'Key: value'", repr(line))
        info[key.strip()] = _typed(path, key.strip(), value.strip())
    for key in PHASES:
        if key not in info:
            raise InputError(path, key, f"an {key} frame number", "no such line")
    return info


def _typed(path: Path, key: str, value: str) -> object:
    try:
        if key in INT_FIELDS:
            return int(float(value))
        if key in FLOAT_FIELDS:
            return float(value)
    except ValueError as exc:
        raise InputError(path, key, "a number", repr(value)) from exc
    return value


def find_acdc_patients(root: str | Path) -> list[Path]:
    """patientNNN folders: `root` itself, its children, or inside training/testing."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "root", "an ACDC folder (patientNNN/Info.cfg)", "no folder")
    if PATIENT_DIR.match(root.name):
        return [root]
    found = [p for pattern in ("*", "*/*") for p in root.glob(pattern)
             if p.is_dir() and PATIENT_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def _frame_paths(folder: Path, frame: int) -> tuple[Path, Path]:
    stem = f"{folder.name}_frame{frame:02d}"
    return folder / f"{stem}.nii.gz", folder / f"{stem}_gt.nii.gz"


def read_acdc(root: str | Path, volumes: bool = True) -> tuple[pd.DataFrame, list[Problem]]:
    """One manifest row per ED/ES frame (image, mask, 4D cine, Info.cfg fields, split) and,
    with `volumes`, EDV/ESV/EF/LVM (mL, g) from the masks; problems for what is missing."""
    rows, problems = [], []
    for folder in find_acdc_patients(root):
        try:
            info = read_info_cfg(folder / INFO_FILE)
        except InputError as exc:
            problems.append(Problem.from_exception(folder / INFO_FILE, STAGE, exc))
            continue
        labels = _patient_volumes(folder, info, problems) if volumes else {}
        for phase in PHASES:
            row = _frame_row(folder, info, phase, problems)
            if row is not None:
                rows.append({**row, **labels})
    return new_manifest(rows) if rows else pd.DataFrame(), problems


def _frame_row(folder: Path, info: dict, phase: str,
               problems: list[Problem]) -> dict[str, object] | None:
    """The manifest row of one phase, None when its image is missing."""
    frame = int(info[phase])  # type: ignore[call-overload]
    image, mask = _frame_paths(folder, frame)
    if not image.is_file():
        problems.append(Problem(str(image), STAGE, f"{phase} frame image missing",
                                column=phase, expected="an existing file", found="none"))
        return None
    if not mask.is_file():
        problems.append(Problem(str(mask), STAGE, f"{phase} mask missing", column=phase,
                                expected="an existing file", found="none"))
    cine = folder / f"{folder.name}_4d.nii.gz"
    return {"sample_id": f"{folder.name}_frame{frame:02d}", "patient_id": folder.name,
            "path": str(image), "mask_path": str(mask) if mask.is_file() else "",
            "cine_path": str(cine) if cine.is_file() else "", "modality": MODALITY,
            "view": VIEW, "split": SPLIT_DIRS.get(folder.parent.name, ""), "phase": phase,
            "frame": frame, **{k: v for k, v in info.items() if k not in PHASES}}


def _patient_volumes(folder: Path, info: dict, problems: list[Problem]) -> dict[str, float]:
    """EDV, ESV, EF, LVM from the ED and ES masks ({} when a mask is missing or bad)."""
    masks = {}
    for phase in PHASES:
        path = _frame_paths(folder, int(info[phase]))[1]
        if not path.is_file():
            return {}
        try:
            masks[phase] = read_volume(path)
        except InputError as exc:
            problems.append(Problem.from_exception(path, STAGE, exc))
            return {}
    edv = label_volume(*masks["ED"], LV_LABEL)
    esv = label_volume(*masks["ES"], LV_LABEL)
    myo = label_volume(*masks["ED"], MYO_LABEL)
    return {"EDV": edv, "ESV": esv, "EF": 100.0 * (edv - esv) / edv if edv > 0 else np.nan,
            "LVM": myo * MYO_DENSITY_G_PER_ML}


def label_volume(mask: np.ndarray, spacing: tuple | None, label: int) -> float:
    """Volume of `label` in mL (spacing in mm), or its voxel count when spacing is None."""
    count = float(np.count_nonzero(np.asarray(mask) == label))
    return count if spacing is None else count * float(np.prod(spacing[-3:])) * ML_PER_MM3


def load_acdc_patient(folder: str | Path, cine: bool = False) -> dict[str, object]:
    """ed_image, ed_mask, es_image, es_mask ((z, y, x) float32 / uint8), spacing (z, y, x) mm,
    info (Info.cfg) and, with `cine`, the 4D cine (t, z, y, x)."""
    folder = Path(folder)
    info = read_info_cfg(folder / INFO_FILE)
    out: dict[str, object] = {"info": info}
    for phase in PHASES:
        image_path, mask_path = _frame_paths(folder, int(info[phase]))  # type: ignore
        image, spacing = read_volume(image_path, np.float32)
        mask, mask_spacing = read_volume(mask_path)
        if mask.shape != image.shape:
            raise InputError(mask_path, "shape", f"the image's {image.shape}", str(mask.shape))
        out[f"{phase.lower()}_image"], out[f"{phase.lower()}_mask"] = image, mask.astype(np.uint8)
        out["spacing"] = spacing
    if cine:
        out["cine"] = read_volume(folder / f"{folder.name}_4d.nii.gz", np.float32)[0]
    return out


def read_acdc_h5(root: str | Path) -> tuple[pd.DataFrame, list[Problem]]:
    """One manifest row per patientNNN_frameNN.h5 (phase, group, shape); bad files reported."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "root", "a folder of patientNNN_frameNN.h5 files", "no folder")
    rows, problems = [], []
    for path in sorted(root.rglob("*.h5")):
        match = H5_NAME.match(path.stem)
        if match is None:
            problems.append(Problem(str(path), STAGE, "name is not patientNNN_frameNN.h5"))
            continue
        try:
            image, label = load_acdc_h5(path)
        except InputError as exc:
            problems.append(Problem.from_exception(path, STAGE, exc))
            continue
        frame = int(match.group(3))
        rows.append({"sample_id": path.stem, "patient_id": match.group(1), "path": str(path),
                     "modality": MODALITY, "view": VIEW, "phase": H5_PHASES.get(frame, ""),
                     "frame": frame, "Group": acdc_group(int(match.group(2))),
                     "slices": image.shape[0], "rows": image.shape[1], "cols": image.shape[2],
                     "lv_voxels": int(np.count_nonzero(label == LV_LABEL))})
    return new_manifest(rows) if rows else pd.DataFrame(), problems


def load_acdc_h5(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (slices, H, W), label uint8 (slices, H, W)) of one HDF5 sample.

    Refused (InputError): a missing or empty `image`/`label` dataset, images with NaN or
    infinity (one NaN slice would blank the whole normalised stack while its labels stay),
    labels outside LABEL_VALUES, image and label of different shapes."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (H5_IMAGE, H5_LABEL) if k not in f]
            if missing:
                raise InputError(path, ", ".join(missing), f"datasets '{H5_IMAGE}' and "
                                 f"'{H5_LABEL}'", f"datasets {sorted(f.keys())}")
            check_keys(f, (H5_IMAGE, H5_LABEL), path)
            image = np.asarray(f[H5_IMAGE], dtype=np.float32)
            label = np.asarray(f[H5_LABEL])
    except OSError as exc:
        raise UnreadableFileError(path, "file", "a readable HDF5 file", str(exc)) from exc
    if image.ndim != 3 or image.shape != label.shape:
        raise InputError(path, "shape", "image and label of one shape (slices, H, W)",
                         f"image {image.shape}, label {label.shape}")
    check_finite(image, path, H5_IMAGE)
    check_labels(label, LABEL_VALUES, path, H5_LABEL)
    return image, label.astype(np.uint8)
