"""Synthetic chest X-ray cohorts with known truth, in the DeepCOVID-XR and NIH layouts.

Each radiograph is drawn in a canonical frame (unit coordinates, x right, y down; the
patient's right lung on the image left): body and neck, two lung fields with domed bases and
costophrenic angles, lung markings, heart, spine with disc spaces, posterior ribs, clavicles,
gastric bubble; then findings; then positioning (rotation/scale/shift), exposure (gamma,
gain, offset), blur and noise. The lung mask (lung polygons minus the heart, as manual lung
masks are drawn) goes through the same positioning.

Positives ("covid") carry patchy, bilateral, peripheral, mostly lower-zone opacities.
Negatives are clear or carry another finding (a nodule, cardiomegaly, a unilateral effusion,
a unilateral upper/mid-zone consolidation), and some positives carry an incidental one, so
"any opacity" is not the rule to learn. The NIH variant draws any of the 14 ChestX-ray14
findings (simple stand-ins, see FINDING_DRAWERS) with several images per patient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.pipelines.cxr.nih import NIH_FINDINGS, findings_text, patient_split
from cinelab.utils import read_json, write_csv, write_json

LAYOUTS = ("folders", "nih")
SPLIT_FOLDERS = {"train": "Train", "val": "Validation", "test": "Test"}
LABEL_FOLDERS = {1: "Positive", 0: "Negative"}
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
IMAGES_PER_PATIENT = {"folders": (1, 2), "nih": (1, 4)}
NEGATIVE_KINDS = {"clear": 0.45, "nodule": 0.15, "cardiomegaly": 0.15, "effusion": 0.15,
                  "consolidation": 0.10}
INCIDENTAL = {"probability": 0.15, "kinds": ("nodule", "cardiomegaly")}
NIH_NO_FINDING = 0.45
NIH_MAX_FINDINGS = 3
AP_FRACTION = 0.2
AIR, SOFT = 0.04, 0.55  # attenuation of air and of soft tissue, canvas units
ROTATION_DEG, SCALE, SHIFT = 4.0, (0.92, 1.04), (0.04, 0.03)
GAMMA, GAIN, OFFSET, NOISE = (0.75, 1.35), (0.85, 1.1), (-0.05, 0.08), (0.008, 0.025)
MASK_DIR = "masks"
HEART_TILT_DEG = -22
PIPELINE_SIZE = 128  # px of `synth_cohort` (the demo recipes work at 96 px and below)


@dataclass(frozen=True)
class Anatomy:
    """One patient's thorax in unit coordinates (fractions of the image side)."""

    top: float  # lung apices
    dome: float  # right hemidiaphragm dome (the left sits `left_drop` lower)
    left_drop: float
    cp_depth: float  # costophrenic angles below the dome
    lateral: float  # lung lateral border, from the midline
    medial: float  # lung medial border, from the midline
    heart_w: float  # heart semi-axes
    heart_h: float
    lung_density: float
    rib_gap: float


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """A plausible adult thorax."""
    return Anatomy(top=rng.uniform(0.12, 0.17), dome=rng.uniform(0.64, 0.72),
                   left_drop=rng.uniform(0.01, 0.03), cp_depth=rng.uniform(0.06, 0.09),
                   lateral=rng.uniform(0.35, 0.40), medial=rng.uniform(0.045, 0.065),
                   heart_w=rng.uniform(0.165, 0.19), heart_h=rng.uniform(0.12, 0.14),
                   lung_density=rng.uniform(0.16, 0.28), rib_gap=rng.uniform(0.052, 0.06))


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)


def _pts(xy: np.ndarray, size: int) -> np.ndarray:
    return np.round(np.asarray(xy) * size).astype(np.int32).reshape(-1, 1, 2)


