"""A short-axis cine MRI phantom: LV cavity, LV myocardium and RV of known volumes.

Geometry, in mm, in the slice plane (x along image columns, y along image rows, both from
the field-of-view centre) and along the slice normal z (base plane at z = 0, apex at z < 0):

- LV cavity: a half ellipsoid below the base plane with semi-axes (a, b, length); at
  contraction state c (0 = end diastole, 1 = end systole) the radii shrink by
  `ratio ** RADIAL_SHARE * c` and the length by the rest, so that ESV / EDV = 1 - EF.
- LV myocardium: the shell between the cavity and an outer half ellipsoid (a + w, b + w,
  length + w) whose wall thickness w keeps the myocardial volume constant over the cycle.
- RV cavity: a larger half ellipsoid beside the septum minus the LV epicardium, i.e. a
  crescent wrapped around the septum, contracting like the LV.
Labels follow ACDC: 0 background, 1 RV, 2 LV myocardium, 3 LV cavity. Intensities mimic
SSFP cine: bright blood, grey myocardium, textured body with lungs, liver and fat, a coil
bias field, slight blur and Rician noise. Everything is a function of position, so any
pixel grid (size, spacing) renders the same anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

RV, MYO, LV = 1, 2, 3
LABELS = {"RV": RV, "MYO": MYO, "LV": LV}
GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")
# Per group: EDV mL, EF %, LV myocardial volume mL, RV EDV / LV EDV (uniform ranges).
GROUP_RANGES = {
    "NOR": ((120.0, 160.0), (58.0, 68.0), (95.0, 125.0), (0.95, 1.1)),
    "DCM": ((200.0, 250.0), (12.0, 25.0), (140.0, 170.0), (0.8, 0.95)),
    "HCM": ((90.0, 120.0), (68.0, 78.0), (170.0, 210.0), (0.9, 1.0)),
    "MINF": ((160.0, 200.0), (30.0, 40.0), (120.0, 150.0), (0.85, 1.0)),
    "RV": ((110.0, 140.0), (55.0, 65.0), (95.0, 115.0), (1.5, 1.8)),
}
RADIAL_SHARE = 0.8  # share of the systolic volume change due to radial shortening
ASPECT_RANGE = (1.8, 2.2)  # LV cavity length / radius at end diastole
ELLIPTICITY_RANGE = (0.9, 1.0)  # LV cavity b / a
ES_FRACTION_RANGE = (0.32, 0.4)  # end systole as a fraction of the cycle
RV_GAP_FACTOR = 0.75  # RV centre offset from the LV axis, in LV outer radii
RV_SHAPE = (1.05, 1.25, 0.8)  # RV semi-axes (x, y, length) relative to the LV epicardium
RV_ANGLE_DEG = 200.0  # direction of the RV from the LV, in the image (0 = +x, y down)
RV_WALL_MM = 3.0
# SSFP-like relative intensities.
BLOOD, MYOCARDIUM, BODY, FAT, LIVER, LUNG, AIR = 1.0, 0.3, 0.36, 0.85, 0.45, 0.06, 0.02
BODY_MM = (150.0, 115.0)  # torso semi-axes in the slice plane
FAT_FROM = 0.8  # subcutaneous fat from this elliptical radius (squared) outwards
TEXTURE_WAVES = 6
TEXTURE_PERIOD_MM = (15.0, 70.0)
TEXTURE_DEPTH = 0.12
BIAS_DEPTH = 0.15
BLUR_SIGMA_PX = 0.6
ML_PER_MM3 = 1e-3


@dataclass(frozen=True)
class Grid:
    """A slice's pixel grid: size and spacing; pixel centres are symmetric about the FOV centre."""

    rows: int
    cols: int
    spacing: tuple[float, float]  # (between rows, between columns) mm

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) in mm of every pixel centre, each (rows, cols); read-only, cached."""
        return _coordinates(self)


@lru_cache(maxsize=8)
def _coordinates(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(grid.rows) - (grid.rows - 1) / 2.0) * grid.spacing[0]
    x = (np.arange(grid.cols) - (grid.cols - 1) / 2.0) * grid.spacing[1]
    xx, yy = np.meshgrid(x, y)
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


@dataclass(frozen=True)
class Heart:
    """One patient's heart: end-diastolic LV shape, function and placement."""

    group: str
    edv_ml: float  # analytic LV cavity volume at end diastole
    ef: float  # analytic EF in percent
    myo_ml: float  # analytic LV myocardial volume (constant)
    radius_mm: float  # LV cavity semi-axis a at ED
    ellipticity: float  # b / a
    length_mm: float  # LV cavity length at ED (base plane to apex)
    rv_ratio: float  # RV size relative to the LV epicardium
    centre_mm: tuple[float, float]  # LV axis in the slice plane (x, y) from the FOV centre
    es_fraction: float
    phase_offset: float  # cycle fraction at frame 0 (0 = frame 0 is end diastole)
    seed: int  # anatomy texture seed


