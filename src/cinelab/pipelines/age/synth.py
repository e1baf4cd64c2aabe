"""Synthetic long-axis cine MRI cohorts (3- and 4-chamber views) whose anatomy ages.

`synth_cmr_lax_cohort(out, n, seed, views)` writes, deterministically by seed::

    out/ages.csv       subject, age, sex, height_cm (the label table; sex/height are covariates)
    out/truth.csv      subject, age, the phantom's parameters, frames and which views exist
    out/dicom/<subject>/<SeriesDescription>_<SeriesNumber>/IM-<instance>.dcm
                       single-frame MR images, one per time point, with TriggerTime,
                       CardiacNumberOfImages, NominalInterval, PixelSpacing, SeriesDescription

How age changes the images (a = (age - 60) / 20, each effect with its own subject noise, so
the images say a lot but not everything about age): thicker LV walls, a smaller LV cavity,
larger atria, slower early-diastolic relaxation with a stronger atrial kick (the cavity
refills later in the cycle), and, per view, a wider aortic root (3-chamber only) and a larger
right atrium (4-chamber only). Series descriptions vary between UK Biobank-like names and
other spellings; some subjects miss a view and some carry an extra 2-chamber series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom.uid import generate_uid

from cinelab.errors import InputError
from cinelab.pipelines.cmr.synth_writers import MAX_STORED, mr_template, save_mr_image
from cinelab.synth.cmr_phantom import (
    AIR,
    BLOOD,
    BODY,
    FAT,
    LUNG,
    MYOCARDIUM,
    TEXTURE_DEPTH,
    TEXTURE_PERIOD_MM,
    TEXTURE_WAVES,
    add_rician_noise,
)
from cinelab.utils import write_csv

VIEWS = ("3ch", "4ch")
EXTRA_VIEW = "2ch"  # written for some subjects; an ingest asking for 3ch/4ch must skip it
DESCRIPTIONS = {
    "4ch": ("CINE_segmented_LAX_4Ch", "cine_4ch", "LAX 4 chamber cine", "4CH_TF2D"),
    "3ch": ("CINE_segmented_LAX_3Ch", "cine_3ch", "LAX 3 chamber cine", "LVOT 3CH"),
    "2ch": ("CINE_segmented_LAX_2Ch", "cine_2ch"),
}
SERIES_NUMBERS = {"2ch": 20, "3ch": 21, "4ch": 22}
AGE_RANGE = (40.0, 80.0)
AGE_CENTRE, AGE_SCALE = 60.0, 20.0
FRAME_CHOICES = (20, 25, 30)  # time points per cycle (resampled to 25 when prepared)
RR_RANGE = (750.0, 1150.0)  # ms
PIXEL_RANGE = (2.0, 2.4)  # mm
DEFAULT_SIZE = 80  # rows and columns of the written images
MISSING_VIEW_RATE = 0.08  # per view; a subject always keeps at least one view
EXTRA_VIEW_RATE = 0.25
NOISE = 0.05  # Rician sigma relative to blood
SCALE_RANGE = (500.0, 900.0)  # stored value of blood
ES_FRACTION = 0.35  # end systole, fraction of the cycle
ATRIAL_KICK = 0.85  # atrial contraction starts here (fraction of the cycle)
EF_RADIAL = 0.30  # cavity radius shortening at end systole
EF_LONG = 0.12  # cavity length shortening at end systole
WALL_THICKENING = 0.5  # relative wall thickening at end systole
MEDIASTINUM = 0.55  # fat and connective tissue around the heart (myocardium is darker)
RV_WALL_MM, AORTA_WALL_MM, SEPTUM_GAP_MM = 3.0, 2.0, 2.0
BLUR_SIGMA_PX = 0.6
BIAS_DEPTH = 0.15
SLICE_THICKNESS_MM = 8.0
# Age effect per unit of a, and the subject-level SD of what age does not explain.
# The view-specific effects (right atrium: 4ch, aortic root: 3ch) are the least noisy, so the
# two views carry complementary information about age.
EFFECTS = {  # name: (value at 60 years, slope per 20 years, noise SD)
    "lv_radius_mm": (24.0, -2.5, 1.5),
    "lv_aspect": (2.1, 0.0, 0.12),
    "wall_mm": (8.0, 2.0, 1.0),
    "la_radius_mm": (17.0, 3.0, 1.8),
    "ra_radius_mm": (17.0, 4.0, 1.0),
    "aorta_mm": (28.0, 6.0, 1.5),
    "early_filling": (0.7, -0.2, 0.07),  # share of diastolic filling before the atrial kick
    "relax_tau": (0.07, 0.05, 0.018),  # early relaxation time constant, fraction of the cycle
}


@dataclass(frozen=True)
class LaxHeart:
    """One subject's long-axis anatomy and function (lengths in mm, times in cycle units)."""

    age: float
    lv_radius_mm: float
    lv_aspect: float
    wall_mm: float
    la_radius_mm: float
    ra_radius_mm: float
    aorta_mm: float
    early_filling: float
    relax_tau: float
    axis_deg: float  # long-axis tilt from image vertical
    base_mm: tuple[float, float]  # mitral plane centre (x, y) from the FOV centre
    seed: int


