"""Synthetic right-ventricular-failure echo cohorts: A4C phantoms as DICOMs with planted PHI.

The class lives in how the RV free wall (the RV's lateral wall, left in the image) moves:
normal ("noRVF") free walls move inward and towards the apex with the septum; RVF free walls
are hypokinetic ("reduced"), contract late ("delayed") or bulge outward in systole
("dyskinetic"). Everything else (LV function, RV size at end diastole, rhythm, appearance) is
drawn from the same distributions in both classes, so a single frame says little and the
motion over time (and in optical flow) says much.

`synth_rvf_cohort` writes, under `out`: multi-frame US DICOMs in nested folders (some folder
names hold the fake patient name), classes.csv (id,class), splits.csv (id,split),
truth.csv (per video: study id, class, motion, RV metrics) and phi_planted.json (every PHI-like
value written, for tests). Defects on purpose: a DICOM without PatientID, a video with no
label, a label with no video, a patient with two videos of different classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skimage.draw

from cinelab.errors import InputError
from cinelab.synth import echo_phantom as ph
from cinelab.synth.dicom import write_ultrasound_dicom
from cinelab.synth.echo import (
    DEPTH_MM_RANGE,
    REFERENCE_SIZE,
    SYSTOLE_RANGE_S,
    draw_appearance,
    draw_heart,
    draw_sector,
)
from cinelab.utils import atomic_path

RVF_CLASS, NORMAL_CLASS = "RVF", "noRVF"
MOTIONS = ("reduced", "delayed", "dyskinetic")
FPS_RANGE = (25, 35)
HEART_RATE_RANGE = (65.0, 100.0)  # bpm
RR_JITTER, AMPLITUDE_JITTER = 0.03, 0.03
LV_EF_RANGE = (12.0, 30.0)  # LVAD candidates: severely reduced LV function in both classes
FREE_SHORTEN_RANGE = (0.16, 0.24)  # normal free-wall long-axis shortening (TAPSE-like)
FREE_NARROW_RANGE = (0.35, 0.5)  # normal free-wall inward motion, fraction of half-width
REDUCED_FACTOR = (0.0, 0.25)  # hypokinetic: fraction of normal motion kept
DELAY_S = (0.16, 0.26)  # delayed: free wall contracts this much later than the septum
DELAYED_FACTOR = (0.5, 0.8)
MAX_DELAY_S = max(DELAY_S)
DYSKINETIC_OUTWARD = (0.5, 0.9)  # outward motion, fraction of normal inward narrowing
DYSKINETIC_SHORTEN = (0.0, 0.3)
FREE_WALL_SPAN = (0.25, 0.95)  # part of the free wall (0 apex, 1 annulus) kept in the fan
WALL_MARGIN_PX = 3.0  # beyond the myocardium, at 112 px
MAX_SHIFT = 0.12  # of the frame width
FREE_WALL_LEVEL = 0.6  # where along the RV (0 apex, 1 annulus) free-wall motion is measured
SPLIT_SHARES = (("train", 0.7), ("val", 0.15), ("test", 0.15))
ID_FORMAT = "REDCAP-{:04d}"
DEFECT_IDS = {"unlabeled": 9001, "label_without_video": 9002, "two_classes": 9003}
SYLLABLES = ("zor", "quil", "vex", "bran", "thal", "mirk", "dov", "yel", "krat", "fen",
             "wisp", "gorm", "lun", "phex", "trav", "olm", "jand", "vorn", "zelt", "brug")
HOSPITALS = ("Quillmere General Infirmary", "Saint Vorneth Cardiac Institute",
             "Brantholm University Hospital", "Yelwick Heart Centre")


@dataclass(frozen=True)
class _Annulus:
    """What atria, valves and leaflets read from a ventricle: precomputed annulus points."""

    left: np.ndarray  # (T, 2)
    right: np.ndarray
    axes: tuple[np.ndarray, np.ndarray]

    def annulus(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.left, self.right


def _free_wall(rng: np.random.Generator, rv: ph.Ventricle, motion: str
               ) -> tuple[ph.Ventricle, ph.Ventricle, float]:
    """(septal-side RV, free-wall RV, free-wall delay in s) for a motion type.

    Draws the same numbers whatever the motion, so one seed gives one heart in every class.
    """
    if motion not in ("normal", *MOTIONS):
        raise InputError(None, "motion", f"normal or one of {MOTIONS}", repr(motion))
    shorten, narrow = rng.uniform(*FREE_SHORTEN_RANGE), rng.uniform(*FREE_NARROW_RANGE)
    draws = {"reduced": (0.0, rng.uniform(*REDUCED_FACTOR), 0.0),
             "delayed": (rng.uniform(*DELAY_S), rng.uniform(*DELAYED_FACTOR), 0.0),
             "dyskinetic": (0.0, rng.uniform(*DYSKINETIC_SHORTEN),
                            rng.uniform(*DYSKINETIC_OUTWARD))}
    delay, factor, outward = draws.get(motion, (0.0, 1.0, 0.0))
    free_narrow = -outward * narrow if outward else factor * narrow
    septal = replace(rv, shorten=float(shorten))
    free = replace(rv, shorten=float(factor * shorten), narrow=float(free_narrow))
    return septal, free, float(delay)


def _inside_sector(lv: ph.Ventricle, rv: ph.Ventricle, sector: ph.Sector, margin: float,
                   max_shift: float) -> tuple[ph.Ventricle, ph.Ventricle]:
    """Both ventricles moved right (at most `max_shift` px) so that the RV free wall and its
    myocardium lie inside the fan: the class must be visible in every video."""
    wall, _ = rv.sides(np.zeros(1), np.linspace(*FREE_WALL_SPAN, ph.CONTOUR_POINTS))
    x, y = wall[0, :, 0], wall[0, :, 1]
    edge = sector.apex_x - (y - sector.apex_y) * np.tan(sector.half_angle)
    shift = float(np.clip(np.max(edge + margin - x), 0.0, max_shift))
    if shift == 0.0:
        return lv, rv
    return (replace(lv, apex=(lv.apex[0] + shift, lv.apex[1])),
            replace(rv, apex=(rv.apex[0] + shift, rv.apex[1])))


def _polygon_masks(contours: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W) masks from (T, M, 2) xy contours."""
    masks = np.zeros((len(contours), size, size), np.uint8)
    for t, xy in enumerate(contours):
        rr, cc = skimage.draw.polygon(xy[:, 1], xy[:, 0], shape=(size, size))
        masks[t, rr, cc] = 1
    return masks