def random_heart(rng: np.random.Generator, group: str) -> Heart:
    """Draw a heart of `group` (one of GROUPS)."""
    edv, ef, myo, rv = (float(rng.uniform(*r)) for r in GROUP_RANGES[group])
    aspect = float(rng.uniform(*ASPECT_RANGE))
    ellipticity = float(rng.uniform(*ELLIPTICITY_RANGE))
    # (2/3) pi a (e a) (aspect a) = EDV
    radius = (edv / ML_PER_MM3 / (2.0 / 3.0 * np.pi * ellipticity * aspect)) ** (1.0 / 3.0)
    return Heart(group=group, edv_ml=edv, ef=ef, myo_ml=myo, radius_mm=radius,
                 ellipticity=ellipticity, length_mm=radius * aspect, rv_ratio=rv,
                 centre_mm=(float(rng.uniform(8, 16)), float(rng.uniform(-6, 6))),
                 es_fraction=float(rng.uniform(*ES_FRACTION_RANGE)),
                 phase_offset=float(rng.choice([0.0, 0.0, 0.05, 0.1])),
                 seed=int(rng.integers(2**31)))


def contraction(heart: Heart, n_frames: int) -> np.ndarray:
    """Contraction state c in [0, 1] at each frame (0 at end diastole, 1 at end systole)."""
    s = (np.arange(n_frames) / n_frames + heart.phase_offset) % 1.0
    es = heart.es_fraction
    return np.where(s < es, 0.5 * (1 - np.cos(np.pi * s / es)),
                    0.5 * (1 + np.cos(np.pi * (s - es) / (1 - es))))


