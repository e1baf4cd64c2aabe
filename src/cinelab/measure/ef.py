"""Ejection fraction from LV tracings (EchoNet-Dynamic conventions; coordinates in pixels).

A traced frame is an (N, 4) array of lines X1, Y1, X2, Y2 as in EchoNet's VolumeTracings.csv:
row 0 is the long axis (apex to mitral-annulus midpoint), rows 1.. are the disc chords
perpendicular to it.

`ef_from_tracings` validates each sample before measuring it (a failure is a Problem row,
the sample left out): coordinates finite and inside the frame (`frame_size`, with
COORD_TOLERANCE pixels of slack; without it inside 0..MAX_COORDINATE, so 1e9 is never
measured), frame numbers whole, >= 0 and inside the video (`n_frames`), at least
`min_chords` disc chords per traced frame, and a positive long axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import skimage.draw

from cinelab.errors import InputError, Problem

LINE_COLUMNS = ("X1", "Y1", "X2", "Y2")
TRACING_COLUMNS = ("sample_id", "frame", *LINE_COLUMNS)
TRACED_FRAMES_PER_SAMPLE = 2
MM3_PER_ML = 1000.0
PERCENT = 100.0
ECHONET_SUFFIX = ".avi"
EF_STAGE = "measure.ef"
MIN_CHORDS = 3  # fewer disc chords than this is not a method-of-discs tracing
MAX_COORDINATE = 4096.0  # pixels; no echo frame is larger (used when the frame size is unknown)
COORD_TOLERANCE = 1.0  # pixels outside the frame still accepted (rounding of traced points)


def check_tracing_lines(lines: np.ndarray, frame_size: tuple[int, int] | None = None,
                        min_chords: int = MIN_CHORDS, field: str = "lines") -> np.ndarray:
    """Lines as float (N, 4), checked: >= min_chords chords, coordinates inside the frame.

    `frame_size` is (height, width) in pixels; without it coordinates must lie in
    0..MAX_COORDINATE. Raises InputError(field, expected, found).
    """
    arr = _check_lines(lines, field)
    if arr.shape[0] - 1 < min_chords:
        raise InputError(None, field, f"a long axis plus at least {min_chords} disc chords",
                         f"{arr.shape[0] - 1} chord(s)", "each traced frame needs its chords")
    if frame_size is None:
        hi_x = hi_y = MAX_COORDINATE
        where = f"0..{MAX_COORDINATE:g} px"
    else:
        hi_y, hi_x = (float(v) for v in frame_size)
        where = f"the {int(hi_x)}x{int(hi_y)} frame"
    xs, ys = arr[:, [0, 2]], arr[:, [1, 3]]
    lo = -COORD_TOLERANCE
    outside = (xs < lo) | (xs > hi_x + COORD_TOLERANCE) | (ys < lo) | (ys > hi_y + COORD_TOLERANCE)
    if outside.any():
        row = int(np.argwhere(outside)[0][0])
        raise InputError(None, field, f"coordinates inside {where}",
                         f"line {row}: {arr[row].tolist()}",
                         "the tracing does not belong to this video or is in other units")
    if _lengths(arr)[0] <= 0:
        raise InputError(None, field, "a long axis of positive length", "a zero-length axis")
    return arr


def check_tracing_frame(frame: object, n_frames: int | None = None,
                        field: str = "frame") -> int:
    """A traced frame number: whole, >= 0 and, when `n_frames` is known, < n_frames."""
    try:
        value = float(frame)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InputError(None, field, "a whole frame number", repr(frame)) from exc
    if not np.isfinite(value) or value != int(value) or value < 0:
        raise InputError(None, field, "a whole frame number >= 0", repr(frame))
    if n_frames is not None and value >= n_frames:
        raise InputError(None, field, f"a frame inside the video (0..{n_frames - 1})",
                         f"{int(value)}", "the tracing belongs to a longer video")
    return int(value)


def _check_lines(lines: np.ndarray, field: str = "lines") -> np.ndarray:
    """Lines as float (N, 4) with N >= 2 (a long axis plus at least one chord)."""
    arr = np.asarray(lines, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(None, field, "an (N, 4) array of X1, Y1, X2, Y2 lines",
                         f"shape {arr.shape}")
    if arr.shape[0] < 2:
        raise InputError(None, field, "a long axis plus at least one disc chord (>= 2 lines)",
                         f"{arr.shape[0]} line(s)", "each traced frame needs its disc chords")
    if not np.isfinite(arr).all():
        raise InputError(None, field, "finite coordinates", "NaN or infinite values")
    return arr


def _lengths(lines: np.ndarray) -> np.ndarray:
    """Euclidean length of each line."""
    return np.hypot(lines[:, 2] - lines[:, 0], lines[:, 3] - lines[:, 1])


def disc_volume(lines: np.ndarray) -> float:
    """Method of discs (Simpson): sum(pi/4 d_i^2) * L / n_discs, in pixel^3."""
    arr = _check_lines(lines)
    lengths = _lengths(arr)
    long_axis, diameters = lengths[0], lengths[1:]
    return float(np.sum(math.pi / 4.0 * diameters**2) * long_axis / len(diameters))


def frustum_volume(lines: np.ndarray) -> float:
    """Discs refined as truncated cones between consecutive chords, each L / n_discs high.

    Follows the cavity's taper between chords instead of a staircase of cylinders; on the
    real EchoNet-Dynamic tracings it tracks FileList EF a little closer than plain discs.
    """
    arr = _check_lines(lines)
    lengths = _lengths(arr)
    long_axis, d = lengths[0], lengths[1:]
    if len(d) == 1:
        return disc_volume(arr)
    cones = math.pi / 12.0 * (d[:-1] ** 2 + d[:-1] * d[1:] + d[1:] ** 2)
    return float(np.sum(cones) * long_axis / len(d))


def tracing_polygon(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polygon (ys, xs) from the chord endpoints, as EchoNet builds its masks."""
    arr = _check_lines(lines)
    xs = np.concatenate((arr[1:, 0], np.flip(arr[1:, 2])))
    ys = np.concatenate((arr[1:, 1], np.flip(arr[1:, 3])))
    return ys, xs


