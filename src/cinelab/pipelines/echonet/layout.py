"""EchoNet-Dynamic layout -> manifest + tracings, with every quirk of the real files reported.

Layout under `root`::

    FileList.csv          FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS,
                          NumberOfFrames, Split
    VolumeTracings.csv    FileName, X1, Y1, X2, Y2, Frame   (optional)
    Videos/<FileName>.avi
    Masks/<FileName>.npz  per-frame LV masks, key "mask"      (optional, synthetic cohorts)
    Truth/<FileName>.csv  per-frame ground truth              (optional, synthetic cohorts)

One bad row or file is reported as a `Problem` and skipped; only an unusable layout (no
FileList, an empty/binary/ragged FileList or one without a required column, no Videos folder)
raises `InputError`. Both CSVs are read through `io.table.read_table`; an unreadable
VolumeTracings.csv is a problem row (the videos are kept, without tracings). A video's
tracings are dropped (with a problem) when a traced frame lies beyond the video's frame count
or a coordinate outside its frame. Problem rows are 0-based data rows of the CSV they name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.manifest import new_manifest, normalise_split, validate_manifest
from cinelab.errors import InputError, Problem
from cinelab.formats.ingest import Ingested
from cinelab.io.table import read_table
from cinelab.io.video import probe_video, read_video
from cinelab.measure.ef import check_tracing_frame, check_tracing_lines

FILELIST = "FileList.csv"
TRACINGS = "VolumeTracings.csv"
VIDEOS_DIR = "Videos"
MASKS_DIR = "Masks"
TRUTH_DIR = "Truth"
VIDEO_SUFFIX = ".avi"
MASK_SUFFIX = ".npz"
MASK_KEY = "mask"
TRUTH_SUFFIX = ".csv"
MODALITY = "echo"
VIEW = "A4C"
STAGE = "echonet"
REQUIRED_COLUMNS = ("FileName", "EF", "Split")
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
COORDS = ("X1", "Y1", "X2", "Y2")
EF_RANGE = (0.0, 100.0)
MIN_TRACE_LINES = 2
FPS_TOLERANCE = 0.5
_CONSUMED = ("FileName", "Split")


@dataclass
class EchonetCohort:
    """A read EchoNet layout: the manifest, the tracings and every problem found."""

    manifest: pd.DataFrame
    tracings: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    root: Path = Path(".")


def read_echonet(root: str | Path, check_videos: bool = True) -> EchonetCohort:
    """Read an EchoNet-Dynamic layout into a manifest and tracings, reporting every quirk.

    `check_videos` probes each video and decodes its last frame (a few ms per file): empty,
    truncated or unreadable files are reported and dropped; frame-count or FPS disagreement
    with FileList is reported and the row kept.
    """
    root = Path(root).resolve()
    filelist = _read_filelist(root / FILELIST)
    videos = _list_videos(root / VIDEOS_DIR)
    problems: list[Problem] = _encoding_notes(filelist, root / FILELIST)
    table = _clean_filelist(filelist, root / FILELIST, problems)
    problems += _unlisted_videos(videos, set(filelist["sample_id"]), root / FILELIST)
    table = _attach_videos(table, videos, root / VIDEOS_DIR, problems)
    shapes = _listed_shapes(table)
    if check_videos:
        table = _check_videos(table, problems, shapes)
    manifest = _to_manifest(table, root)
    tracings = _read_tracings(root / TRACINGS, set(table["sample_id"]),
                              set(filelist["sample_id"]), problems)
    tracings = _drop_outside_tracings(tracings, shapes, root / TRACINGS, problems)
    return EchonetCohort(manifest, tracings, problems, root)


def validate_echonet(cohort: EchonetCohort) -> list[Problem]:
    """The cohort's reading problems plus `validate_manifest` with EF in [0, 100]."""
    found = validate_manifest(cohort.manifest, label_ranges={"EF": EF_RANGE}, root=cohort.root)
    return list(cohort.problems) + found


def sample_id_from_filename(name: object) -> str:
    """'0X1A.avi' or '0X1A' (any case of suffix, stray spaces) -> '0X1A'."""
    text = str(name).strip()
    if text.lower().endswith(VIDEO_SUFFIX):
        text = text[: -len(VIDEO_SUFFIX)]
    return text


def _problem(file: Path | str, error: str, row: int | None = None, column: str | None = None,
             expected: str | None = None, found: str | None = None) -> Problem:
    return Problem(str(file), STAGE, error, row=row, column=column, expected=expected,
                   found=found)