def lung_polygon(a: Anatomy, side: int, n: int = 24) -> np.ndarray:
    """(N, 2) unit (x, y) outline of one lung; side -1 = image left (patient's right)."""
    dome = a.dome + (a.left_drop if side > 0 else 0.0)
    x_med, x_lat = 0.5 + side * a.medial, 0.5 + side * a.lateral
    x_apex = x_med + side * 0.35 * (a.lateral - a.medial)
    y_cp, t = dome + a.cp_depth, np.linspace(0.0, 1.0, n)
    lat = np.c_[x_apex + (x_lat - x_apex) * np.sin(np.pi / 2 * np.minimum(t / 0.55, 1)) ** 0.8,
                a.top + (y_cp - a.top) * t]
    u = np.linspace(0.0, 1.0, n)
    base_y = np.where(u < 0.45, dome + a.cp_depth * ((u - 0.45) / 0.45) ** 2,
                      dome + 0.3 * a.cp_depth * ((u - 0.45) / 0.55) ** 2)
    base = np.c_[x_lat + (x_med - x_lat) * u, base_y]
    s = np.linspace(1.0, 0.0, n)
    med = np.c_[x_apex + (x_med - x_apex) * np.sin(np.pi / 2 * np.minimum(s / 0.3, 1)),
                a.top + (base_y[-1] - a.top) * s]
    return np.concatenate([lat, base, med])


def _heart(a: Anatomy, size: int, fill: float = 1.0) -> np.ndarray:
    layer = np.zeros((size, size), np.float32)
    centre = (int(round((0.5 + 0.3 * a.heart_w) * size)),
              int(round((a.dome - 0.3 * a.heart_h) * size)))
    axes = (int(round(a.heart_w * size)), int(round(a.heart_h * size)))
    cv2.ellipse(layer, centre, axes, HEART_TILT_DEG, 0, 360, fill, -1)
    return layer


def _blob(size: int, x: float, y: float, sx: float, sy: float | None = None,
          angle: float = 0.0) -> np.ndarray:
    """An anisotropic Gaussian (unit peak) at unit coordinates."""
    gx, gy = _grid(size)
    dx, dy = gx - x, gy - y
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    sy = sx if sy is None else sy
    return np.exp(-(u**2 / (2 * sx**2) + v**2 / (2 * sy**2))).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