def random_lax_heart(rng: np.random.Generator, age: float) -> LaxHeart:
    """Draw a heart of `age`: each EFFECTS parameter = value + slope * a + noise."""
    a = (age - AGE_CENTRE) / AGE_SCALE
    values = {k: float(v + s * a + rng.normal(0.0, sd)) for k, (v, s, sd) in EFFECTS.items()}
    values["early_filling"] = float(np.clip(values["early_filling"], 0.2, 0.95))
    values["relax_tau"] = float(np.clip(values["relax_tau"], 0.02, 0.2))
    return LaxHeart(age=float(age), **values, axis_deg=float(rng.uniform(-12, 12)),
                    base_mm=(float(rng.uniform(-10, 10)), float(rng.uniform(20, 32))),
                    seed=int(rng.integers(2**31)))


def contraction(heart: LaxHeart, phase: np.ndarray) -> np.ndarray:
    """LV contraction state c in [0, 1] (0 end diastole, 1 end systole) at cycle phases.

    Systole: raised cosine to ES_FRACTION. Diastole: an exponential early refill (time
    constant `relax_tau`) of `early_filling` of the volume until ATRIAL_KICK, then the
    atrial contraction refills the rest with a raised cosine.
    """
    s = np.mod(np.asarray(phase, dtype=float), 1.0)
    e, tau = heart.early_filling, heart.relax_tau
    early = e * (1 - np.exp(-(s - ES_FRACTION) / tau)) / (1 - np.exp(-(ATRIAL_KICK -
                                                                      ES_FRACTION) / tau))
    kick = (1 - e) * 0.5 * (1 - np.cos(np.pi * (s - ATRIAL_KICK) / (1 - ATRIAL_KICK)))
    return np.where(s < ES_FRACTION, 0.5 * (1 - np.cos(np.pi * s / ES_FRACTION)),
                    np.where(s < ATRIAL_KICK, 1 - early, 1 - e - kick))


def _half_ellipse(u: np.ndarray, v: np.ndarray, ru: float, rv: float) -> np.ndarray:
    """Points with v >= 0 inside the ellipse (u/ru)^2 + (v/rv)^2 <= 1."""
    return (v >= 0) & ((u / ru) ** 2 + (v / rv) ** 2 <= 1)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float,
             rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1


def _atrial_scale(c: float, s: float) -> float:
    """Atria fill while the ventricle empties (reservoir) and shrink at the atrial kick."""
    kick = 0.08 * np.sin(np.pi * (s - ATRIAL_KICK) / (1 - ATRIAL_KICK)) if s >= ATRIAL_KICK \
        else 0.0
    return float(1.0 + 0.12 * c - kick)


def heart_masks(heart: LaxHeart, view: str, x: np.ndarray, y: np.ndarray,
                s: float) -> tuple[np.ndarray, np.ndarray]:
    """(myocardium/vessel wall, blood) masks of `view` at cycle phase s on pixel centres x, y."""
    c = float(contraction(heart, np.array([s]))[0])
    t = np.deg2rad(heart.axis_deg)
    px, py = x - heart.base_mm[0], y - heart.base_mm[1]
    u = px * np.cos(t) + py * np.sin(t)  # across the long axis (image right)
    v = px * np.sin(t) - py * np.cos(t)  # along the long axis, towards the apex (image up)
    r = heart.lv_radius_mm * (1 - EF_RADIAL * c)
    length = heart.lv_radius_mm * heart.lv_aspect * (1 - EF_LONG * c)
    w = heart.wall_mm * (1 + WALL_THICKENING * c)
    cavity = _half_ellipse(u, v, r, length)
    wall = _half_ellipse(u, v, r + w, length + 0.7 * w) & ~cavity
    grow = _atrial_scale(c, s)
    la_r, la_len = heart.la_radius_mm * grow, heart.la_radius_mm * 1.25 * grow
    la_u = 0.0 if view == "4ch" else 0.35 * heart.lv_radius_mm
    blood = cavity | (_ellipse(u, v, la_u, -0.85 * la_len, la_r, la_len) & (v < 0))
    if view == "4ch":
        wall, blood = _right_heart(heart, u, v, c, grow, wall, blood)
    elif view == "3ch":
        wall, blood = _aorta(heart, u, v, wall, blood)
    return wall & ~blood, blood


