"""Geometry and rhythm of the apical-4-chamber echo phantom (pixels, x right, y down).

Each ventricle is a bullet-shaped cavity with a fixed apex: at contraction state c (0 = end
diastole, 1 = end systole of a full beat) its long axis shortens by `shorten * c` and its
half-widths narrow by `narrow * c`, side by side with smooth regional heterogeneity. The atria
are ellipses hanging below their ventricle's annulus that fill while the ventricles empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

N_DISCS = 20  # disc chords per traced frame, as in EchoNet-Dynamic
CONTOUR_POINTS = 48  # samples per side of a ventricle contour
ATRIUM_POINTS = 48
N_HARMONICS = 3  # sine harmonics of the static shape and of the contraction heterogeneity
MIN_WIDTH_FACTOR = 0.15  # a wall never moves closer than this to the long axis
# Contraction waveform (fractions of diastole): rapid filling, diastasis, atrial kick.
EARLY_FILL_SHARE = 0.8
EARLY_FILL_END = 0.45
ATRIAL_KICK_START = 0.75


@dataclass(frozen=True)
class Ventricle:
    """A bullet-shaped ventricle; widths and coefficients are fractions of `half_width`."""

    apex: tuple[float, float]
    angle: float  # radians from the image's downward axis towards +x
    length: float  # long axis at end diastole, px
    half_width: float  # px at end diastole
    base_narrowing: float  # annulus half-width = half_width * (1 - base_narrowing)
    apex_exponent: float  # < 1 rounds the apex, 1 = elliptical
    shorten: float  # fractional long-axis shortening at c = 1
    narrow: float  # fractional narrowing at c = 1
    shape_left: tuple[float, ...] = (0.0,) * N_HARMONICS
    shape_right: tuple[float, ...] = (0.0,) * N_HARMONICS
    hetero_left: tuple[float, ...] = (0.0,) * N_HARMONICS
    hetero_right: tuple[float, ...] = (0.0,) * N_HARMONICS

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit long axis u (apex to base) and unit normal n (towards the +x side)."""
        u = np.array([np.sin(self.angle), np.cos(self.angle)])
        return u, np.array([u[1], -u[0]])

    def profile(self, s: np.ndarray) -> np.ndarray:
        """Half-width profile (fraction of half_width) along s in [0, 1] from the apex."""
        s = np.clip(s, 0.0, 1.0)
        return (1.0 - (1.0 - s) ** 2) ** self.apex_exponent * (1.0 - self.base_narrowing * s**3)

    def max_extent(self) -> tuple[float, float]:
        """Largest end-diastolic half-width on the left (-n) and right (+n) side, px."""
        s = np.linspace(0.0, 1.0, CONTOUR_POINTS)
        prof = self.profile(s) * self.half_width
        return (float(np.max(prof * (1 + _sines(self.shape_left, s)))),
                float(np.max(prof * (1 + _sines(self.shape_right, s)))))

    def sides(self, c: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Left and right wall points (T, N, 2) at contraction states c (T,) and levels s (N,)."""
        c = np.atleast_1d(np.asarray(c, dtype=float))[:, None]
        u, n = self.axes
        length = self.length * (1.0 - self.shorten * c)
        centre = np.asarray(self.apex) + (s[None, :] * length)[..., None] * u
        base = self.half_width * self.profile(s)[None, :]
        widths = []
        for shape, hetero in ((self.shape_left, self.hetero_left),
                              (self.shape_right, self.hetero_right)):
            motion = 1.0 - self.narrow * c * (1.0 + _sines(hetero, s)[None, :])
            widths.append(base * (1 + _sines(shape, s))[None, :]
                          * np.maximum(motion, MIN_WIDTH_FACTOR))
        return centre - widths[0][..., None] * n, centre + widths[1][..., None] * n

    def contour(self, c: np.ndarray) -> np.ndarray:
        """Closed contour (T, 2N, 2) xy: left wall apex->base, right wall base->apex."""
        left, right = self.sides(c, np.linspace(0.0, 1.0, CONTOUR_POINTS))
        return np.concatenate([left, right[:, ::-1]], axis=1)

    def annulus(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Left and right annulus points (T, 2)."""
        left, right = self.sides(c, np.ones(1))
        return left[:, 0], right[:, 0]

    def tracing_lines(self, c: np.ndarray, n_discs: int = N_DISCS) -> np.ndarray:
        """EchoNet lines (T, 1 + n_discs, 4): long axis apex->annulus midpoint, then chords."""
        c = np.atleast_1d(np.asarray(c, dtype=float))
        u, _ = self.axes
        apex = np.broadcast_to(np.asarray(self.apex), (len(c), 2))
        tip = apex + (self.length * (1.0 - self.shorten * c))[:, None] * u
        left, right = self.sides(c, (np.arange(n_discs) + 0.5) / n_discs)
        axis = np.concatenate([apex, tip], axis=1)[:, None, :]
        return np.concatenate([axis, np.concatenate([left, right], axis=2)], axis=1)


@dataclass(frozen=True)
class Atrium:
    """An ellipse below a ventricle's annulus; grows by `grow * c` while the ventricle empties."""

    gap: float  # px between the annulus plane and the atrium
    long_radius: float  # px along the ventricle axis
    wide_radius: float  # px across it
    tilt: float  # radians relative to the ventricle axis
    grow: float

    def contour(self, ventricle: Ventricle, c: np.ndarray) -> np.ndarray:
        """Closed contour (T, M, 2) xy attached to the ventricle's annulus at states c."""
        c = np.atleast_1d(np.asarray(c, dtype=float))[:, None]
        left, right = ventricle.annulus(c[:, 0])
        u0, _ = ventricle.axes
        rot = np.array([[np.cos(self.tilt), -np.sin(self.tilt)],
                        [np.sin(self.tilt), np.cos(self.tilt)]])
        u = rot @ u0
        n = np.array([u[1], -u[0]])
        rl = self.long_radius * (1.0 + self.grow * c)
        rw = self.wide_radius * (1.0 + 0.5 * self.grow * c)
        reach = np.sqrt((rl * np.cos(self.tilt)) ** 2 + (rw * np.sin(self.tilt)) ** 2)
        centre = 0.5 * (left + right)[:, None, :] + (self.gap + reach)[..., None] * u0
        psi = np.linspace(0.0, 2.0 * np.pi, ATRIUM_POINTS, endpoint=False)[None, :]
        return (centre + (rl * np.cos(psi))[..., None] * u + (rw * np.sin(psi))[..., None] * n)


@dataclass(frozen=True)
class Rhythm:
    """Beat onsets (end diastole) in seconds, per-beat systole length and contraction amplitude."""

    starts: np.ndarray  # (K + 1,): onset of each beat and the end of the last
    systole: np.ndarray  # (K,) seconds from ED to ES
    amplitude: np.ndarray  # (K,) multiplies the contraction state

    @property
    def rr(self) -> np.ndarray:
        """RR intervals (K,) in seconds."""
        return np.diff(self.starts)


def _sines(coefs: tuple[float, ...], s: np.ndarray) -> np.ndarray:
    """sum_k coefs[k] sin((k+1) pi s): zero at the apex and at the annulus."""
    k = np.arange(1, len(coefs) + 1)
    return np.sin(np.pi * np.outer(s, k)) @ np.asarray(coefs, dtype=float)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def draw_rhythm(
    rng: np.random.Generator,
    heart_rate: float,
    duration: float,
    systole_s: float,
    rr_jitter: float,
    amplitude_jitter: float,
    min_rr_step: float = 0.0,
    max_systole_fraction: float = 0.45,
) -> Rhythm:
    """Beats covering [0, duration]: RR = 60/HR * (1 + U(-rr_jitter, rr_jitter)).

    Successive RR intervals differ by at least `min_rr_step` (fraction of the mean RR; keep
    it below rr_jitter). The video starts at a random phase of the first beat. A beat's
    amplitude follows its RR interval (longer filling, stronger beat) plus noise of size
    `amplitude_jitter`.
    """
    rr0 = 60.0 / heart_rate
    starts, previous = [-rng.uniform(0.0, rr0)], np.inf
    while starts[-1] <= duration:
        deviation = rng.uniform(-rr_jitter, rr_jitter)
        while abs(deviation - previous) < min_rr_step:
            deviation = rng.uniform(-rr_jitter, rr_jitter)
        starts.append(starts[-1] + rr0 * (1.0 + deviation))
        previous = deviation
    starts_arr = np.asarray(starts)
    rr = np.diff(starts_arr)
    amplitude = 1.0 + 0.4 * (rr / rr0 - 1.0) + rng.normal(0.0, amplitude_jitter, len(rr))
    return Rhythm(starts_arr, np.minimum(systole_s, max_systole_fraction * rr),
                  np.clip(amplitude, 0.55, 1.15))


def contraction(times: np.ndarray, rhythm: Rhythm) -> np.ndarray:
    """Contraction state at each time: 0 at every ED, the beat's amplitude at its ES."""
    k = np.clip(np.searchsorted(rhythm.starts, times, side="right") - 1, 0,
                len(rhythm.systole) - 1)
    tau = times - rhythm.starts[k]
    ts, rr = rhythm.systole[k], rhythm.rr[k]
    systolic = 0.5 * (1.0 - np.cos(np.pi * np.clip(tau / ts, 0.0, 1.0)))
    d = np.clip((tau - ts) / (rr - ts), 0.0, 1.0)
    refill = (EARLY_FILL_SHARE * _smoothstep(d / EARLY_FILL_END)
              + (1.0 - EARLY_FILL_SHARE) * _smoothstep((d - ATRIAL_KICK_START)
                                                       / (1.0 - ATRIAL_KICK_START)))
    state = np.where(tau < ts, systolic, 1.0 - refill)
    return state * rhythm.amplitude[k]


def valve_openness(times: np.ndarray, rhythm: Rhythm) -> np.ndarray:
    """0 (closed) in systole, opening in early diastole, half-closing in diastasis."""
    k = np.clip(np.searchsorted(rhythm.starts, times, side="right") - 1, 0,
                len(rhythm.systole) - 1)
    tau = times - rhythm.starts[k]
    d = np.clip((tau - rhythm.systole[k]) / (rhythm.rr[k] - rhythm.systole[k]), 0.0, 1.0)
    return np.where(tau < rhythm.systole[k], 0.0, np.sin(np.pi * d) ** 0.5)


def beat_frames(rhythm: Rhythm, fps: float, n_frames: int) -> list[tuple[int, int]]:
    """(ED, ES) frame pairs, nearest frames to each beat's onset and end systole, in range."""
    pairs = []
    for start, ts in zip(rhythm.starts[:-1], rhythm.systole, strict=True):
        ed, es = int(round(start * fps)), int(round((start + ts) * fps))
        if 0 <= ed < es < n_frames:
            pairs.append((ed, es))
    return pairs


def event_frames(rhythm: Rhythm, fps: float, n_frames: int) -> tuple[list[int], list[int]]:
    """Every ED frame and every ES frame inside the video (beats cut by the edges included)."""
    eds = [int(round(t * fps)) for t in rhythm.starts]
    ess = [int(round((t + s) * fps)) for t, s in zip(rhythm.starts[:-1], rhythm.systole,
                                                      strict=True)]
    return ([f for f in eds if 0 <= f < n_frames], [f for f in ess if 0 <= f < n_frames])


# --- appearance ---------------------------------------------------------------------------

RAYLEIGH_MEAN = float(np.sqrt(np.pi) / 2.0)  # mean of |z| for complex z with E|z|^2 = 1
WALL_SOFTNESS = 0.8  # px, soft edge of the myocardium band
TEXTURE_SIGMA = 6.0  # px, smoothness of background / wall brightness textures
BACKGROUND_TEXTURE = 0.5
WALL_TEXTURE = 0.35
CLUTTER_DEPTH = 0.15  # near-field clutter decays over this fraction of the sector radius
LEAFLET_BRIGHTNESS = 1.1  # valve leaflets relative to the wall level
SHIFT_BITS = 4  # sub-pixel precision for OpenCV drawing
SHIFT = float(1 << SHIFT_BITS)


@dataclass(frozen=True)
class Sector:
    """The fan-shaped scan sector: apex (x, y), radius and half-angle."""

    apex_x: float
    apex_y: float
    radius: float
    half_angle: float

    def polar(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Depth r and angle from the sector's axis for every pixel (H, W)."""
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        return (np.hypot(x - self.apex_x, y - self.apex_y),
                np.arctan2(x - self.apex_x, y - self.apex_y))

    def mask(self, size: int) -> np.ndarray:
        """Boolean (H, W): inside the sector."""
        r, theta = self.polar(size)
        return (r <= self.radius) & (np.abs(theta) <= self.half_angle)

    def region(self, size: int) -> tuple[int, int, int, int]:
        """Bounding box (y0, x0, y1, x1) of the sector in pixels, half-open."""
        ys, xs = np.nonzero(self.mask(size))
        return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


@dataclass(frozen=True)
class Appearance:
    """Grey levels (0-1 before gain), textures and noise of one video."""

    gain: float
    gamma: float
    blood: float
    background: float
    wall: float
    wall_thickness: float  # px at end diastole
    thickening: float  # fractional wall thickening at c = 1
    attenuation: float  # exp(-attenuation * depth / radius)
    noise: float  # additive Gaussian noise (fraction of full scale)
    clutter: float  # near-field haze level
    speckle_step: float  # radians per frame of speckle decorrelation
    speckle_sigma: tuple[float, float]  # (axial y, lateral x) px grain
    blur: float  # px, point-spread blur of the tissue map


def smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """A smooth random field (H, W) float32 with zero mean and unit std."""
    field = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def speckle(rng: np.random.Generator, size: int, n_frames: int, look: Appearance) -> np.ndarray:
    """Rayleigh speckle (T, H, W) with mean 1 that decorrelates slowly from frame to frame."""
    sy, sx = look.speckle_sigma
    fields = []
    for _ in range(2):
        z = rng.standard_normal((2, size, size)).astype(np.float32)
        z = np.stack([cv2.GaussianBlur(p, (0, 0), sigmaX=sx, sigmaY=sy) for p in z])
        fields.append((z[0] + 1j * z[1]) / np.sqrt(2.0 * np.mean(z**2)))
    phase = np.cumsum(rng.uniform(0.5, 1.5, n_frames) * look.speckle_step)
    mix = (np.cos(phase)[:, None, None] * fields[0][None]
           + np.sin(phase)[:, None, None] * fields[1][None])
    return (np.abs(mix) / RAYLEIGH_MEAN).astype(np.float32)


def leaflet_segments(ventricle: Ventricle, c: np.ndarray, openness: np.ndarray) -> np.ndarray:
    """Two leaflets (T, 2, 2, 2) hinged at the annulus: closed across it, open into the cavity."""
    left, right = ventricle.annulus(c)
    u, n = ventricle.axes
    mid = 0.5 * (left + right)
    half = 0.5 * np.linalg.norm(right - left, axis=1)[:, None]
    o = openness[:, None]
    segments = []
    for hinge, side in ((left, 1.0), (right, -1.0)):
        closed = mid + 0.15 * half * u
        opened = hinge + half * (-0.95 * u + side * 0.3 * n)
        segments.append(np.stack([hinge, closed + o * (opened - closed)], axis=1))
    return np.stack(segments, axis=1)


def valve_channel(ventricle: Ventricle, atrium: Atrium, c: np.ndarray,
                  openness: np.ndarray) -> np.ndarray:
    """Quad (T, 4, 2) joining the ventricle to its atrium through the open valve."""
    left, right = ventricle.annulus(c)
    u, _ = ventricle.axes
    mid = 0.5 * (left + right)
    o = (0.8 * openness)[:, None]
    a, b = mid + o * (left - mid), mid + o * (right - mid)
    step = (atrium.gap + 1.5) * u
    return np.stack([a, b, b + step, a + step], axis=1)


def _fill(polygons: list[np.ndarray], size: int) -> np.ndarray:
    """uint8 (H, W) mask of filled polygons (xy float coordinates)."""
    out = np.zeros((size, size), np.uint8)
    pts = [np.round(p * SHIFT).astype(np.int32) for p in polygons]
    cv2.fillPoly(out, pts, 1, lineType=cv2.LINE_8, shift=SHIFT_BITS)
    return out


def render(
    rng: np.random.Generator,
    cavities: list[list[np.ndarray]],
    leaflets: np.ndarray,
    c: np.ndarray,
    lv_masks: np.ndarray,
    look: Appearance,
    sector: Sector,
) -> np.ndarray:
    """Grey frames (T, H, W) uint8 from per-frame cavity polygons, LV masks and leaflets."""
    n_frames, size = lv_masks.shape[0], lv_masks.shape[1]
    background = look.background * np.clip(
        1 + BACKGROUND_TEXTURE * smooth_field(rng, size, TEXTURE_SIGMA), 0.1, None)
    wall = look.wall * np.clip(1 + WALL_TEXTURE * smooth_field(rng, size, TEXTURE_SIGMA), 0.2,
                               None)
    r, _ = sector.polar(size)
    haze = look.clutter * np.exp(-r / (CLUTTER_DEPTH * sector.radius))
    depth_gain = look.gain * np.exp(-look.attenuation * r / sector.radius)
    inside = sector.mask(size)
    spk = speckle(rng, size, n_frames, look)
    noise = rng.standard_normal((n_frames, size, size), dtype=np.float32) * look.noise
    out = np.empty((n_frames, size, size), np.uint8)
    for t in range(n_frames):
        cavity = np.maximum(_fill(cavities[t], size), lv_masks[t])
        dist = cv2.distanceTransform((cavity == 0).astype(np.uint8), cv2.DIST_L2, 3)
        thick = look.wall_thickness * (1 + look.thickening * c[t])
        band = 1.0 / (1.0 + np.exp((dist - thick) / WALL_SOFTNESS))
        tissue = np.where(cavity > 0, look.blood, background + (wall - background) * band)
        tissue = tissue.astype(np.float32)
        for seg in leaflets[t].reshape(-1, 2, 2):
            p0, p1 = (tuple(int(v) for v in np.round(p * SHIFT)) for p in seg)
            cv2.line(tissue, p0, p1, float(look.wall * LEAFLET_BRIGHTNESS), 1, cv2.LINE_8,
                     SHIFT_BITS)
        tissue = cv2.GaussianBlur(tissue, (0, 0), look.blur)
        echo = ((tissue + haze) * spk[t]) ** look.gamma * depth_gain + noise[t]
        out[t] = np.where(inside, np.clip(echo * 255.0, 0, 255), 0).astype(np.uint8)
    return out
