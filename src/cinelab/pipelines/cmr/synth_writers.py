"""Write rendered CMR phantoms in real layouts: DSB-like MR DICOM folders and ACDC-like NIfTI.

DSB: `<root>/<pid>/study/sax_<series>/IM-<series>-<instance>.dcm`, one folder per slice, one
single-frame MR image per time point, with real PixelSpacing, SliceThickness, SliceLocation,
ImagePositionPatient, ImageOrientationPatient, TriggerTime, InstanceNumber, SeriesNumber and
CardiacNumberOfImages. A defect from DEFECTS can be injected per patient; DEFECT_PROBLEMS
names the conversion-log problem the DSB cleaning must report for it.

ACDC: `<root>/patientNNN/` with Info.cfg, patientNNN_4d.nii.gz and the ED/ES frames with
their `_gt` label masks (1 RV, 2 LV myocardium, 3 LV cavity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from cinelab.errors import InputError
from cinelab.io.nifti import write_volume
from cinelab.pipelines.cmr import dsb_clean
from cinelab.synth.cmr_phantom import CineStack, Grid, add_rician_noise

DEFECTS = ("repeated_series", "doubled_time_points", "missing_time_point", "rotated_series",
           "inconsistent_slice_spacing", "different_size_series")
DEFECT_PROBLEMS = {
    "repeated_series": dsb_clean.PROBLEM_REPEAT,
    "doubled_time_points": dsb_clean.PROBLEM_REPEAT,
    "missing_time_point": dsb_clean.PROBLEM_MISSING_TIME,
    "rotated_series": dsb_clean.PROBLEM_ROTATION,
    "inconsistent_slice_spacing": dsb_clean.PROBLEM_SPACING_MISSING,
    "different_size_series": dsb_clean.PROBLEM_SIZE,
}
FIRST_SERIES = 5
REPEAT_SERIES_GAP = 10  # series numbers of a repeated stack start this far after the first
DIFFERENT_SIZE_FACTOR = 1.25  # the differently sized series: finer pixels, same field of view
BITS_STORED = 12
MAX_STORED = 2**BITS_STORED - 1
SLICE_GAP_MM = 2.0  # SliceThickness = slice spacing - gap
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"


@dataclass(frozen=True)
class Placement:
    """Where the stack lies in the scanner (LPS, mm) and how its pixels are scaled."""

    orientation: np.ndarray  # (6,) row direction then column direction cosines
    centre: np.ndarray  # (3,) field-of-view centre on the base plane
    scale: float  # stored value of relative intensity 1.0
    noise: float  # Rician sigma, relative to blood intensity


def write_mr_image(path: str | Path, pixels: np.ndarray, **tags: Any) -> Path:
    """Write a single-frame MR Image Storage DICOM of uint16 pixels; tags by DICOM keyword."""
    return save_mr_image(mr_template(path, **tags), path, pixels)


def mr_template(path: str | Path | None = None, **tags: Any) -> Dataset:
    """An MR image dataset without pixels; tags by DICOM keyword (unknown ones raise)."""
    ds = _mr_dataset(tags.pop("SOPInstanceUID", None) or generate_uid())
    for keyword, value in tags.items():
        if tag_for_keyword(keyword) is None:
            raise InputError(path, keyword, "a DICOM attribute keyword", "an unknown keyword")
        setattr(ds, keyword, value)
    return ds


def save_mr_image(ds: Dataset, path: str | Path, pixels: np.ndarray, **tags: Any) -> Path:
    """Put uint16 pixels (and per-image tags) into `ds` and write it to `path`."""
    path = Path(path)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise InputError(path, "pixels", "uint16 array (rows, columns)",
                         f"{pixels.dtype} array of shape {pixels.shape}")
    if "SOPInstanceUID" in tags:
        ds.file_meta.MediaStorageSOPInstanceUID = tags["SOPInstanceUID"]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _mr_dataset(sop_uid: str) -> Dataset:
    """File meta, SOP common and the greyscale pixel module of an MR image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
    ds.Modality = "MR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS_STORED, BITS_STORED - 1
    ds.PixelRepresentation = 0
    return ds


def stored_pixels(image: np.ndarray, placement: Placement,
                  rng: np.random.Generator) -> np.ndarray:
    """Relative intensity -> noisy uint16 scanner values."""
    noisy = add_rician_noise(image, placement.noise, rng) * placement.scale
    return np.clip(np.rint(noisy), 0, MAX_STORED).astype(np.uint16)


def slice_geometry(placement: Placement, grid: Grid, z: float,
                   rotated: bool = False) -> dict[str, Any]:
    """Position tags of a slice at z (mm along the normal); `rotated`: stored np.rot90(k=1)."""
    r, c = placement.orientation[:3], placement.orientation[3:]
    normal = np.cross(r, c)
    dy, dx = grid.spacing
    centre = placement.centre + z * normal
    corner = centre - (grid.cols - 1) / 2 * dx * r - (grid.rows - 1) / 2 * dy * c
    orientation, spacing = np.concatenate([r, c]), [dy, dx]
    if rotated:  # new rows run along -r, new columns along c
        corner = corner + (grid.cols - 1) * dx * r
        orientation, spacing = np.concatenate([c, -r]), [dx, dy]
    return {"ImagePositionPatient": _ds(corner), "ImageOrientationPatient": _ds(orientation),
            "PixelSpacing": _ds(spacing), "SliceLocation": f"{float(np.dot(corner, normal)):.6f}"}


def _ds(values: Sequence[float] | np.ndarray) -> list[str]:
    return [f"{float(v):.6f}" for v in values]