def _right_heart(heart: LaxHeart, u: np.ndarray, v: np.ndarray, c: float, grow: float,
                 wall: np.ndarray, blood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-chamber: RV beside the septum (cavity + free wall) and the right atrium below it."""
    outer = heart.lv_radius_mm + heart.wall_mm
    rv_r = 0.8 * heart.lv_radius_mm * (1 - 0.25 * c)
    rv_u = -(outer + 0.6 * rv_r)
    rv_len = 0.8 * heart.lv_radius_mm * heart.lv_aspect * (1 - EF_LONG * c)
    lv_epi = _half_ellipse(u, v, outer * 1.05, outer * heart.lv_aspect)
    rv = _half_ellipse(u - rv_u, v, rv_r, rv_len) & ~lv_epi
    rv_wall = _half_ellipse(u - rv_u, v, rv_r + RV_WALL_MM, rv_len + RV_WALL_MM) & ~lv_epi & ~rv
    ra_r, ra_len = heart.ra_radius_mm * grow, heart.ra_radius_mm * 1.2 * grow
    septum = rv_u / 2  # the atrial septum, midway between the atria
    ra = _ellipse(u, v, rv_u, -0.85 * ra_len, ra_r, ra_len) & (v < 0) & \
        (u < septum - SEPTUM_GAP_MM / 2)
    right_of_la = (v < 0) & (u < septum + SEPTUM_GAP_MM / 2)
    blood = (blood & ~right_of_la) | rv | ra
    return wall | rv_wall, blood


def _aorta(heart: LaxHeart, u: np.ndarray, v: np.ndarray, wall: np.ndarray,
           blood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3-chamber: the aortic root leaving the LV outflow tract below and to the septal side."""
    angle = np.deg2rad(30.0)
    start_u = -0.55 * heart.lv_radius_mm
    along = -(u - start_u) * np.sin(angle) - v * np.cos(angle)  # down and to the left
    across = (u - start_u) * np.cos(angle) - v * np.sin(angle)
    half = heart.aorta_mm / 2 * (1 + 0.12 * np.sin(np.pi * np.clip(along, 0, 30) / 30))
    inside = (along >= -4) & (along <= 50)
    lumen = inside & (np.abs(across) <= half)
    vessel = inside & (np.abs(across) <= half + AORTA_WALL_MM) & ~lumen
    return wall | vessel, blood | lumen


def background(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Static chest: textured body, fat rim, two lungs, relative intensity."""
    rng = np.random.default_rng(seed)
    texture = np.zeros_like(x)
    for _ in range(TEXTURE_WAVES):
        k = 2 * np.pi / rng.uniform(*TEXTURE_PERIOD_MM)
        theta, phase = rng.uniform(0, 2 * np.pi, 2)
        texture += np.sin(k * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    image = BODY * (1 + TEXTURE_DEPTH * texture / np.sqrt(TEXTURE_WAVES))
    body = (x / 160.0) ** 2 + ((y - 10) / 120.0) ** 2
    image[(body > 0.8) & (body <= 1.0)] = FAT
    image[body > 1.0] = AIR
    for cx in (-85.0, 85.0):
        image[((x - cx - rng.uniform(-5, 5)) / 32) ** 2 + ((y + 5) / 70) ** 2 <= 1] = LUNG
    return image


def render_view(heart: LaxHeart, view: str, size: int, pixel_mm: float,
                phases: np.ndarray) -> np.ndarray:
    """Noise-free relative intensity (T, size, size) float32 of `view` at the given phases."""
    if view not in (*VIEWS, EXTRA_VIEW):
        raise InputError(None, "view", f"one of {(*VIEWS, EXTRA_VIEW)}", repr(view))
    centre = (np.arange(size) - (size - 1) / 2.0) * pixel_mm
    x, y = np.meshgrid(centre, centre)
    static = background(x, y, heart.seed)
    bias = 1.0 + BIAS_DEPTH * (y / max(abs(y).max(), 1e-6))
    mediastinum = _ellipse(x, y, heart.base_mm[0], heart.base_mm[1] - 10.0, 62.0, 78.0)
    frames = np.empty((len(phases), size, size), np.float32)
    for i, s in enumerate(phases):
        wall, blood = heart_masks(heart, "4ch" if view == EXTRA_VIEW else view, x, y, float(s))
        image = static.copy()
        image[mediastinum] = MEDIASTINUM
        image[wall] = MYOCARDIUM
        image[blood] = BLOOD
        frames[i] = cv2.GaussianBlur((image * bias).astype(np.float32), (0, 0), BLUR_SIGMA_PX)
    return frames


@dataclass
class LaxCohort:
    """Where a synthetic long-axis cohort went and its truth."""

    root: Path
    dicom_root: Path
    ages: pd.DataFrame
    truth: pd.DataFrame


def synth_cmr_lax_cohort(out: str | Path, n: int = 40, seed: int = 0,
                         views: Sequence[str] = VIEWS, size: int = DEFAULT_SIZE,
                         frame_choices: Sequence[int] = FRAME_CHOICES,
                         noise: float = NOISE, missing_rate: float = MISSING_VIEW_RATE,
                         extra_rate: float = EXTRA_VIEW_RATE) -> LaxCohort:
    """Render `n` subjects' long-axis cines and write them as MR DICOM series."""
    views = tuple(views)
    bad = [v for v in views if v not in VIEWS]
    if bad or not views or n < 1 or size < 16 or min(frame_choices) < 4:
        raise InputError(None, "views, n, size, frame_choices",
                         f"views among {VIEWS}, n >= 1, size >= 16, >= 4 frames",
                         f"views={views}, n={n}, size={size}, frames={tuple(frame_choices)}")
    out = Path(out)
    ages, truth = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        subject = f"S{i + 1:04d}"
        age = float(rng.uniform(*AGE_RANGE))
        heart = random_lax_heart(rng, age)
        present = _present_views(rng, views, missing_rate)
        if rng.random() < extra_rate:
            present.append(EXTRA_VIEW)
        acquisition = _Acquisition.draw(rng, size, frame_choices, noise)
        for view in present:
            _write_series(out / "dicom" / subject, subject, heart, view, acquisition, rng, seed)
        sex = str(rng.choice(["F", "M"]))
        ages.append({"subject": subject, "age": round(age, 2), "sex": sex,
                     "height_cm": round(float(rng.normal(170 if sex == "M" else 162, 7)), 1)})
        truth.append({"subject": subject, **asdict(heart), "frames": acquisition.frames,
                      "rr_ms": acquisition.rr_ms, "views": ",".join(sorted(present))})
    ages_df, truth_df = pd.DataFrame(ages), pd.DataFrame(truth)
    write_csv(ages_df, out / "ages.csv")
    write_csv(truth_df.drop(columns=["base_mm"]), out / "truth.csv")
    return LaxCohort(out, out / "dicom", ages_df, truth_df)


def _present_views(rng: np.random.Generator, views: tuple[str, ...],
                   missing_rate: float) -> list[str]:
    """Views kept for a subject: each missing with `missing_rate`, never all."""
    kept = [v for v in views if rng.random() >= missing_rate]
    return kept or [views[int(rng.integers(len(views)))]]


@dataclass(frozen=True)
class _Acquisition:
    """A subject's scan settings (shared by its views)."""

    size: int
    pixel_mm: float
    frames: int
    rr_ms: float
    scale: float
    noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator, size: int, frame_choices: Sequence[int],
             noise: float) -> _Acquisition:
        return cls(size, float(rng.uniform(*PIXEL_RANGE)), int(rng.choice(frame_choices)),
                   float(rng.uniform(*RR_RANGE)), float(rng.uniform(*SCALE_RANGE)), noise)


def _write_series(folder: Path, subject: str, heart: LaxHeart, view: str, acq: _Acquisition,
                  rng: np.random.Generator, seed: int) -> Path:
    """One view's cine: a folder of single-frame MR images with trigger times."""
    description = str(rng.choice(DESCRIPTIONS[view]))
    number = SERIES_NUMBERS[view]
    series = folder / f"{description.replace(' ', '_')}_{number}"
    phases = np.arange(acq.frames) / acq.frames
    frames = render_view(heart, view, acq.size, acq.pixel_mm, phases)
    template = mr_template(
        None, PatientID=subject, PatientName=subject, SeriesDescription=description,
        SeriesNumber=number, StudyInstanceUID=_uid(seed, subject),
        SeriesInstanceUID=_uid(seed, subject, view), CardiacNumberOfImages=acq.frames,
        NominalInterval=int(round(acq.rr_ms)), PixelSpacing=[f"{acq.pixel_mm:.4f}"] * 2,
        SliceThickness=f"{SLICE_THICKNESS_MM:g}")
    for t, image in enumerate(frames):
        noisy = add_rician_noise(image, acq.noise, rng) * acq.scale
        pixels = np.clip(np.rint(noisy), 0, MAX_STORED).astype(np.uint16)
        save_mr_image(template, series / f"IM-{t + 1:04d}.dcm", pixels, InstanceNumber=t + 1,
                      TriggerTime=f"{t * acq.rr_ms / acq.frames:.2f}",
                      SOPInstanceUID=_uid(seed, subject, view, t))
    return series


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])
