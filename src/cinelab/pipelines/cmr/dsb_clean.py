"""Clean one short-axis stack into a consistent 4D cine (the Kaggle DSB cleaning steps).

Input: `SliceSeries`, one per slice location (all time points of one acquisition). Steps,
each problem and its resolution logged in a `ConversionLog` (pid, problem, resolution, image,
extra_info):

1. remove duplicate slice locations (closer than COLLISION_MM): the later series is kept;
2. slice spacing = the most common distance between neighbours; interspersed extra slices and
   outliers at either end are removed, gaps of k spacings get k - 1 copies of the nearer
   neighbour;
3. rotate slices whose orientation differs in-plane from the most common one, scale each
   slice to the most common pixel spacing, then crop/pad it (centred) to the most common size;
   downscale everything so that the larger side is at most `max_size` (256 in the paper);
4. time points: the most common count; a slice with fewer gets its missing ones (matched by
   trigger time) copied from the nearest neighbour in time, one with more drops the extras.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from skimage.transform import rotate

from cinelab.io.dicom_series import MRImage, largest_mode, mode_orientation, slice_normal
from cinelab.utils import atomic_path

LOG_COLUMNS = ("pid", "problem", "resolution", "image", "extra_info")
DIMENSION_COLUMNS = ("pid", "X", "Y", "pixelSpacingX", "pixelSpacingY", "sliceSpacing",
                     "scaleFactor")
PROBLEM_UNREADABLE = "unreadable file"
PROBLEM_NO_SPACING = "pixel spacing missing"
PROBLEM_NO_LOCATION = "slice location missing"
PROBLEM_NO_POSITION = "image position missing"
PROBLEM_NO_ORIENTATION = "orientation missing"
PROBLEM_ORIENTATION = "orientation"
PROBLEM_REPEAT = "repeated measurement"
PROBLEM_COLLISION = "duplicate slice location"
PROBLEM_SPACING_METADATA = "slice spacing: metadata"
PROBLEM_SPACING_MISSING = "slice spacing: missing"
PROBLEM_SPACING_OUTLIER = "slice spacing: outlier"
PROBLEM_SPACING_INTERSPERSED = "slice spacing: interspersed"
PROBLEM_SPACING_IRREGULAR = "slice spacing: irregular"
PROBLEM_SINGLE_SLICE = "single slice"
PROBLEM_DOWNSCALE = "image too large"
PROBLEM_ROTATION = "rotation"
PROBLEM_SIZE = "image size"
PROBLEM_MISSING_TIME = "missing time point"
PROBLEM_EXTRA_TIME = "extra time points"
PROBLEM_LANDSCAPE = "rows < columns"
PROBLEM_SKIPPED = "patient skipped"
DSB_MAX_SIZE = 256
COLLISION_MM = 1.0  # slices closer than this are the same location
SPACING_TOLERANCE_MM = 1.0
SPACING_DECIMALS = 2
METADATA_TOLERANCE_MM = 0.1
OUTLIER_FACTOR = 2.5  # an end slice further than this many spacings is an outlier
QUARTER_TURN_TOLERANCE_DEG = 1.0
SPACING_ROUND = 4  # decimals when taking the most common pixel spacing
DEFAULT_SLICE_MM = 1.0  # spacing of a single-slice stack without thickness tags


class ConversionLog:
    """Every problem met while converting, with its resolution, as rows of LOG_COLUMNS."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(self, pid: str, problem: str, resolution: str, image: str | Path = "",
            extra: str = "") -> None:
        """Record one problem."""
        self.rows.append(dict(zip(LOG_COLUMNS, (pid, problem, resolution, str(image), extra),
                                  strict=True)))

    def __len__(self) -> int:
        return len(self.rows)

    def to_frame(self) -> pd.DataFrame:
        """The log as a table."""
        return pd.DataFrame(self.rows, columns=list(LOG_COLUMNS))

    def problems(self, pid: str | None = None) -> list[str]:
        """Problem names, of one patient or of all."""
        return [r["problem"] for r in self.rows if pid is None or r["pid"] == pid]

    def write(self, path: str | Path) -> Path:
        """Write as TSV atomically."""
        with atomic_path(path) as tmp:
            self.to_frame().to_csv(tmp, sep="\t", index=False)
        return Path(path)