def _cloud(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1] with `cells` blobs across."""
    small = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC) / 1.5, -1, 1)


@dataclass
class Canvas:
    """What finding drawers need: the image, the soft lungs, geometry and the random source."""

    image: np.ndarray
    lungs: dict[int, np.ndarray]  # side -> soft lung layer
    anatomy: Anatomy
    rng: np.random.Generator
    size: int

    def zone(self, side: int, f: float, g: float) -> tuple[float, float]:
        """Unit (x, y) at lateral fraction f (0 medial, 1 lateral) and height g (0 apex)."""
        a = self.anatomy
        return 0.5 + side * (a.medial + f * (a.lateral - a.medial)), a.top + g * (a.dome - a.top)

    def add(self, layer: np.ndarray, amplitude: float, side: int | None = None) -> None:
        """Add a layer inside the lungs (one side, or both)."""
        lung = self.lungs[side] if side is not None else self.lungs[-1] + self.lungs[1]
        self.image += amplitude * layer * lung

    def patches(self, spec: PatchSpec) -> None:
        """Textured opacities as `spec` says, alternating sides when bilateral."""
        first = int(self.rng.choice([-1, 1]))
        sides = [first, -first] if spec.bilateral else [first]
        cloud = _cloud(self.rng, self.size, 12)
        texture = np.clip(1.0 - spec.patchy * 0.5 + spec.patchy * cloud, 0.0, None)
        for i in range(int(self.rng.integers(*spec.count))):
            side = sides[i % len(sides)]
            x, y = self.zone(side, self.rng.uniform(*spec.f), self.rng.uniform(*spec.g))
            env = _blob(self.size, x, y, self.rng.uniform(*spec.sigma),
                        self.rng.uniform(*spec.sigma))
            self.add(env * texture, self.rng.uniform(*spec.amplitude), side)

    def one_side(self) -> int:
        """-1 or +1."""
        return int(self.rng.choice([-1, 1]))


@dataclass(frozen=True)
class PatchSpec:
    """Opacities drawn as Gaussian patches: how many (half-open range), where (lateral
    fraction f, height g in the lung), how large and dense, how patchy (0 = smooth)."""

    count: tuple[int, int]
    bilateral: bool
    f: tuple[float, float]
    g: tuple[float, float]
    sigma: tuple[float, float]
    amplitude: tuple[float, float]
    patchy: float


PATCH_FINDINGS = {  # covid: patchy, bilateral, peripheral, mostly lower-zone ground glass
    "covid": PatchSpec((3, 8), True, (0.55, 0.95), (0.45, 0.95), (0.04, 0.075), (0.1, 0.26),
                       0.9),
    "consolidation": PatchSpec((1, 3), False, (0.2, 0.8), (0.15, 0.55), (0.05, 0.08),
                               (0.18, 0.3), 0.4),  # unilateral, upper/mid, denser, smoother
    "pneumonia": PatchSpec((1, 3), False, (0.3, 0.8), (0.55, 0.9), (0.04, 0.06),
                           (0.15, 0.25), 0.6),
    "infiltration": PatchSpec((2, 6), True, (0.2, 0.9), (0.2, 0.9), (0.03, 0.06),
                              (0.08, 0.16), 0.9),
    "edema": PatchSpec((2, 3), True, (0.05, 0.3), (0.35, 0.6), (0.07, 0.1), (0.12, 0.2),
                       0.3),  # perihilar haze
    "nodule": PatchSpec((1, 2), False, (0.2, 0.8), (0.2, 0.8), (0.01, 0.018), (0.25, 0.4),
                        0.0),
    "mass": PatchSpec((1, 2), False, (0.3, 0.7), (0.25, 0.7), (0.03, 0.045), (0.3, 0.4), 0.0),
}


def _effusion(c: Canvas) -> None:
    """Unilateral basal fluid with a meniscus (higher laterally)."""
    side = c.one_side()
    gx, gy = _grid(c.size)
    a = c.anatomy
    level = a.dome - c.rng.uniform(0.1, 0.3) * (a.dome - a.top)
    lateral = np.clip(side * (gx - 0.5) / a.lateral, 0.0, 1.0)
    fluid = _sigmoid((gy - (level - 0.06 * lateral**2)) / 0.01)
    c.add(fluid, c.rng.uniform(0.3, 0.4), side)


def _atelectasis(c: Canvas) -> None:
    """A plate-like band in a lower zone."""
    side = c.one_side()
    x, y = c.zone(side, c.rng.uniform(0.3, 0.7), c.rng.uniform(0.6, 0.85))
    band = _blob(c.size, x, y, c.rng.uniform(0.06, 0.1), 0.008, c.rng.uniform(-0.3, 0.3))
    c.add(band, c.rng.uniform(0.25, 0.35), side)


def _pneumothorax(c: Canvas) -> None:
    """A lucent lateral rim without markings, edged by the visceral pleural line."""
    side = c.one_side()
    gx, _ = _grid(c.size)
    edge = 0.5 + side * (c.anatomy.lateral - c.rng.uniform(0.04, 0.08))
    rim = _sigmoid(side * (gx - edge) / 0.004)
    line = np.exp(-((gx - edge) ** 2) / (2 * 0.003**2))
    c.add(rim, -0.15, side)
    c.add(line, 0.2, side)


def _fibrosis(c: Canvas) -> None:
    """Peripheral basal reticulation on both sides."""
    reticular = np.abs(_cloud(c.rng, c.size, 40))
    for side in (-1, 1):
        x, y = c.zone(side, 0.8, 0.75)
        c.add(_blob(c.size, x, y, 0.08, 0.12) * (reticular > 0.5), 0.12, side)


def _pleural_thickening(c: Canvas) -> None:
    side = c.one_side()
    x, y = c.zone(side, 0.97, c.rng.uniform(0.3, 0.7))
    c.add(_blob(c.size, x, y, 0.012, 0.12), c.rng.uniform(0.2, 0.3), side)


def _hernia(c: Canvas) -> None:
    """A retrocardiac gas bubble (hiatus hernia)."""
    a = c.anatomy
    c.image += -0.25 * _blob(c.size, 0.51, a.dome - 0.05, 0.035, 0.028)


FindingDrawer = Callable[[Canvas], None]
FINDING_DRAWERS: dict[str, FindingDrawer] = {  # cardiomegaly, emphysema: _shape_findings
    "effusion": _effusion, "cardiomegaly": lambda c: None, "emphysema": lambda c: None,
    "atelectasis": _atelectasis, "pneumothorax": _pneumothorax, "fibrosis": _fibrosis,
    "pleural_thickening": _pleural_thickening, "hernia": _hernia,
    **{name: (lambda c, spec=spec: c.patches(spec)) for name, spec in PATCH_FINDINGS.items()},
}


def _shape_findings(a: Anatomy, findings: tuple[str, ...], view: str) -> Anatomy:
    """Findings and views that change the anatomy itself."""
    if "cardiomegaly" in findings:
        a = replace(a, heart_w=a.heart_w * 1.38, heart_h=a.heart_h * 1.12)
    if "emphysema" in findings:
        a = replace(a, dome=a.dome + 0.04, lung_density=a.lung_density - 0.07)
    if view == "AP":  # the heart is magnified, far from the detector
        a = replace(a, heart_w=a.heart_w * 1.06)
    return a


def _draw_body(c: Canvas, a: Anatomy) -> None:
    s, img = c.size, c.image
    cv2.ellipse(img, (s // 2, int(0.62 * s)), (int(0.47 * s), int(0.58 * s)), 0, 0, 360,
                SOFT, -1)
    cv2.ellipse(img, (s // 2, int(0.22 * s)), (int(0.49 * s), int(0.12 * s)), 0, 0, 360,
                SOFT, -1)  # shoulders
    cv2.rectangle(img, (int(0.41 * s), 0), (int(0.59 * s), int(0.2 * s)), SOFT, -1)
    lung_sum = c.lungs[-1] + c.lungs[1]
    img -= (SOFT - a.lung_density) * lung_sum
    img += 0.035 * _cloud(c.rng, s, 20) * lung_sum  # vascular markings
    below_diaphragm = _sigmoid((_grid(s)[1] - a.dome - a.left_drop) / 0.01)
    img += 0.2 * cv2.GaussianBlur(_heart(a, s), (0, 0), s / 100) * (1.0 - below_diaphragm)
    img -= 0.2 * _blob(s, 0.62, a.dome + a.left_drop + 0.06, 0.04, 0.025)  # gastric bubble


def _draw_bones(c: Canvas, a: Anatomy) -> None:
    s, gx, gy = c.size, *_grid(c.size)
    spine = (np.abs(gx - 0.5) < 0.035).astype(np.float32)
    discs = (np.sin(2 * np.pi * gy / a.rib_gap) > 0.85).astype(np.float32)
    c.image += cv2.GaussianBlur(spine * (0.09 - 0.04 * discs), (0, 0), s / 200)
    ribs = np.zeros((s, s), np.float32)
    for side in (-1, 1):
        for k in range(10):
            y0 = a.top - 0.03 + k * a.rib_gap
            dx = np.linspace(0.03, a.lateral + 0.03, 16)
            xy = np.c_[0.5 + side * dx, y0 - 0.35 * dx + 1.6 * dx**2]
            cv2.polylines(ribs, [_pts(xy, s)], False, 1.0, max(1, s // 64))
        clav = np.c_[0.5 + side * np.linspace(0.05, 0.3, 8), a.top + 0.02 - np.linspace(0, 0.06, 8)]
        cv2.polylines(ribs, [_pts(clav, s)], False, 1.6, max(1, s // 36))
    c.image += 0.045 * cv2.GaussianBlur(ribs, (0, 0), s / 200)


@dataclass(frozen=True)
class Acquisition:
    """Positioning and exposure of one radiograph."""

    matrix: np.ndarray  # 2x3 affine, canonical -> image pixels
    gamma: float
    gain: float
    offset: float
    blur: float  # Gaussian sigma, pixels
    noise: float  # noise standard deviation, 0-1 units
    noise_seed: int


def draw_acquisition(rng: np.random.Generator, size: int) -> Acquisition:
    """Rotation, scale, shift, gamma, gain, offset, blur and noise of one exposure."""
    m = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-ROTATION_DEG, ROTATION_DEG),
                                rng.uniform(*SCALE))
    m[:, 2] += rng.uniform(-1, 1, 2) * np.asarray(SHIFT) * size
    return Acquisition(m, rng.uniform(*GAMMA), rng.uniform(*GAIN), rng.uniform(*OFFSET),
                       rng.uniform(0.3, 0.9) * size / 256, rng.uniform(*NOISE),
                       int(rng.integers(2**31)))


def cxr_phantom(rng: np.random.Generator, size: int, anatomy: Anatomy,
                findings: tuple[str, ...] = (), view: str = "PA") -> tuple[np.ndarray, np.ndarray]:
    """One radiograph: uint8 (size, size) image and bool lung mask, positioned and exposed.

    The exposure and the background texture are drawn before the findings, so one seed with
    and without findings gives the same radiograph apart from the findings."""
    acquisition = draw_acquisition(rng, size)
    a = _shape_findings(anatomy, findings, view)
    hard = {side: np.zeros((size, size), np.float32) for side in (-1, 1)}
    for side, layer in hard.items():
        cv2.fillPoly(layer, [_pts(lung_polygon(a, side), size)], 1.0)
    soft = {k: cv2.GaussianBlur(v, (0, 0), size / 120) for k, v in hard.items()}
    canvas = Canvas(np.full((size, size), AIR, np.float32), soft, a, rng, size)
    _draw_body(canvas, a)
    _draw_bones(canvas, a)
    for name in findings:
        FINDING_DRAWERS[name](canvas)
    mask = ((hard[-1] + hard[1]) > 0) & (_heart(a, size) == 0)
    return _acquire(canvas.image, mask, acquisition)


def _acquire(image: np.ndarray, mask: np.ndarray,
             acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Positioning, exposure, blur and noise."""
    size = image.shape[0]
    image = cv2.warpAffine(image, acq.matrix, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=AIR)
    mask = cv2.warpAffine(mask.astype(np.uint8), acq.matrix, (size, size),
                          flags=cv2.INTER_NEAREST) > 0
    image = np.clip(image, 0.0, 1.0) ** acq.gamma * acq.gain + acq.offset
    image = cv2.GaussianBlur(image, (0, 0), acq.blur)
    noise = np.random.default_rng(acq.noise_seed).normal(0.0, acq.noise, image.shape)
    image += noise.astype(np.float32)
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), mask