def _read_filelist(path: Path) -> pd.DataFrame:
    """FileList.csv with a normalised `sample_id`; unusable lists raise InputError."""
    if not path.is_file():
        raise InputError(path, "file", f"an EchoNet {FILELIST}", "nothing at that path",
                         f"put {FILELIST} in the dataset root")
    df = read_table(path, dtype={"FileName": str, "Split": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, ", ".join(missing), f"columns {list(REQUIRED_COLUMNS)}",
                         f"columns {list(df.columns)}")
    df["sample_id"] = [None if pd.isna(n) else sample_id_from_filename(n)
                       for n in df["FileName"]]
    return df


def _encoding_notes(df: pd.DataFrame, path: Path) -> list[Problem]:
    """A problem row (table kept) for each note `read_table` made, e.g. read as Latin-1."""
    return [_problem(path, f"{note}: kept", column="encoding", expected="UTF-8 text",
                     found=str(df.attrs.get("encoding"))) for note in df.attrs.get("warnings", [])]


def _list_videos(folder: Path) -> dict[str, Path]:
    """sample_id -> video path for every .avi in Videos/ (hidden temp files skipped)."""
    if not folder.is_dir():
        raise InputError(folder, "folder", f"a {VIDEOS_DIR}/ folder of {VIDEO_SUFFIX} files",
                         "nothing at that path")
    return {p.name[: -len(VIDEO_SUFFIX)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(VIDEO_SUFFIX)
            and not p.name.startswith(".")}


def _clean_filelist(df: pd.DataFrame, path: Path, problems: list[Problem]) -> pd.DataFrame:
    """Drop rows without a name, duplicates (keep first) and NaN EF; normalise splits."""
    keep = np.ones(len(df), dtype=bool)
    ef = pd.to_numeric(df["EF"], errors="coerce")
    seen: dict[str, int] = {}
    for i, sid in enumerate(df["sample_id"]):
        if not sid:
            problems.append(_problem(path, "row without a FileName: dropped", i, "FileName",
                                     "a video file name", repr(df["FileName"].iat[i])))
            keep[i] = False
        elif sid in seen:
            problems.append(_problem(path, f"duplicate FileName '{sid}': kept row {seen[sid]}",
                                     i, "FileName", "a unique file name", sid))
            keep[i] = False
        else:
            seen[sid] = i
            keep[i] = _check_ef(ef.iat[i], df["EF"].iat[i], i, sid, path, problems)
    out = df.loc[keep].copy()
    out["EF"] = ef[keep]
    out["split"] = [_split(v, i, path, problems) for i, v in zip(out.index, out["Split"],
                                                                   strict=True)]
    out["row"] = out.index
    return out.reset_index(drop=True)


def _check_ef(value: float, raw: object, row: int, sid: str, path: Path,
              problems: list[Problem]) -> bool:
    """False (drop) for a NaN EF; out-of-range EF is reported and kept."""
    lo, hi = EF_RANGE
    expected = f"a number in [{lo:g}, {hi:g}]"
    if pd.isna(value):
        problems.append(_problem(path, f"'{sid}': EF is not a number: dropped", row, "EF",
                                 expected, repr(raw)))
        return False
    if not lo <= value <= hi:
        problems.append(_problem(path, f"'{sid}': EF out of range: kept", row, "EF",
                                 expected, f"{value:g}"))
    return True


def _split(value: object, row: int, path: Path, problems: list[Problem]) -> str:
    """train/val/test from any case; unknown or missing -> '' and a problem."""
    split = normalise_split(value)
    if split is None:
        problems.append(_problem(path, f"unknown split {value!r}: set to ''", row, "Split",
                                 "TRAIN, VAL or TEST (any case)", repr(value)))
        return ""
    return split


def _unlisted_videos(videos: dict[str, Path], listed: set[str], path: Path) -> list[Problem]:
    """Videos on disk that FileList does not name (reported, never added)."""
    return [_problem(videos[sid], f"video '{sid}' is not in {FILELIST}: not added",
                     column="FileName", expected=f"a row in {path}", found="no row")
            for sid in sorted(set(videos) - listed)]


def _attach_videos(table: pd.DataFrame, videos: dict[str, Path], folder: Path,
                   problems: list[Problem]) -> pd.DataFrame:
    """Add the video path; rows whose video is absent are reported and dropped."""
    present = table["sample_id"].isin(list(videos))
    for _, r in table.loc[~present].iterrows():
        expected = folder / f"{r['sample_id']}{VIDEO_SUFFIX}"
        problems.append(_problem(expected, f"video '{r['sample_id']}' listed but missing: "
                                 "dropped", int(r["row"]), "FileName", "an existing video",
                                 "no file"))
    table = table.loc[present].copy()
    table["path"] = [str(videos[sid]) for sid in table["sample_id"]]
    return table.reset_index(drop=True)


def _listed_shapes(table: pd.DataFrame) -> dict[str, tuple[int | None, int | None, int | None]]:
    """sample_id -> (frames, height, width) as FileList gives them (None where absent)."""
    def column(name: str) -> list[int | None]:
        values = pd.to_numeric(table[name], errors="coerce") if name in table.columns \
            else pd.Series([np.nan] * len(table))
        return [int(v) if pd.notna(v) and v > 0 else None for v in values]

    rows = zip(column("NumberOfFrames"), column("FrameHeight"), column("FrameWidth"),
               strict=True)
    return dict(zip(table["sample_id"], rows, strict=True))


def _check_videos(table: pd.DataFrame, problems: list[Problem],
                  shapes: dict[str, tuple[int | None, int | None, int | None]]
                  ) -> pd.DataFrame:
    """Drop unreadable videos; note frame-count/FPS disagreements with FileList; record
    each readable video's (frames, height, width) in `shapes` (they bound its tracings)."""
    keep = []
    for _, r in table.iterrows():
        try:
            info = probe_video(r["path"])
            read_video(r["path"], start=max(info.frames - 1, 0), count=1)
        except Exception as exc:  # noqa: BLE001 - one bad file is reported, not fatal
            problems.append(Problem.from_exception(r["path"], STAGE, exc))
            keep.append(False)
            continue
        problems += _header_mismatches(r, info.frames, info.fps)
        shapes[r["sample_id"]] = (info.frames, info.height, info.width)
        keep.append(True)
    return table.loc[keep].reset_index(drop=True)


def _header_mismatches(r: pd.Series, frames: int, fps: float) -> list[Problem]:
    """Problems (row kept) where the container disagrees with FileList."""
    out = []
    listed = pd.to_numeric(pd.Series([r.get("NumberOfFrames"), r.get("FPS")]), errors="coerce")
    if pd.notna(listed[0]) and int(listed[0]) != frames:
        out.append(_problem(r["path"], "frame count differs from FileList: kept",
                            int(r["row"]), "NumberOfFrames", f"{int(listed[0])}", f"{frames}"))
    if pd.notna(listed[1]) and abs(float(listed[1]) - fps) > FPS_TOLERANCE:
        out.append(_problem(r["path"], "frame rate differs from FileList: kept",
                            int(r["row"]), "FPS", f"{float(listed[1]):g}", f"{fps:g}"))
    return out


def _optional_file(folder: Path, sid: str, suffix: str) -> str:
    """Path of <sid><suffix> or <sid>.avi<suffix> in `folder`, or ''."""
    for name in (f"{sid}{suffix}", f"{sid}{VIDEO_SUFFIX}{suffix}"):
        if (folder / name).is_file():
            return str(folder / name)
    return ""


def _to_manifest(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Manifest rows: required columns, then every FileList column, mask_path, truth_path."""
    labels = [c for c in table.columns if c not in (*_CONSUMED, "sample_id", "split", "path",
                                                    "row")]
    rows = []
    for _, r in table.iterrows():
        sid = r["sample_id"]
        row = {"sample_id": sid, "patient_id": sid, "path": r["path"], "modality": MODALITY,
               "view": VIEW, "split": r["split"], "fold": -1}
        row.update({c: r[c] for c in labels})
        row["mask_path"] = _optional_file(root / MASKS_DIR, sid, MASK_SUFFIX)
        row["truth_path"] = _optional_file(root / TRUTH_DIR, sid, TRUTH_SUFFIX)
        rows.append(row)
    if not rows:
        empty = pd.DataFrame(columns=[*labels, "mask_path", "truth_path"])
        return pd.concat([new_manifest([]), empty], axis=1)
    return new_manifest(rows)


def _empty_tracings() -> pd.DataFrame:
    return pd.DataFrame({"sample_id": pd.Series(dtype=str), "frame": pd.Series(dtype=int),
                         **{c: pd.Series(dtype=float) for c in COORDS}})


def _read_tracings(path: Path, kept: set[str], listed: set[str],
                   problems: list[Problem]) -> pd.DataFrame:
    """Tracings (sample_id, frame, X1, Y1, X2, Y2) in file order for the kept videos."""
    if not path.is_file():
        return _empty_tracings()
    try:
        df = read_table(path, dtype={"FileName": str})
    except InputError as exc:
        problems.append(_problem(path, f"tracings unusable: {exc.found}: no tracings read",
                                 None, exc.field, exc.expected, exc.found))
        return _empty_tracings()
    problems += _encoding_notes(df, path)
    missing = [c for c in TRACING_COLUMNS if c not in df.columns]
    if missing:
        problems.append(_problem(path, f"tracings unusable: missing {missing}", None,
                                 ", ".join(missing), f"columns {list(TRACING_COLUMNS)}",
                                 f"columns {list(df.columns)}"))
        return _empty_tracings()
    df["sample_id"] = [sample_id_from_filename(n) for n in df["FileName"].fillna("")]
    df = _drop_unlisted_tracings(df, kept, listed, path, problems)
    df = _drop_bad_tracings(df, path, problems)
    out = df.rename(columns={"Frame": "frame"})[["sample_id", "frame", *COORDS]]
    out["frame"] = out["frame"].astype(int)
    return out.reset_index(drop=True)


def _drop_unlisted_tracings(df: pd.DataFrame, kept: set[str], listed: set[str], path: Path,
                            problems: list[Problem]) -> pd.DataFrame:
    """Drop tracings of videos not in the manifest; report those FileList never named."""
    for sid in dict.fromkeys(df.loc[~df["sample_id"].isin(listed), "sample_id"]):
        problems.append(_problem(path, f"tracings for '{sid}', which is not in {FILELIST}: "
                                 "dropped", column="FileName",
                                 expected=f"a video listed in {FILELIST}", found=repr(sid)))
    return df.loc[df["sample_id"].isin(kept)]


def _drop_bad_tracings(df: pd.DataFrame, path: Path, problems: list[Problem]) -> pd.DataFrame:
    """Drop a video's tracings if any frame is unusable; note unusual line counts."""
    for col in ("Frame", *COORDS):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    bad: set[str] = set()
    for sid, lines in df.groupby("sample_id", sort=False):
        nan = lines[lines[["Frame", *COORDS]].isna().any(axis=1)]
        if len(nan):
            bad.add(sid)
            problems.append(_problem(path, f"'{sid}': non-numeric tracing values: tracings "
                                     "dropped", int(nan.index[0]), "X1, Y1, X2, Y2, Frame",
                                     "numbers", "a missing or non-numeric value"))
    counts = df.dropna(subset=["Frame"]).groupby(["sample_id", "Frame"], sort=False).size()
    usual = int(counts.mode().iat[0]) if len(counts) else 0
    for (sid, frame), n in counts.items():
        if n < MIN_TRACE_LINES:
            bad.add(sid)
            problems.append(_problem(path, f"'{sid}' frame {int(frame)}: a single traced "
                                     "line: tracings of this video dropped", None, "Frame",
                                     f"at least {MIN_TRACE_LINES} lines (axis + discs)",
                                     f"{n} line"))
        elif n != usual:
            problems.append(_problem(path, f"'{sid}' frame {int(frame)}: {n} lines where "
                                     f"most frames have {usual}: kept", None, "Frame",
                                     f"{usual} lines", f"{n} lines"))
    return df.loc[~df["sample_id"].isin(bad)]


def _drop_outside_tracings(tracings: pd.DataFrame,
                           shapes: dict[str, tuple[int | None, int | None, int | None]],
                           path: Path, problems: list[Problem]) -> pd.DataFrame:
    """Drop a video's tracings when a traced frame lies beyond its frame count or a
    coordinate outside its frame (never measured: 1e9 would give an EDV of 1e26)."""
    bad = set()
    for sid, lines in tracings.groupby("sample_id", sort=False):
        frames, height, width = shapes.get(str(sid), (None, None, None))
        size = (height, width) if height and width else None
        try:
            _check_sample_bounds(lines, frames, size)
        except InputError as exc:
            bad.add(sid)
            problems.append(_problem(path, f"'{sid}' {exc.field}: {exc.found}: tracings of "
                                     "this video dropped", None, exc.field, exc.expected,
                                     exc.found))
    return tracings.loc[~tracings["sample_id"].isin(bad)].reset_index(drop=True)


def _check_sample_bounds(lines: pd.DataFrame, n_frames: int | None,
                         size: tuple[int, int] | None) -> None:
    """InputError when a traced frame or coordinate of one video is outside the video."""
    for frame, group in lines.groupby("frame", sort=False):
        field = f"frame {int(frame)}"
        check_tracing_frame(frame, n_frames, field=field)
        check_tracing_lines(group[list(COORDS)].to_numpy(float), size, min_chords=0,
                            field=f"{field} lines")


def is_echonet(root: Path) -> bool:
    """An EchoNet-Dynamic folder: FileList.csv at its root."""
    return (root / "FileList.csv").is_file()


def ingest_echonet(root: Path, options: Mapping[str, Any]) -> Ingested:
    """`read_echonet` as an ingest layout (manifest, tracings, problems)."""
    cohort = read_echonet(root)
    return Ingested(cohort.manifest, "echonet", cohort.tracings, list(cohort.problems))