@dataclass
class SliceSeries:
    """One slice location's images (one acquisition), sorted by trigger time."""

    name: str  # sax folder (+ '#2' for the second acquisition in a doubled folder)
    series: int
    location: float
    images: list[MRImage]
    repeat: int = 0

    @property
    def file(self) -> str:
        """The first image's path, used to name the slice in the log."""
        return str(self.images[0].path)

    @property
    def rank(self) -> tuple[int, int, str]:
        """Acquisition order: later series (then repeats) rank higher."""
        return self.series, self.repeat, self.name


@dataclass
class CleanCine:
    """A consistent short-axis cine: array float32 (time, slice, y, x), spacing (slice, y, x) mm."""

    pid: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    trigger_times: np.ndarray  # (T,) ms
    slice_locations: np.ndarray  # (Z,) mm, ascending
    scale_factor: float  # the global downscale (1 = none)
    orientation: np.ndarray  # (6,) DICOM row and column direction cosines (LPS)
    origin: np.ndarray  # (3,) LPS position of pixel (0, 0) of slice 0
    sources: np.ndarray = field(repr=False)  # (T, Z) file each image came from

    @property
    def landscape(self) -> bool:
        """Rows < columns: the paper keeps an extra copy rotated by 90 degrees."""
        return self.array.shape[2] < self.array.shape[3]

    def rot90(self) -> np.ndarray:
        """The cine turned clockwise by 90 degrees in-plane (portrait from landscape)."""
        return np.ascontiguousarray(np.rot90(self.array, k=-1, axes=(2, 3)))

    def dims_row(self) -> dict[str, object]:
        """One row of the dimensions table."""
        return dict(zip(DIMENSION_COLUMNS, (
            self.pid, self.array.shape[3], self.array.shape[2], self.spacing[2],
            self.spacing[1], self.spacing[0], self.scale_factor), strict=True))

    def affine(self) -> np.ndarray:
        """NIfTI (RAS) voxel-to-world matrix for the (x, y, z) axes of the reversed array."""
        r, c = self.orientation[:3], self.orientation[3:]
        columns = [r * self.spacing[2], c * self.spacing[1],
                   slice_normal(self.orientation) * self.spacing[0], self.origin]
        out = np.eye(4)
        out[:3, :] = np.stack(columns, axis=1)
        out[:2, :] *= -1  # DICOM LPS -> NIfTI RAS
        return out


def clean_stack(pid: str, slices: list[SliceSeries], log: ConversionLog,
                max_size: int = DSB_MAX_SIZE) -> CleanCine:
    """Steps 1-4 of the module docstring on one patient's (or one repeat's) slices."""
    slices = remove_collisions(pid, slices, log)
    slices, spacing = fix_slice_spacing(pid, slices, log)
    planes, pixel, scale, mode = harmonise_geometry(pid, slices, log, max_size)
    array, times, sources = fix_time_points(pid, slices, planes, log)
    origin = _origin(slices, mode, pixel, array.shape[2:])
    cine = CleanCine(pid, array, (float(spacing), *pixel), times,
                     np.array([s.location for s in slices]), scale, mode, origin, sources)
    if cine.landscape:
        log.add(pid, PROBLEM_LANDSCAPE, "rotated copy kept beside the original",
                slices[0].file, f"rows {array.shape[2]}, columns {array.shape[3]}")
    return cine


def remove_collisions(pid: str, slices: list[SliceSeries], log: ConversionLog) -> list:
    """Keep one slice per location (the later acquisition)."""
    ordered = sorted(slices, key=lambda s: s.location)
    kept = [ordered[0]]
    for s in ordered[1:]:
        prev = kept[-1]
        if s.location - prev.location >= COLLISION_MM:
            kept.append(s)
            continue
        keep, drop = (s, prev) if s.rank > prev.rank else (prev, s)
        kept[-1] = keep
        log.add(pid, PROBLEM_COLLISION, "slice removed", drop.file,
                f"kept {keep.file} ({drop.location:.3f} vs {keep.location:.3f} mm)")
    return kept


