"""Synthetic apical-4-chamber echo cohorts in the EchoNet-Dynamic layout, with known truth.

`synth_echo_cohort` writes Videos/*.avi, FileList.csv, VolumeTracings.csv (long axis + 20 disc
chords at one ED and one ES frame, traced from the phantom's own LV contour), Masks/*.npz
(per-frame LV cavity) and Truth/*.csv (per-frame LV area and volume, every ED and ES).
`echo_phantom_video` makes one phantom video for reuse by other pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import skimage.draw

from cinelab.errors import InputError
from cinelab.io.video import write_video
from cinelab.measure.ef import (
    MM3_PER_ML,
    disc_volume,
    ef_from_tracings,
    tracings_from_echonet_csv,
)
from cinelab.synth import echo_phantom as ph
from cinelab.synth.dicom import write_ultrasound_dicom
from cinelab.utils import atomic_path

HEART_RATE_RANGE = (50.0, 110.0)  # bpm
FPS_RANGE = (30, 60)
FRAMES_RANGE = (60, 140)
MIN_BEATS = 2.5  # a video always holds this many mean RR intervals (3.5 when irregular)
SYSTOLE_RANGE_S = (0.26, 0.34)
RR_JITTER = {False: 0.03, True: 0.35}  # uniform +- fraction of the mean RR
RR_MIN_STEP = {False: 0.0, True: 0.2}  # successive RR intervals differ by this fraction
AMPLITUDE_JITTER = {False: 0.02, True: 0.1}
# EF (%) ~ mixture shaped like EchoNet-Dynamic's FileList: mostly normal, a reduced-EF tail.
EF_NORMAL = (0.78, 60.5, 5.5)  # weight, mean, sd
EF_REDUCED = (36.0, 11.0)
EF_RANGE = (15.0, 80.0)
DEPTH_MM_RANGE = (140.0, 180.0)  # imaging depth covered by the sector radius
SPLITS = (("TRAIN", 0.75), ("VAL", 0.125), ("TEST", 0.125))
FILELIST_COLUMNS = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS",
                    "NumberOfFrames", "Split", "HeartRate", "Irregular"]
TRACING_CSV_COLUMNS = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
REFERENCE_SIZE = 112.0  # geometry ranges below are in pixels of a 112 x 112 frame
MIN_SIZE = 32


@dataclass(frozen=True)
class PhantomTruth:
    """Ground truth of one phantom video."""

    table: pd.DataFrame  # frame, lv_area_px, lv_volume (mL), is_ed, is_es
    lines: np.ndarray  # (T, 1 + N_DISCS, 4) EchoNet tracing lines of the LV at every frame
    fps: float
    heart_rate: float
    irregular: bool
    pixel_size_mm: float
    region: tuple[int, int, int, int]  # sector bounding box (y0, x0, y1, x1), half-open
    beats: list[tuple[int, int]] = field(default_factory=list)  # complete (ED, ES) pairs
    rr: np.ndarray = field(default_factory=lambda: np.zeros(0))  # RR intervals, s
    ef_target: float = float("nan")


def draw_ef(rng: np.random.Generator) -> float:
    """An EF (%) from the EchoNet-shaped mixture, redrawn until inside EF_RANGE."""
    while True:
        weight, mean, sd = EF_NORMAL
        ef = rng.normal(mean, sd) if rng.random() < weight else rng.normal(*EF_REDUCED)
        if EF_RANGE[0] <= ef <= EF_RANGE[1]:
            return float(ef)


def _coefs(rng: np.random.Generator, sd: float) -> tuple[float, ...]:
    return tuple(float(v) for v in rng.normal(0.0, sd, ph.N_HARMONICS))


def draw_heart(rng: np.random.Generator, size: int, ef: float
               ) -> tuple[ph.Ventricle, ph.Ventricle, ph.Atrium, ph.Atrium]:
    """LV, RV, LA, RA of one video; the LV's shortening/narrowing give about `ef` percent."""
    k = size / REFERENCE_SIZE
    dilation = 1.0 + 0.12 * np.clip((55.0 - ef) / 40.0, 0.0, 1.0)
    length = rng.uniform(48.0, 62.0) * k * dilation
    ratio = 1.0 - ef / 100.0
    axial_share = rng.uniform(0.15, 0.35)
    lv = ph.Ventricle(
        apex=(float(rng.uniform(50.0, 60.0) * k), float(rng.uniform(10.0, 26.0) * k)),
        angle=float(rng.uniform(0.0, 0.35)), length=float(length),
        half_width=float(length * rng.uniform(0.25, 0.33)),
        base_narrowing=float(rng.uniform(0.15, 0.3)), apex_exponent=float(rng.uniform(0.5, 0.8)),
        shorten=float(1.0 - ratio**axial_share),
        narrow=float(1.0 - ratio ** ((1.0 - axial_share) / 2.0)),
        shape_left=_coefs(rng, 0.04), shape_right=_coefs(rng, 0.04),
        hetero_left=_coefs(rng, 0.15), hetero_right=_coefs(rng, 0.15))
    rv = _draw_rv(rng, lv, k)
    la = _draw_atrium(rng, lv)
    return lv, rv, la, _draw_atrium(rng, rv)