def write_dsb_patient(root: str | Path, pid: str, stack: CineStack, placement: Placement,
                      rng: np.random.Generator, defect: str | None = None,
                      seed: int = 0) -> Path:
    """Write one patient's study folder with an optional defect (one of DEFECTS)."""
    if defect is not None and defect not in DEFECTS:
        raise InputError(None, "defect", f"one of {DEFECTS}", repr(defect))
    study = Path(root) / pid / "study"
    n_frames, n_slices = stack.labels.shape[:2]
    target = n_slices // 2  # the slice a single-slice defect affects
    slices = [k for k in range(n_slices)
              if not (defect == "inconsistent_slice_spacing" and k == target)]
    writer = _SliceWriter(study, pid, stack, placement, rng, seed)
    for k in slices:
        frames = list(range(n_frames))
        if defect == "missing_time_point" and k == target:
            frames.remove(_quiet_frame(stack))
        writer.write(k, FIRST_SERIES + k, frames,
                     repeats=2 if defect == "doubled_time_points" else 1,
                     rotated=defect == "rotated_series" and k == target,
                     grid=_finer(stack.grid) if defect == "different_size_series"
                     and k == target else stack.grid)
    if defect == "repeated_series":
        for k in slices:
            writer.write(k, FIRST_SERIES + n_slices + REPEAT_SERIES_GAP + k,
                         list(range(n_frames)))
    return study.parent


def _quiet_frame(stack: CineStack) -> int:
    """A frame in diastasis (neither ED nor ES): halfway from end systole to the cycle's end."""
    es = int(np.argmax(stack.contraction))
    ed = int(np.argmin(stack.contraction))
    candidates = [t for t in range(len(stack.contraction)) if t not in (ed, es)]
    middle = (es + (len(stack.contraction) - es) // 2) % len(stack.contraction)
    return min(candidates, key=lambda t: abs(t - middle))


def _finer(grid: Grid) -> Grid:
    """Same field of view, pixels DIFFERENT_SIZE_FACTOR times finer."""
    f = DIFFERENT_SIZE_FACTOR
    return Grid(int(round(grid.rows * f)), int(round(grid.cols * f)),
                (grid.spacing[0] * grid.rows / round(grid.rows * f),
                 grid.spacing[1] * grid.cols / round(grid.cols * f)))


@dataclass
class _SliceWriter:
    """Writes one sax folder per call, sharing the patient's study tags."""

    study: Path
    pid: str
    stack: CineStack
    placement: Placement
    rng: np.random.Generator
    seed: int

    def write(self, k: int, series: int, frames: list[int], repeats: int = 1,
              rotated: bool = False, grid: Grid | None = None) -> None:
        """Folder sax_<series>: slice k at the given frames (all frames `repeats` times)."""
        grid = grid or self.stack.grid
        template = mr_template(None, **self._series_tags(series, slice_geometry(
            self.placement, grid, float(self.stack.z[k]), rotated)))
        folder = self.study / f"sax_{series}"
        folder.mkdir(parents=True, exist_ok=True)
        instance = 0
        for _ in range(repeats):
            for t in frames:
                instance += 1
                image = (self.stack.images[t, k] if grid == self.stack.grid
                         else self.stack.render(grid, k, t))
                pixels = stored_pixels(image, self.placement, self.rng)
                if rotated:
                    pixels = np.ascontiguousarray(np.rot90(pixels, 1))
                save_mr_image(template, folder / f"IM-{series:04d}-{instance:04d}.dcm", pixels,
                              InstanceNumber=instance,
                              TriggerTime=f"{self.stack.trigger_times[t]:.3f}",
                              SOPInstanceUID=self._uid(series, instance))

    def _series_tags(self, series: int, geometry: dict[str, Any]) -> dict[str, Any]:
        spacing = self.stack.slice_spacing
        return {"PatientID": self.pid, "PatientName": self.pid,
                "StudyInstanceUID": self._uid(), "SeriesInstanceUID": self._uid(series),
                "SeriesNumber": series, "SeriesDescription": "sax",
                "SliceThickness": f"{max(spacing - SLICE_GAP_MM, 1.0):g}",
                "SpacingBetweenSlices": f"{spacing:g}",
                "CardiacNumberOfImages": len(self.stack.contraction),
                "NominalInterval": int(round(self.stack.rr_ms)), **geometry}

    def _uid(self, *parts: int) -> str:
        """A UID fixed by seed, patient and parts, so cohorts are reproducible."""
        return generate_uid(entropy_srcs=[str(self.seed), self.pid, *map(str, parts)])


def write_acdc_patient(root: str | Path, number: int, stack: CineStack, placement: Placement,
                       rng: np.random.Generator, info: dict[str, Any]) -> Path:
    """patientNNN/ with Info.cfg, the 4D cine and the ED/ES frames with their _gt masks."""
    name = f"patient{number:03d}"
    folder = Path(root) / name
    cine = np.stack([np.stack([stored_pixels(stack.images[t, k], placement, rng)
                               for k in range(stack.images.shape[1])])
                     for t in range(stack.images.shape[0])])
    spacing = (stack.slice_spacing, *stack.grid.spacing)
    time_step_s = stack.rr_ms / len(stack.contraction) / 1000.0
    write_volume(folder / f"{name}_4d.nii.gz", cine, (time_step_s, *spacing))
    for key in ("ED", "ES"):
        frame = int(info[key]) - 1
        stem = folder / f"{name}_frame{frame + 1:02d}"
        write_volume(stem.with_name(stem.name + ".nii.gz"), cine[frame], spacing)
        write_volume(stem.with_name(stem.name + "_gt.nii.gz"), stack.labels[frame], spacing)
    lines = [f"{key}: {value}" for key, value in info.items()]
    (folder / "Info.cfg").write_text("\n".join(lines) + "\n")
    return folder