def fix_slice_spacing(pid: str, slices: list[SliceSeries],
                      log: ConversionLog) -> tuple[list[SliceSeries], float]:
    """Regular slice spacing: remove extra slices, fill gaps; returns (slices, spacing)."""
    if len(slices) < 2:
        return slices, _single_slice_spacing(pid, slices[0], log)
    spacing = _smallest_mode(np.round(np.diff([s.location for s in slices]), SPACING_DECIMALS))
    _check_metadata(pid, slices, spacing, log)
    slices = _remove_extra(pid, slices, spacing, log)
    slices = _fill_gaps(pid, slices, spacing, log)
    gaps = np.diff([s.location for s in slices])
    for i in np.flatnonzero(np.abs(gaps - spacing) > SPACING_TOLERANCE_MM):
        log.add(pid, PROBLEM_SPACING_IRREGULAR, "none", slices[i].file,
                f"expected {spacing:g}, actual {gaps[i]:.3f} mm (next: {slices[i + 1].file})")
    return slices, float(spacing)


def _smallest_mode(values: np.ndarray) -> float:
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[counts == counts.max()].min())


def _single_slice_spacing(pid: str, s: SliceSeries, log: ConversionLog) -> float:
    first = s.images[0]
    value = first.spacing_between_slices or first.slice_thickness or DEFAULT_SLICE_MM
    log.add(pid, PROBLEM_SINGLE_SLICE, "slice spacing from the header", s.file, f"{value:g} mm")
    return float(value)


def _check_metadata(pid: str, slices: list[SliceSeries], spacing: float,
                    log: ConversionLog) -> None:
    """Report SpacingBetweenSlices that disagree with the observed spacing (not used)."""
    values = sorted({round(s.images[0].spacing_between_slices, SPACING_DECIMALS)
                     for s in slices if s.images[0].spacing_between_slices is not None})
    if len(values) > 1 or (values and abs(values[0] - spacing) > METADATA_TOLERANCE_MM):
        log.add(pid, PROBLEM_SPACING_METADATA, "observed spacing used", slices[0].file,
                f"{spacing:g} mm observed vs SpacingBetweenSlices {values}")


def _remove_extra(pid: str, slices: list[SliceSeries], spacing: float,
                  log: ConversionLog) -> list[SliceSeries]:
    """Drop interspersed slices and outliers at the ends, one at a time until none is left."""
    slices = list(slices)
    while len(slices) > 2:
        gaps = np.diff([s.location for s in slices])
        off = np.abs(gaps - spacing) > SPACING_TOLERANCE_MM
        between = [i for i in np.flatnonzero(off[:-1])
                   if abs(gaps[i] + gaps[i + 1] - spacing) <= SPACING_TOLERANCE_MM]
        if between:
            i = between[0]
            drop, problem = slices[i + 1], PROBLEM_SPACING_INTERSPERSED
            detail = f"actual {gaps[i]:.3f} and {gaps[i + 1]:.3f} mm"
        elif gaps[0] > OUTLIER_FACTOR * spacing or gaps[-1] > OUTLIER_FACTOR * spacing:
            end = 0 if gaps[0] > OUTLIER_FACTOR * spacing else -1
            drop, problem = slices[end], PROBLEM_SPACING_OUTLIER
            detail = f"actual {gaps[end]:.3f} mm"
        else:
            return slices
        slices.remove(drop)
        log.add(pid, problem, "slice removed", drop.file, f"expected {spacing:g} mm, {detail}")
    return slices


def _fill_gaps(pid: str, slices: list[SliceSeries], spacing: float,
               log: ConversionLog) -> list[SliceSeries]:
    """A gap of k spacings gets k - 1 copies of the nearer neighbour."""
    out = [slices[0]]
    for prev, nxt in zip(slices[:-1], slices[1:], strict=True):
        gap = nxt.location - prev.location
        k = int(round(gap / spacing))
        if k >= 2 and abs(gap - k * spacing) <= SPACING_TOLERANCE_MM:
            for j in range(1, k):
                source = prev if j <= k / 2 else nxt
                out.append(replace(source, name=f"{source.name}-copy",
                                   location=prev.location + j * spacing))
                log.add(pid, PROBLEM_SPACING_MISSING, "neighbour slice copied", source.file,
                        f"expected {spacing:g} mm, actual {gap:.3f} mm; copy at "
                        f"{prev.location + j * spacing:.3f} mm")
        out.append(nxt)
    return out