def _folder_findings(rng: np.random.Generator, positive: bool) -> tuple[str, ...]:
    if positive:
        extra = rng.random() < INCIDENTAL["probability"]
        return ("covid", str(rng.choice(INCIDENTAL["kinds"]))) if extra else ("covid",)
    kind = str(rng.choice(list(NEGATIVE_KINDS), p=list(NEGATIVE_KINDS.values())))
    return () if kind == "clear" else (kind,)


def _nih_findings(rng: np.random.Generator) -> tuple[str, ...]:
    if rng.random() < NIH_NO_FINDING:
        return ()
    k = int(rng.integers(1, NIH_MAX_FINDINGS + 1))
    return tuple(str(f).lower() for f in rng.choice(NIH_FINDINGS, k, replace=False))


def synth_cxr_cohort(out: str | Path, n: int = 200, seed: int = 0, size: int = 256,
                     layout: str = "folders", positive_fraction: float = 0.5) -> Path:
    """Write n synthetic radiographs (+ lung masks) in the DeepCOVID-XR folder tree with a
    labels.csv, or in the NIH ChestX-ray14 layout; deterministic for a seed."""
    if layout not in LAYOUTS:
        raise InputError(None, "layout", f"one of {LAYOUTS}", repr(layout))
    out = Path(out)
    records = _records(n, seed, layout, positive_fraction)
    for rec in records:
        rng = np.random.default_rng([seed, rec["patient"], rec["visit"] + 1])
        image, mask = cxr_phantom(rng, size, rec["anatomy"], rec["findings"], rec["view"])
        path = out / rec["rel"]
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / MASK_DIR).mkdir(exist_ok=True)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        cv2.imwrite(str(path.parent / MASK_DIR / path.name), mask.astype(np.uint8) * 255,
                    [cv2.IMWRITE_PNG_COMPRESSION, 1])
    _write_tables(out, records, layout)
    write_json(out / "synth.json", {"generator": "cinelab.pipelines.cxr.synth", "n": n,
                                    "seed": seed, "size": size, "layout": layout,
                                    "positive_fraction": positive_fraction})
    return out