def _draw_rv(rng: np.random.Generator, lv: ph.Ventricle, k: float) -> ph.Ventricle:
    """The RV beside the LV's septal (-n) side, apex lower, base about level with the LV's."""
    length = lv.length * rng.uniform(0.65, 0.85)
    half_width = lv.half_width * rng.uniform(0.5, 0.75)
    u, n = lv.axes
    septum = rng.uniform(5.0, 8.0) * k
    offset = lv.max_extent()[0] + septum + half_width * 1.1
    apex = np.asarray(lv.apex) + u * (lv.length - length) - n * offset
    return ph.Ventricle(
        apex=(float(apex[0]), float(apex[1])), angle=float(lv.angle + rng.uniform(-0.08, 0.04)),
        length=float(length), half_width=float(half_width),
        base_narrowing=float(rng.uniform(0.1, 0.25)), apex_exponent=float(rng.uniform(0.6, 0.9)),
        shorten=float(rng.uniform(0.1, 0.2)), narrow=float(rng.uniform(0.15, 0.3)),
        shape_left=_coefs(rng, 0.05), shape_right=_coefs(rng, 0.05))


def _draw_atrium(rng: np.random.Generator, ventricle: ph.Ventricle) -> ph.Atrium:
    annulus = ventricle.half_width * (1.0 - ventricle.base_narrowing)
    return ph.Atrium(gap=float(rng.uniform(2.0, 3.5)),
                     long_radius=float(ventricle.length * rng.uniform(0.22, 0.3)),
                     wide_radius=float(annulus * rng.uniform(1.0, 1.3)),
                     tilt=float(rng.uniform(-0.15, 0.15)), grow=float(rng.uniform(0.1, 0.25)))


def draw_appearance(rng: np.random.Generator, size: int) -> ph.Appearance:
    """Gain, grey levels, noise and speckle of one video, independent of its EF."""
    k = size / REFERENCE_SIZE
    return ph.Appearance(
        gain=float(rng.uniform(0.65, 1.15)), gamma=float(rng.uniform(0.7, 1.0)),
        blood=float(rng.uniform(0.01, 0.08)), background=float(rng.uniform(0.06, 0.22)),
        wall=float(rng.uniform(0.5, 0.95)), wall_thickness=float(rng.uniform(4.0, 7.0) * k),
        thickening=float(rng.uniform(0.2, 0.45)), attenuation=float(rng.uniform(0.2, 1.0)),
        noise=float(rng.uniform(0.01, 0.05)), clutter=float(rng.uniform(0.0, 0.25)),
        speckle_step=float(rng.uniform(0.1, 0.3)),
        speckle_sigma=(float(rng.uniform(0.4, 0.8) * k), float(rng.uniform(0.8, 1.4) * k)),
        blur=float(rng.uniform(0.5, 0.9) * k))


def draw_sector(rng: np.random.Generator, size: int) -> ph.Sector:
    """A fan with its apex near the top centre."""
    return ph.Sector(apex_x=float(size / 2 + rng.uniform(-2.0, 2.0)),
                     apex_y=float(rng.uniform(0.0, 0.05) * size),
                     radius=float(rng.uniform(0.9, 0.99) * size),
                     half_angle=float(np.deg2rad(rng.uniform(36.0, 45.0))))