def harmonise_geometry(pid: str, slices: list[SliceSeries], log: ConversionLog,
                       max_size: int) -> tuple[list[np.ndarray], tuple[float, float], float,
                                               np.ndarray]:
    """Rotate, scale and crop/pad every slice to one size; (planes (t, y, x) per slice,
    pixel spacing (y, x), global scale factor, orientation of the result)."""
    mode = mode_orientation(s.images[0].orientation for s in slices)
    mode = mode if mode is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
    turned = [_align(pid, s, mode, log) for s in slices]
    shapes = [tuple(int(v) for v in p.shape[1:]) for p, _ in turned]
    spacings = [_rounded(sp) for _, sp in turned]
    shape = largest_mode(shapes)
    pixel = tuple(float(v) for v in turned[spacings.index(largest_mode(spacings))][1])
    scale = min(1.0, max_size / max(shape))
    target = (int(round(shape[0] * scale)), int(round(shape[1] * scale)))
    target_pixel = (float(pixel[0] * shape[0] / target[0]), float(pixel[1] * shape[1] / target[1]))
    if scale < 1.0:
        log.add(pid, PROBLEM_DOWNSCALE, "scaled", slices[0].file,
                f"{shape} px > {max_size}: scale factor {scale:.6g}")
    planes = []
    for s, (plane, sp), sh, rsp in zip(slices, turned, shapes, spacings, strict=True):
        if sh != shape or rsp != _rounded(pixel):
            log.add(pid, PROBLEM_SIZE, "scaled/padded/cropped", s.file,
                    f"expected {shape} px of {_rounded(pixel)} mm, found {sh} px of {rsp} mm")
        planes.append(_resample(plane, sp, target_pixel, target))
    return planes, target_pixel, scale, mode


def _rounded(spacing: tuple[float, float]) -> tuple[float, float]:
    return round(float(spacing[0]), SPACING_ROUND), round(float(spacing[1]), SPACING_ROUND)


def _align(pid: str, s: SliceSeries, mode: np.ndarray,
           log: ConversionLog) -> tuple[np.ndarray, tuple[float, float]]:
    """The slice's frames (t, y, x) turned into the mode orientation, and their spacing."""
    plane = np.stack([im.pixels for im in s.images])
    spacing = s.images[0].pixel_spacing
    own = s.images[0].orientation
    if own is None or np.allclose(own, mode, atol=0.01):
        return plane, spacing
    normal = slice_normal(mode)
    flipped = float(np.dot(slice_normal(own), normal)) < 0
    if flipped:  # reverse the rows: the column direction and normal change sign
        plane, own = plane[:, ::-1], np.concatenate([own[:3], -own[3:]])
    r_mode, r_own = mode[:3], own[:3]
    angle = float(np.degrees(np.arctan2(np.dot(np.cross(r_mode, r_own), normal),
                                        np.dot(r_mode, r_own))))
    quarter = int(round(angle / 90.0))
    if abs(angle - 90.0 * quarter) <= QUARTER_TURN_TOLERANCE_DEG:
        plane = np.rot90(plane, k=-quarter, axes=(1, 2))
        spacing = spacing[::-1] if quarter % 2 else spacing
    else:
        plane = np.stack([rotate(f, -angle, preserve_range=True) for f in plane])
    log.add(pid, PROBLEM_ROTATION, "rotated", s.file,
            f"{angle:.2f} degrees" + (" after flipping rows" if flipped else ""))
    return np.ascontiguousarray(plane, dtype=np.float32), spacing


def _resample(plane: np.ndarray, spacing: tuple[float, float], target_pixel: tuple[float, float],
              target: tuple[int, int]) -> np.ndarray:
    """Scale frames (t, y, x) to the target pixel spacing, then crop/pad centred to `target`."""
    rows, cols = plane.shape[1:]
    size = (int(round(rows * spacing[0] / target_pixel[0])),
            int(round(cols * spacing[1] / target_pixel[1])))
    if size != (rows, cols):
        method = cv2.INTER_AREA if size[0] * size[1] < rows * cols else cv2.INTER_LINEAR
        plane = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=method)
                          for f in plane])
    return _crop_or_pad(plane, target)