def _records(n: int, seed: int, layout: str, positive_fraction: float) -> list[dict]:
    """Patients (anatomy, label) and their images, up to n images, with patient-wise splits."""
    records: list[dict] = []
    patient = 0
    while len(records) < n:
        rng = np.random.default_rng([seed, patient])
        anatomy, positive = draw_anatomy(rng), bool(rng.random() < positive_fraction)
        lo, hi = IMAGES_PER_PATIENT[layout]
        for visit in range(min(int(rng.integers(lo, hi + 1)), n - len(records))):
            vr = np.random.default_rng([seed, patient, visit + 1, 0])
            findings = _folder_findings(vr, positive) if layout == "folders" else \
                _nih_findings(vr)
            records.append({"patient": patient, "visit": visit, "anatomy": anatomy,
                            "label": int(positive), "findings": findings,
                            "view": "AP" if vr.random() < AP_FRACTION else "PA"})
        patient += 1
    splits = patient_split([r["patient"] for r in records], SPLIT_FRACTIONS, seed)
    for r in records:
        r["split"] = splits[str(r["patient"])]
        name = f"P{r['patient']:05d}_{r['visit']:03d}.png"
        r["rel"] = (f"{SPLIT_FOLDERS[r['split']]}/{LABEL_FOLDERS[r['label']]}/{name}"
                    if layout == "folders" else f"images/{name}")
    return records