def _lv_masks(contours: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W) LV masks from (T, M, 2) xy contours."""
    masks = np.zeros((len(contours), size, size), np.uint8)
    for t, xy in enumerate(contours):
        rr, cc = skimage.draw.polygon(xy[:, 1], xy[:, 0], shape=(size, size))
        masks[t, rr, cc] = 1
    return masks


def echo_phantom_video(
    rng: np.random.Generator,
    size: int = 112,
    ef: float | None = None,
    heart_rate: float | None = None,
    fps: float | None = None,
    n_frames: int | None = None,
    irregular: bool = False,
    frames_range: tuple[int, int] = FRAMES_RANGE,
    fps_range: tuple[int, int] = FPS_RANGE,
) -> tuple[np.ndarray, np.ndarray, PhantomTruth]:
    """One A4C phantom: grey frames (T, H, W) uint8, LV masks (T, H, W) uint8 and its truth.

    Unset arguments are drawn from `rng` (fps from `fps_range`); a drawn length (from
    `frames_range`) is extended to hold MIN_BEATS beats (one more when irregular).
    """
    ef = draw_ef(rng) if ef is None else float(ef)
    heart_rate = float(rng.uniform(*HEART_RATE_RANGE)) if heart_rate is None else heart_rate
    fps = float(rng.integers(fps_range[0], fps_range[1] + 1)) if fps is None else float(fps)
    if n_frames is None:
        beats_needed = MIN_BEATS + (1.0 if irregular else 0.0)
        n_frames = max(int(rng.integers(frames_range[0], frames_range[1] + 1)),
                       int(np.ceil(beats_needed * 60.0 / heart_rate * fps)))
    rhythm = ph.draw_rhythm(rng, heart_rate, n_frames / fps, rng.uniform(*SYSTOLE_RANGE_S),
                            RR_JITTER[irregular], AMPLITUDE_JITTER[irregular],
                            RR_MIN_STEP[irregular])
    times = np.arange(n_frames) / fps
    c, openness = ph.contraction(times, rhythm), ph.valve_openness(times, rhythm)
    lv, rv, la, ra = draw_heart(rng, size, ef)
    sector, look = draw_sector(rng, size), draw_appearance(rng, size)
    masks = _lv_masks(lv.contour(c), size)
    rv_c, la_c, ra_c = rv.contour(c), la.contour(lv, c), ra.contour(rv, c)
    channels = (ph.valve_channel(lv, la, c, openness), ph.valve_channel(rv, ra, c, openness))
    cavities = [[rv_c[t], la_c[t], ra_c[t], channels[0][t], channels[1][t]]
                for t in range(n_frames)]
    leaflets = np.concatenate([ph.leaflet_segments(lv, c, openness),
                               ph.leaflet_segments(rv, c, openness)], axis=1)
    frames = ph.render(rng, cavities, leaflets, c, masks, look, sector)
    pixel_size = float(rng.uniform(*DEPTH_MM_RANGE) / sector.radius)
    lines = lv.tracing_lines(c)
    truth = PhantomTruth(
        table=_truth_table(masks, lines, rhythm, fps, pixel_size), lines=lines, fps=fps,
        heart_rate=heart_rate, irregular=irregular, pixel_size_mm=pixel_size,
        region=sector.region(size), beats=ph.beat_frames(rhythm, fps, n_frames),
        rr=rhythm.rr, ef_target=ef)
    return frames, masks, truth


def _truth_table(masks: np.ndarray, lines: np.ndarray, rhythm: ph.Rhythm, fps: float,
                 pixel_size_mm: float) -> pd.DataFrame:
    """Per-frame LV area (px), disc volume (mL) and ED/ES flags for every beat."""
    n_frames = len(masks)
    eds, ess = ph.event_frames(rhythm, fps, n_frames)
    scale = pixel_size_mm**3 / MM3_PER_ML
    return pd.DataFrame({
        "frame": np.arange(n_frames),
        "lv_area_px": masks.reshape(n_frames, -1).sum(axis=1).astype(int),
        "lv_volume": [disc_volume(frame_lines) * scale for frame_lines in lines],
        "is_ed": np.isin(np.arange(n_frames), eds).astype(int),
        "is_es": np.isin(np.arange(n_frames), ess).astype(int),
    })


def _split_labels(rng: np.random.Generator, n: int) -> list[str]:
    """TRAIN/VAL/TEST in about 75/12.5/12.5 proportions (each present once n >= 3), shuffled."""
    small = [max(1, round(n * share)) if n >= 3 else 0 for _, share in SPLITS[1:]]
    labels = [SPLITS[0][0]] * (n - sum(small))
    for (name, _), count in zip(SPLITS[1:], small, strict=True):
        labels += [name] * count
    return [labels[i] for i in rng.permutation(n)]


def _file_names(rng: np.random.Generator, n: int) -> list[str]:
    """Unique EchoNet-like names 0X + 16 hex digits."""
    names: list[str] = []
    while len(names) < n:
        name = "0X" + "".join(f"{v:X}" for v in rng.integers(0, 16, 16))
        if name not in names:
            names.append(name)
    return names


def _tracing_rows(name: str, truth: PhantomTruth, ed: int, es: int) -> pd.DataFrame:
    """VolumeTracings rows for one video: ED frame lines, then ES frame lines."""
    parts = []
    for frame in (ed, es):
        part = pd.DataFrame(truth.lines[frame], columns=["X1", "Y1", "X2", "Y2"])
        part.insert(0, "FileName", name + ".avi")
        part["Frame"] = frame
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _write_video_files(out: Path, name: str, frames: np.ndarray, masks: np.ndarray,
                       truth: PhantomTruth, dicom: bool) -> None:
    """Videos/<name>.avi, Masks/<name>.npz, Truth/<name>.csv and optionally DICOM/<name>.dcm."""
    write_video(out / "Videos" / f"{name}.avi", frames, truth.fps)
    with atomic_path(out / "Masks" / f"{name}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, mask=masks)
    _write_csv(truth.table, out / "Truth" / f"{name}.csv")
    if dicom:
        write_ultrasound_dicom(out / "DICOM" / f"{name}.dcm", frames, truth.fps,
                               patient_id=name,
                               pixel_spacing_mm=(truth.pixel_size_mm, truth.pixel_size_mm),
                               region=truth.region)


def _check_cohort_args(n: int, irregular_fraction: float, size: int) -> None:
    """Reject cohort arguments that cannot make a cohort, naming the argument."""
    if n < 1:
        raise InputError(None, "n", "at least 1 video", repr(n))
    if not 0.0 <= irregular_fraction <= 1.0:
        raise InputError(None, "irregular_fraction", "a fraction in [0, 1]",
                         repr(irregular_fraction))
    if size < MIN_SIZE:
        raise InputError(None, "size", f"a frame size of at least {MIN_SIZE} px", repr(size))


def synth_echo_cohort(
    out: str | Path,
    n: int = 120,
    seed: int = 0,
    size: int = 112,
    dicom: bool = False,
    irregular_fraction: float = 0.15,
    frames_range: tuple[int, int] = FRAMES_RANGE,
    fps_range: tuple[int, int] = FPS_RANGE,
) -> Path:
    """Write an EchoNet-Dynamic-layout phantom cohort of `n` videos under `out`; return `out`.

    Deterministic by `seed`. Frame rates are drawn from `fps_range`, video lengths from
    `frames_range` (min, max), extended where needed to hold MIN_BEATS beats.
    """
    out = Path(out)
    _check_cohort_args(n, irregular_fraction, size)
    root = np.random.default_rng(seed)
    names, splits = _file_names(root, n), _split_labels(root, n)
    irregular = set(root.permutation(n)[: int(round(n * irregular_fraction))].tolist())
    rows, tracings = [], []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        rng = np.random.default_rng(child)
        frames, masks, truth = echo_phantom_video(rng, size=size, irregular=i in irregular,
                                                  frames_range=frames_range,
                                                  fps_range=fps_range)
        ed, es = truth.beats[int(rng.integers(len(truth.beats)))]
        traced = _tracing_rows(names[i], truth, ed, es)
        table, _ = ef_from_tracings(tracings_from_echonet_csv(traced),
                                    pixel_size_mm=truth.pixel_size_mm)
        rows.append([names[i], *table.loc[0, ["EF", "ESV", "EDV"]], size, size, truth.fps,
                     len(frames), splits[i], truth.heart_rate, int(truth.irregular)])
        tracings.append(traced)
        _write_video_files(out, names[i], frames, masks, truth, dicom)
    filelist = pd.DataFrame(rows, columns=FILELIST_COLUMNS).astype({"FPS": int})
    _write_csv(filelist, out / "FileList.csv")
    _write_csv(pd.concat(tracings, ignore_index=True)[TRACING_CSV_COLUMNS],
               out / "VolumeTracings.csv")
    return out