def tracing_mask(lines: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the traced cavity (EchoNet: rounded vertices, filled polygon)."""
    ys, xs = tracing_polygon(lines)
    rr, cc = skimage.draw.polygon(np.rint(ys).astype(int), np.rint(xs).astype(int),
                                  shape=tuple(shape))
    mask = np.zeros(tuple(shape), dtype=bool)
    mask[rr, cc] = True
    return mask


def tracing_area(lines: np.ndarray) -> float:
    """Area (pixel^2) of the tracing polygon (shoelace formula on unrounded vertices)."""
    ys, xs = tracing_polygon(lines)
    return float(0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def area_length_volume(area: float, length: float) -> float:
    """Single-plane area-length volume 8 A^2 / (3 pi L)."""
    if length <= 0:
        raise InputError(None, "length", "a positive long-axis length", repr(length))
    return 8.0 * area**2 / (3.0 * math.pi * length)


def ef_from_volumes(edv: float, esv: float) -> float:
    """Ejection fraction in percent: 100 (EDV - ESV) / EDV."""
    if edv <= 0:
        raise InputError(None, "EDV", "a positive end-diastolic volume", repr(edv))
    return PERCENT * (edv - esv) / edv


def tracings_from_echonet_csv(df: pd.DataFrame) -> pd.DataFrame:
    """EchoNet VolumeTracings.csv -> tracings frame (sample_id without '.avi', frame, X1..Y2)."""
    missing = [c for c in ("FileName", "Frame", *LINE_COLUMNS) if c not in df.columns]
    if missing:
        raise InputError(None, "columns", "FileName, X1, Y1, X2, Y2, Frame",
                         f"missing {missing}")
    out = df.rename(columns={"FileName": "sample_id", "Frame": "frame"})
    names = out["sample_id"].astype(str)
    out["sample_id"] = names.where(~names.str.lower().str.endswith(ECHONET_SUFFIX),
                                   names.str[: -len(ECHONET_SUFFIX)])
    return out.loc[:, list(TRACING_COLUMNS)].reset_index(drop=True)


def _frame_measures(lines: np.ndarray, scale: float) -> dict[str, float]:
    """Disc and area-length volumes of one traced frame, times `scale`."""
    length = float(_lengths(lines)[0])
    return {
        "disc": disc_volume(lines) * scale,
        "frustum": frustum_volume(lines) * scale,
        "area_length": area_length_volume(tracing_area(lines), length) * scale,
    }


def _sample_row(sample_id: str, group: pd.DataFrame, scale: float,
                frame_size: tuple[int, int] | None = None, n_frames: int | None = None,
                min_chords: int = MIN_CHORDS) -> dict[str, object]:
    """One EF row from the lines of one sample; raises InputError on a bad sample."""
    frames = list(dict.fromkeys(group["frame"].tolist()))
    if len(frames) != TRACED_FRAMES_PER_SAMPLE:
        raise InputError(None, "frame", f"exactly {TRACED_FRAMES_PER_SAMPLE} traced frames",
                         f"{len(frames)} frame(s): {frames}")
    for frame in frames:
        check_tracing_frame(frame, n_frames)
    measures, n_lines = {}, {}
    for frame in frames:
        lines = group.loc[group["frame"] == frame, list(LINE_COLUMNS)].to_numpy(float)
        n_lines[frame] = len(lines)
        try:
            check_tracing_lines(lines, frame_size, min_chords)
            measures[frame] = _frame_measures(lines, scale)
        except InputError as exc:
            raise InputError(None, f"frame {frame} lines", exc.expected, exc.found,
                             exc.fix) from exc
    ed, es = sorted(frames, key=lambda f: measures[f]["disc"], reverse=True)
    med, mes = measures[ed], measures[es]
    return {
        "sample_id": sample_id, "ed_frame": ed, "es_frame": es,
        "EDV": med["disc"], "ESV": mes["disc"],
        "EF": ef_from_volumes(med["disc"], mes["disc"]),
        "EF_frustum": ef_from_volumes(med["frustum"], mes["frustum"]),
        "EDV_area_length": med["area_length"], "ESV_area_length": mes["area_length"],
        "EF_area_length": ef_from_volumes(med["area_length"], mes["area_length"]),
        "n_lines_ed": n_lines[ed], "n_lines_es": n_lines[es],
    }


def ef_from_tracings(
    tracings: pd.DataFrame, pixel_size_mm: float | None = None, *,
    frame_size: tuple[int, int] | Mapping[str, tuple[int, int]] | None = None,
    n_frames: int | Mapping[str, int] | None = None,
    min_chords: int = MIN_CHORDS,
) -> tuple[pd.DataFrame, list[Problem]]:
    """EDV, ESV and EF per sample from a tracings frame (sample_id, frame, X1, Y1, X2, Y2).

    ED is the traced frame with the larger disc volume. Volumes are pixel^3, or mL when
    `pixel_size_mm` is given. `frame_size` ((height, width), one for all or per sample id)
    and `n_frames` (per sample id or one for all) bound coordinates and frame numbers; a
    sample missing from those mappings gets only the generic bounds. Samples without
    exactly two valid traced frames are reported in the problems list and left out.
    """
    missing = [c for c in TRACING_COLUMNS if c not in tracings.columns]
    if missing:
        raise InputError(None, "columns", ", ".join(TRACING_COLUMNS), f"missing {missing}",
                         "use tracings_from_echonet_csv for an EchoNet VolumeTracings.csv")
    if pixel_size_mm is not None and pixel_size_mm <= 0:
        raise InputError(None, "pixel_size_mm", "a positive pixel size", repr(pixel_size_mm))
    scale = 1.0 if pixel_size_mm is None else pixel_size_mm**3 / MM3_PER_ML
    rows, problems = [], []
    for sample_id, group in tracings.groupby("sample_id", sort=False):
        try:
            sid = str(sample_id)
            rows.append(_sample_row(sid, group, scale, _per_sample(frame_size, sid),
                                    _per_sample(n_frames, sid), min_chords))
        except InputError as exc:
            problems.append(Problem.from_exception(str(sample_id), EF_STAGE, exc))
    columns = ["sample_id", "ed_frame", "es_frame", "EDV", "ESV", "EF", "EF_frustum",
               "EDV_area_length",
               "ESV_area_length", "EF_area_length", "n_lines_ed", "n_lines_es"]
    return pd.DataFrame(rows, columns=columns), problems


def _per_sample(value: object, sample_id: str) -> object:
    """One sample's value from a mapping (None when absent), or the value for all samples."""
    if isinstance(value, Mapping):
        return value.get(sample_id)
    return value