def _area(contour: np.ndarray) -> np.ndarray:
    """Shoelace areas (T,) of (T, M, 2) closed contours, px^2."""
    x, y = contour[..., 0], contour[..., 1]
    return 0.5 * np.abs(np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1))


def rvf_phantom_video(rng: np.random.Generator, motion: str = "normal", size: int = 112,
                      n_frames: int = 48, fps: float | None = None
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """One A4C phantom (T, H, W) uint8 whose RV free wall moves as `motion`, and its truth
    (motion, delay, RV area at ED, FAC, free-wall motion and TAPSE in px, fps, sector)."""
    fps = float(rng.integers(FPS_RANGE[0], FPS_RANGE[1] + 1)) if fps is None else float(fps)
    rhythm = ph.draw_rhythm(rng, heart_rate=rng.uniform(*HEART_RATE_RANGE),
                            duration=n_frames / fps + MAX_DELAY_S,
                            systole_s=rng.uniform(*SYSTOLE_RANGE_S), rr_jitter=RR_JITTER,
                            amplitude_jitter=AMPLITUDE_JITTER)
    times = np.arange(n_frames) / fps + MAX_DELAY_S
    c, openness = ph.contraction(times, rhythm), ph.valve_openness(times, rhythm)
    ef = float(rng.uniform(*LV_EF_RANGE))
    lv, rv, la, ra = draw_heart(rng, size, ef)
    sector, look = draw_sector(rng, size), draw_appearance(rng, size)
    lv, rv = _inside_sector(lv, rv, sector, look.wall_thickness + WALL_MARGIN_PX * size
                            / REFERENCE_SIZE, MAX_SHIFT * size)
    septal, free, delay = _free_wall(rng, rv, motion)
    c_free = ph.contraction(times - delay, rhythm)
    s = np.linspace(0.0, 1.0, ph.CONTOUR_POINTS)
    left, _ = free.sides(c_free, s)
    _, right = septal.sides(c, s)
    rv_contour = np.concatenate([left, right[:, ::-1]], axis=1)
    rv_ring = _Annulus(left[:, -1], right[:, -1], rv.axes)
    lv_masks = _polygon_masks(lv.contour(c), size)
    la_c, ra_c = la.contour(lv, c), ra.contour(rv_ring, c)  # type: ignore[arg-type]
    channels = (ph.valve_channel(lv, la, c, openness),
                ph.valve_channel(rv_ring, ra, c, openness))  # type: ignore[arg-type]
    cavities = [[rv_contour[t], la_c[t], ra_c[t], channels[0][t], channels[1][t]]
                for t in range(n_frames)]
    leaflets = np.concatenate([ph.leaflet_segments(lv, c, openness),
                               ph.leaflet_segments(rv_ring, c, openness)],  # type: ignore
                              axis=1)
    frames = ph.render(rng, cavities, leaflets, c, lv_masks, look, sector)
    truth = _rv_truth(rv_contour, free, c_free, c, motion, delay)
    truth.update(fps=fps, lv_ef=ef, pixel_size_mm=float(rng.uniform(*DEPTH_MM_RANGE)
                                                          / sector.radius))
    truth["region"] = sector.region(size)
    return frames, truth


def _rv_truth(contour: np.ndarray, free: ph.Ventricle, c_free: np.ndarray, c: np.ndarray,
              motion: str, delay: float) -> dict:
    """RV area at ED, fractional area change, free-wall inward/outward motion, TAPSE (px)."""
    area = _area(contour)
    ed = int(np.argmin(c))
    level = np.array([FREE_WALL_LEVEL, 1.0])
    rest, _ = free.sides(np.zeros(1), level)
    wall, _ = free.sides(c_free, level)
    u, n = free.axes
    inward = (wall[:, 0] - rest[:, 0]) @ n  # the free wall is on the -n side
    tapse = (rest[:, 1] - wall[:, 1]) @ u  # the lateral annulus moves towards the apex
    return {"motion": motion, "delay_s": delay, "rv_area_ed_px": float(area[ed]),
            "free_wall_x": float(rest[0, 0, 0]), "free_wall_y": float(rest[0, 0, 1]),
            "rv_fac": float((area.max() - area.min()) / area.max()),
            "free_wall_inward_px": float(max(inward.max(), 0.0)),
            "free_wall_outward_px": float(max(-inward.min(), 0.0)),
            "tapse_px": float(max(tapse.max(), 0.0))}


def _fake_name(rng: np.random.Generator, taken: set[str]) -> tuple[str, str]:
    """(family, given): made-up names that cannot occur in real or generated data by chance."""
    while True:
        family = "".join(rng.choice(SYLLABLES, 3)).capitalize()
        given = "".join(rng.choice(SYLLABLES, 2)).capitalize()
        if family not in taken and given not in taken and len({family, given}) == 2:
            taken.update((family, given))
            return family, given


def _date(rng: np.random.Generator, years: tuple[int, int]) -> str:
    """A DICOM DA value YYYYMMDD."""
    return f"{rng.integers(*years)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"


def _patient_phi(rng: np.random.Generator, taken: set[str]) -> dict[str, str]:
    family, given = _fake_name(rng, taken)
    return {"PatientName": f"{family}^{given}", "PatientBirthDate": _date(rng, (1940, 1986)),
            "InstitutionName": str(rng.choice(HOSPITALS)), "family": family, "given": given}


def _video_phi(rng: np.random.Generator, patient: dict[str, str]) -> dict[str, str]:
    tags = {k: patient[k] for k in ("PatientName", "PatientBirthDate", "InstitutionName")}
    tags.update(AccessionNumber=f"ACC{rng.integers(10**7, 10**8)}",
                DeviceSerialNumber=f"USX{rng.integers(10**6, 10**7)}K",
                StudyDate=_date(rng, (2014, 2023)))
    return tags


def _folder(i: int, study_id: str, patient: dict[str, str], k: int) -> str:
    """Nested relative path; some folder names carry the patient's name or birth date."""
    site = f"site_{'ABC'[i % 3]}"
    if i % 3 == 0:
        return f"{site}/{patient['family']}_{patient['given']}/echo_{k}.dcm"
    if i % 3 == 1:
        return f"{site}/export/{study_id}/IM{k:04d}"
    return f"{site}/{patient['PatientName']}_{patient['PatientBirthDate']}/A4C/series{k}.dcm"


def _splits(rng: np.random.Generator, classes: dict[str, str]) -> dict[str, str]:
    """train/val/test by patient, stratified by class."""
    out = {}
    for name in (NORMAL_CLASS, RVF_CLASS):
        ids = [s for s, c in classes.items() if c == name]
        ids = [ids[j] for j in rng.permutation(len(ids))]
        n_val = int(round(len(ids) * SPLIT_SHARES[1][1]))
        n_test = int(round(len(ids) * SPLIT_SHARES[2][1]))
        for j, sid in enumerate(ids):
            out[sid] = "val" if j < n_val else "test" if j < n_val + n_test else "train"
    return out


def _plan(rng: np.random.Generator, n: int, positive_fraction: float,
          multi_video_fraction: float) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Videos as (study id, class, motion) and the class of every labelled patient."""
    numbers = np.sort(rng.choice(np.arange(1, 9 * max(n, 1) + 1), n, replace=False))
    ids = [ID_FORMAT.format(int(v)) for v in numbers]
    positive = set(rng.permutation(n)[: int(round(n * positive_fraction))].tolist())
    classes = {sid: RVF_CLASS if i in positive else NORMAL_CLASS for i, sid in enumerate(ids)}
    twice = set(rng.permutation(n)[: int(round(n * multi_video_fraction))].tolist())
    videos = []
    for i, sid in enumerate(ids):
        for _ in range(2 if i in twice else 1):
            motion = str(rng.choice(MOTIONS)) if classes[sid] == RVF_CLASS else "normal"
            videos.append((sid, classes[sid], motion))
    two = ID_FORMAT.format(DEFECT_IDS["two_classes"])
    videos += [(two, RVF_CLASS, str(rng.choice(MOTIONS))), (two, NORMAL_CLASS, "normal"),
               (ID_FORMAT.format(DEFECT_IDS["unlabeled"]), NORMAL_CLASS, "normal"),
               ("", RVF_CLASS, str(rng.choice(MOTIONS)))]  # the DICOM without PatientID
    return videos, classes


def synth_rvf_cohort(out: str | Path, n: int = 60, seed: int = 0, size: int = 112,
                     frames: int = 48, positive_fraction: float = 0.4,
                     multi_video_fraction: float = 0.1) -> Path:
    """Write a synthetic RVF cohort of `n` labelled patients (plus the defects) under `out`."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    videos, classes = _plan(rng, n, positive_fraction, multi_video_fraction)
    taken: set[str] = set()
    patients = {sid: _patient_phi(rng, taken) for sid in dict.fromkeys(v[0] for v in videos)}
    files, truth_rows, counts = {}, [], {}
    children = np.random.SeedSequence(seed).spawn(len(videos))
    for i, ((sid, name, motion), child) in enumerate(zip(videos, children, strict=True)):
        vrng = np.random.default_rng(child)
        k = counts[sid] = counts.get(sid, -1) + 1
        rel = _folder(i, sid or "unknown", patients[sid], k)
        if not sid:
            rel = f"unsorted/{patients[sid]['family']}_{patients[sid]['given']}/scan.dcm"
        tags = _video_phi(vrng, patients[sid])
        video, truth = rvf_phantom_video(vrng, motion, size, frames)
        spacing = (truth["pixel_size_mm"],) * 2
        write_ultrasound_dicom(out / rel, video, truth["fps"], sid, pixel_spacing_mm=spacing,
                               region=truth.pop("region"), **tags)
        files[rel] = dict(tags, study_id=sid)
        truth_rows.append({"study_id": sid, "file": rel, "class": name, **truth})
    _write_tables(out, rng, classes, truth_rows)
    _write_planted(out, patients, files)
    return out


def _write_tables(out: Path, rng: np.random.Generator, classes: dict[str, str],
                  truth_rows: list[dict]) -> None:
    """classes.csv, splits.csv (with the defects) and truth.csv."""
    two = ID_FORMAT.format(DEFECT_IDS["two_classes"])
    no_video = ID_FORMAT.format(DEFECT_IDS["label_without_video"])
    unlabeled = ID_FORMAT.format(DEFECT_IDS["unlabeled"])
    rows = list(classes.items()) + [(two, RVF_CLASS), (no_video, RVF_CLASS),
                                    (two, NORMAL_CLASS)]
    splits = _splits(rng, classes)
    splits.update({two: "train", no_video: "train", unlabeled: "test"})
    for name, table in (("classes.csv", pd.DataFrame(rows, columns=["id", "class"])),
                        ("splits.csv", pd.DataFrame(sorted(splits.items()),
                                                    columns=["id", "split"])),
                        ("truth.csv", pd.DataFrame(truth_rows))):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)


def _write_planted(out: Path, patients: dict[str, dict[str, str]],
                   files: dict[str, dict[str, str]]) -> None:
    """phi_planted.json: every PHI-like value written (and date variants), ids and defects."""
    values: set[str] = set()
    for tags in files.values():
        values.update(v for k, v in tags.items() if k != "study_id")
    for p in patients.values():
        values.update((p["family"], p["given"]))
    for date in [v for v in values if v.isdigit() and len(v) == 8]:
        values.add(f"{date[:4]}-{date[4:6]}-{date[6:]}")
    for rel in files:
        values.update(part for part in Path(rel).parts[1:-1] if any(
            p["family"] in part for p in patients.values()))
    planted = {
        "values": sorted(values), "files": files,
        "study_ids": sorted(s for s in patients if s),
        "defects": {"no_patient_id": next(r for r, t in files.items() if not t["study_id"]),
                    **{k: ID_FORMAT.format(v) for k, v in DEFECT_IDS.items()}},
    }
    with atomic_path(out / "phi_planted.json") as tmp:
        tmp.write_text(json.dumps(planted, indent=2, sort_keys=True))