def _crop_or_pad(plane: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Centred crop or zero pad of (t, y, x) to (y, x) = target."""
    for axis, size in ((1, target[0]), (2, target[1])):
        diff = plane.shape[axis] - size
        before = int(np.ceil(abs(diff) / 2))
        if diff > 0:
            plane = np.take(plane, range(before, before + size), axis=axis)
        elif diff < 0:
            pad = [(0, 0)] * 3
            pad[axis] = (before, -diff - before)
            plane = np.pad(plane, pad)
    return plane


def fix_time_points(pid: str, slices: list[SliceSeries], planes: list[np.ndarray],
                    log: ConversionLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(array (T, Z, y, x) float32, trigger times (T,), source files (T, Z))."""
    counts = [len(s.images) for s in slices]
    n_frames = int(largest_mode(counts))
    reference = _reference_times(slices, n_frames)
    array = np.empty((n_frames, len(slices), *planes[0].shape[1:]), np.float32)
    sources = np.empty((n_frames, len(slices)), dtype=object)
    for z, (s, plane) in enumerate(zip(slices, planes, strict=True)):
        order = _frame_order(pid, s, reference, log)
        array[:, z] = plane[order]
        sources[:, z] = [str(s.images[i].path) for i in order]
    return array, reference, sources


def _times(s: SliceSeries) -> np.ndarray:
    """Trigger times in ms (frame index where a time is missing)."""
    return np.array([im.trigger_time if im.trigger_time is not None else float(i)
                     for i, im in enumerate(s.images)])


def _reference_times(slices: list[SliceSeries], n_frames: int) -> np.ndarray:
    """Median trigger time per frame index over the complete slices."""
    complete = [_times(s) for s in slices if len(s.images) == n_frames]
    return np.median(np.stack(complete), axis=0)


def _frame_order(pid: str, s: SliceSeries, reference: np.ndarray,
                 log: ConversionLog) -> np.ndarray:
    """For each reference time the index of the image to use (copies where one is missing)."""
    if len(s.images) == len(reference):
        return np.arange(len(reference))
    cost = np.abs(_times(s)[:, None] - reference[None, :])
    rows, cols = linear_sum_assignment(cost)
    order = np.full(len(reference), -1)
    order[cols] = rows
    for i in sorted(set(range(len(s.images))) - set(rows.tolist())):
        log.add(pid, PROBLEM_EXTRA_TIME, "frame dropped", s.images[i].path,
                f"slice at {s.location:.3f} mm has {len(s.images)} frames, "
                f"expected {len(reference)}")
    filled = np.flatnonzero(order >= 0)
    for i in np.flatnonzero(order < 0):
        near = filled[np.argmin(np.abs(filled - i) + 0.5 * (filled > i))]
        order[i] = order[near]
        log.add(pid, PROBLEM_MISSING_TIME, "neighbour frame copied",
                s.images[order[i]].path, f"slice at {s.location:.3f} mm: time index {i} "
                f"(~{reference[i]:.1f} ms) copied from index {near}")
    return order


def _origin(slices: list[SliceSeries], mode: np.ndarray, pixel: tuple[float, float],
            shape: tuple[int, int]) -> np.ndarray:
    """LPS position of pixel (0, 0) of slice 0 from a slice in the mode orientation."""
    r, c, n = mode[:3], mode[3:], slice_normal(mode)
    for s in slices:
        im = s.images[0]
        if im.position is None or im.orientation is None or im.pixel_spacing is None:
            continue
        if not np.allclose(im.orientation, mode, atol=0.01):
            continue
        rows, cols = im.shape
        centre = (im.position + (cols - 1) / 2 * im.pixel_spacing[1] * r
                  + (rows - 1) / 2 * im.pixel_spacing[0] * c)
        centre = centre + (slices[0].location - s.location) * n
        return centre - (shape[1] - 1) / 2 * pixel[1] * r - (shape[0] - 1) / 2 * pixel[0] * c
    return np.zeros(3)