def _write_tables(out: Path, records: list[dict], layout: str) -> None:
    if layout == "folders":
        table = pd.DataFrame({"file": [r["rel"] for r in records],
                              "label": [r["label"] for r in records],
                              "split": [r["split"] for r in records],
                              "patient_id": [f"P{r['patient']:05d}" for r in records],
                              "view": [r["view"] for r in records],
                              "findings": ["|".join(r["findings"]) or "clear" for r in records]})
        write_csv(table, out / "labels.csv")
        return
    by_name = {f.lower(): f for f in NIH_FINDINGS}
    table = pd.DataFrame({
        "Image Index": [Path(r["rel"]).name for r in records],
        "Finding Labels": [findings_text({by_name[f]: 1 for f in r["findings"]})
                           for r in records],
        "Follow-up #": [r["visit"] for r in records],
        "Patient ID": [r["patient"] + 1 for r in records],
        "View Position": [r["view"] for r in records]})
    write_csv(table, out / "Data_Entry_2017.csv")
    for name, wanted in (("test_list.txt", True), ("train_val_list.txt", False)):
        names = [Path(r["rel"]).name for r in records if (r["split"] == "test") == wanted]
        (out / name).write_text("".join(f"{x}\n" for x in names))


def synth_cohort(out: str | Path, n: int = 200, seed: int = 0) -> Path:
    """The pipeline's synthetic cohort: the DeepCOVID-XR folder tree at `PIPELINE_SIZE` px
    (kept when the same cohort is already there)."""
    info = Path(out) / "synth.json"
    wanted = {"n": n, "seed": seed, "size": PIPELINE_SIZE, "layout": "folders"}
    if info.is_file() and {k: read_json(info).get(k) for k in wanted} == wanted:
        return Path(out)
    return synth_cxr_cohort(out, n=n, seed=seed, size=PIPELINE_SIZE)