def lv_axes(heart: Heart, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Cavity and epicardium semi-axes (a, b, length) in mm at contraction state c."""
    ratio = 1.0 - heart.ef / 100.0
    radial = 1.0 - c * (1.0 - ratio ** (RADIAL_SHARE / 2.0))
    longitudinal = 1.0 - c * (1.0 - ratio ** (1.0 - RADIAL_SHARE))
    a = heart.radius_mm * radial
    cavity = np.array([a, a * heart.ellipticity, heart.length_mm * longitudinal])
    return cavity, cavity + _wall(cavity, heart.myo_ml)


def _wall(cavity: np.ndarray, myo_ml: float) -> float:
    """Wall thickness w with (2/3) pi prod(cavity + w) - (2/3) pi prod(cavity) = myo volume."""
    target = np.prod(cavity) + myo_ml / ML_PER_MM3 / (2.0 / 3.0 * np.pi)
    a, b, c = cavity
    roots = np.roots([1.0, a + b + c, a * b + a * c + b * c, a * b * c - target])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def analytic_lv_ml(heart: Heart, c: float) -> float:
    """Analytic LV cavity volume (half ellipsoid) in mL at contraction state c."""
    return float(2.0 / 3.0 * np.pi * np.prod(lv_axes(heart, c)[0]) * ML_PER_MM3)


def _inside(x: np.ndarray, y: np.ndarray, z: float, centre: tuple[float, float],
            axes: np.ndarray) -> np.ndarray:
    """Points of the slice at z inside the half ellipsoid below the base plane."""
    if z > 0 or z < -axes[2]:
        return np.zeros(x.shape, dtype=bool)
    s2 = 1.0 - (z / axes[2]) ** 2
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 <= s2


def _rv_centre_axes(heart: Heart, outer: np.ndarray) -> tuple[tuple[float, float], np.ndarray]:
    """RV centre and semi-axes from the LV epicardium."""
    angle = np.deg2rad(RV_ANGLE_DEG)
    gap = RV_GAP_FACTOR * outer[0]
    centre = (heart.centre_mm[0] + gap * np.cos(angle), heart.centre_mm[1] + gap * np.sin(angle))
    return centre, outer * np.asarray(RV_SHAPE) * heart.rv_ratio ** (1.0 / 3.0)


def labels_at(heart: Heart, grid: Grid, z: float, c: float) -> np.ndarray:
    """Label map (rows, cols) uint8 of the slice at z (mm) and contraction state c."""
    x, y = grid.coordinates()
    cavity, outer = lv_axes(heart, c)
    epi = _inside(x, y, z, heart.centre_mm, outer)
    rv_centre, rv_axes = _rv_centre_axes(heart, outer)
    out = np.zeros(x.shape, dtype=np.uint8)
    out[_inside(x, y, z, rv_centre, rv_axes) & ~epi] = RV
    out[epi] = MYO
    out[_inside(x, y, z, heart.centre_mm, cavity)] = LV
    return out


def _rv_wall(heart: Heart, grid: Grid, z: float, c: float, labels: np.ndarray) -> np.ndarray:
    """RV free wall: a thin shell outside the RV cavity, not overlapping the LV."""
    x, y = grid.coordinates()
    outer = lv_axes(heart, c)[1]
    rv_centre, rv_axes = _rv_centre_axes(heart, outer)
    shell = _inside(x, y, z, rv_centre, rv_axes + RV_WALL_MM)
    return shell & (labels == 0)


@lru_cache(maxsize=32)
def anatomy(heart: Heart, grid: Grid, z: float) -> np.ndarray:
    """Static background (body texture, lungs, liver, fat) at slice z, relative intensity.

    Cached (the same for every frame): the returned array is read-only.
    """
    rng = np.random.default_rng(heart.seed)
    x, y = grid.coordinates()
    texture = np.zeros_like(x)
    for _ in range(TEXTURE_WAVES):
        period = rng.uniform(*TEXTURE_PERIOD_MM)
        theta, phase, tilt = rng.uniform(0, 2 * np.pi, 3)
        k = 2 * np.pi / period
        texture += np.sin(k * (x * np.cos(theta) + y * np.sin(theta)) + phase + tilt * z / 50)
    image = BODY * (1 + TEXTURE_DEPTH * texture / np.sqrt(TEXTURE_WAVES))
    body = (x / BODY_MM[0]) ** 2 + (y / BODY_MM[1]) ** 2
    image[(body > FAT_FROM) & (body <= 1.0)] = FAT
    image[body > 1.0] = AIR
    lung_x = heart.centre_mm[0] + rng.uniform(80, 95)
    image[((x - lung_x) / 35) ** 2 + ((y + 10) / 70) ** 2 <= 1] = LUNG
    image[((x + 100) / 35) ** 2 + ((y - 10) / 65) ** 2 <= 1] = LUNG
    liver = ((x - 20) / 80) ** 2 + ((y - 85 - z / 4) / 35) ** 2 <= 1
    image[liver] = LIVER
    image.flags.writeable = False
    return image


def render_slice(heart: Heart, grid: Grid, z: float, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free relative intensity (float32) and labels (uint8) of one slice and frame."""
    labels = labels_at(heart, grid, z, c)
    image = anatomy(heart, grid, z).copy()
    image[_rv_wall(heart, grid, z, c, labels)] = MYOCARDIUM
    image[labels == MYO] = MYOCARDIUM
    image[(labels == LV) | (labels == RV)] = BLOOD
    x, y = grid.coordinates()
    image *= 1.0 + BIAS_DEPTH * (y / max(abs(y).max(), 1e-6))  # coil sensitivity ramp
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), BLUR_SIGMA_PX)
    return image, labels


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of standard deviation `sigma`."""
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real**2 + imag**2)


def voxel_volumes_ml(labels: np.ndarray, voxel_mm3: float) -> dict[str, np.ndarray]:
    """Per-frame volumes in mL of each label from (T, Z, rows, cols) label maps."""
    axes = tuple(range(1, labels.ndim))
    return {name: (labels == value).sum(axis=axes) * voxel_mm3 * ML_PER_MM3
            for name, value in LABELS.items()}


@dataclass
class CineStack:
    """A rendered short-axis cine of one heart: noise-free images, labels and geometry."""

    heart: Heart
    grid: Grid
    z: np.ndarray  # (Z,) slice positions along the normal, mm from the base plane
    contraction: np.ndarray  # (T,)
    images: np.ndarray  # float32 (T, Z, rows, cols) relative intensity, noise-free
    labels: np.ndarray  # uint8 (T, Z, rows, cols)
    rr_ms: float  # cardiac cycle length

    @property
    def slice_spacing(self) -> float:
        """Distance between neighbouring slices in mm."""
        return float(abs(self.z[1] - self.z[0])) if len(self.z) > 1 else 0.0

    @property
    def voxel_mm3(self) -> float:
        """Pixel area x slice spacing."""
        return self.grid.spacing[0] * self.grid.spacing[1] * self.slice_spacing

    @property
    def trigger_times(self) -> np.ndarray:
        """Trigger time of each frame in ms."""
        return np.arange(len(self.contraction)) * self.rr_ms / len(self.contraction)

    def render(self, grid: Grid, k: int, t: int) -> np.ndarray:
        """Slice k at frame t on another pixel grid (noise-free relative intensity)."""
        return render_slice(self.heart, grid, float(self.z[k]), float(self.contraction[t]))[0]


def render_stack(heart: Heart, grid: Grid, n_slices: int, slice_spacing: float,
                 n_frames: int, rr_ms: float, first_slice_mm: float) -> CineStack:
    """Render every slice and frame; slice k lies at first_slice_mm - k * slice_spacing."""
    z = first_slice_mm - np.arange(n_slices) * slice_spacing
    states = contraction(heart, n_frames)
    images = np.empty((n_frames, n_slices, grid.rows, grid.cols), np.float32)
    labels = np.empty(images.shape, np.uint8)
    for t, c in enumerate(states):
        for k, zk in enumerate(z):
            images[t, k], labels[t, k] = render_slice(heart, grid, float(zk), float(c))
    return CineStack(heart, grid, z, states, images, labels, rr_ms)
