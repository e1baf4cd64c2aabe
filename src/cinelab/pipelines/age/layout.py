"""Long-axis cine MRI series per subject (3-/4-chamber views) + an ages CSV -> manifest.

Layout: any folder tree of single-frame MR DICOM images (e.g. ``<subject>/<series>/*.dcm``).
Headers only are read. Images are grouped into series by SeriesInstanceUID (else by folder);
the subject is the PatientID (else the first folder under the root). A series' view comes
from a mapping table when one is given (CSV with a ``view`` column and a
``SeriesInstanceUID`` or ``SeriesDescription`` column; an empty view or "ignore" skips the
series), else from the regular expressions in `VIEW_PATTERNS` matched against the
SeriesDescription. When a subject has several series of one view, the one with the most
images (then the highest SeriesNumber) is kept and the others are reported.

Each kept series becomes one manifest row: sample_id ``<subject>_<view>``, patient_id the
subject, modality "cine", path a series list ``series/<sample_id>.csv`` (file, instance,
trigger_time: what `cinelab.pipelines.age.prepare` reads), the target (``age``) and the
covariates of the ages CSV. Subjects missing a view keep their other view; subjects without
an age are kept unlabelled and reported; ages for subjects without any series are reported.
Without an ages table (prediction on new scans) every subject is kept unlabelled.

As a registered layout (`LAYOUT`: `is_lax_cohort`, `read_lax_layout`): a cohort root that holds
an ages CSV (``ages.csv``, or the ``labels`` option) and long-axis DICOM series below it
(under ``dicom/`` when that folder exists). A plain DICOM folder without an ages table, or
whose series descriptions name no long-axis view, is not claimed.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.data.manifest import REQUIRED, new_manifest, validate_manifest
from cinelab.errors import InputError, Problem
from cinelab.formats.dicoms import candidate_files
from cinelab.formats.ingest import Ingested, write_ingested
from cinelab.io.dicom import read_dataset
from cinelab.io.table import read_table
from cinelab.utils import write_csv

STAGE = "ingest"
MODALITY = "cine"
LAYOUT = "cmr_lax"
DEFAULT_VIEWS = ("3ch", "4ch")
VIEW_PATTERNS = {
    "4ch": r"4\s*-?\s*ch|four[\s_-]*chamber|4[\s_-]*chamber",
    "3ch": r"3\s*-?\s*ch|three[\s_-]*chamber|3[\s_-]*chamber|lvot",
    "2ch": r"2\s*-?\s*ch|two[\s_-]*chamber|2[\s_-]*chamber|vla",
}
SUBJECT_KEYS = ("subject", "subject_id", "patient_id", "eid", "PatientID")
IGNORE_VIEW = "ignore"
SERIES_DIR = "series"
HEADER_TAGS = ("PatientID", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber",
               "InstanceNumber", "TriggerTime", "NominalInterval", "CardiacNumberOfImages")
AGE_RANGE = (0.0, 120.0)
AGES_FILE = "ages.csv"
DICOM_DIR = "dicom"
DETECT_FILES = 20  # headers read to recognise a long-axis cohort


def read_series_headers(root: str | Path) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per readable DICOM image: file, subject, series key and the HEADER_TAGS."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "root", "a folder of long-axis cine DICOM series",
                         "no such folder")
    rows, problems = [], []
    for path in candidate_files(root):
        try:
            ds = read_dataset(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        except InputError as exc:
            problems.append(Problem.from_exception(path, STAGE, exc))
            continue
        rel = path.relative_to(root).parts
        rows.append({"file": str(path),
                     "subject": _text(ds.get("PatientID")) or (rel[0] if len(rel) > 1 else ""),
                     "series": _text(ds.get("SeriesInstanceUID")) or str(path.parent),
                     "description": _text(ds.get("SeriesDescription")),
                     "series_number": _number(ds.get("SeriesNumber")),
                     "instance": _number(ds.get("InstanceNumber")),
                     "trigger_time": _number(ds.get("TriggerTime")),
                     "rr_ms": _number(ds.get("NominalInterval"))})
    columns = ["file", "subject", "series", "description", "series_number", "instance",
               "trigger_time", "rr_ms"]
    return pd.DataFrame(rows, columns=columns), problems


def view_of(description: str, views: Sequence[str],
            patterns: Mapping[str, str] | None = None) -> str | None:
    """The one view in `views` whose pattern matches the description (case-insensitive);
    None when none or several match."""
    patterns = {**VIEW_PATTERNS, **(patterns or {})}
    hits = [v for v in views if re.search(patterns.get(v, re.escape(v)), description,
                                          flags=re.IGNORECASE)]
    return hits[0] if len(hits) == 1 else None


def read_mapping(path: str | Path) -> pd.DataFrame:
    """A series-to-view mapping table (view + SeriesInstanceUID and/or SeriesDescription)."""
    table = read_table(path, dtype=str).fillna("")
    keys = [c for c in ("SeriesInstanceUID", "SeriesDescription") if c in table.columns]
    if "view" not in table.columns or not keys:
        raise InputError(path, "columns", "view and SeriesInstanceUID or SeriesDescription",
                         f"columns {list(table.columns)}")
    return table


def _mapped_view(series: str, description: str, mapping: pd.DataFrame | None) -> str | None:
    """The mapping's view for a series ('' when the table says to ignore it), or None."""
    if mapping is None:
        return None
    for key, value in (("SeriesInstanceUID", series), ("SeriesDescription", description)):
        if key in mapping.columns:
            hit = mapping.loc[mapping[key].str.strip().str.lower() == value.strip().lower()]
            if len(hit):
                view = str(hit["view"].iloc[0]).strip()
                return "" if view.lower() == IGNORE_VIEW else view
    return None


def assign_views(headers: pd.DataFrame, views: Sequence[str],
                 mapping: pd.DataFrame | None = None,
                 patterns: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per (subject, view): the series kept, its image count; problems for repeats."""
    if headers.empty:
        return pd.DataFrame(columns=["subject", "view", "series", "description", "n_images",
                                     "series_number"]), []
    series = (headers.groupby(["subject", "series"], sort=True)
              .agg(description=("description", "first"), n_images=("file", "size"),
                   series_number=("series_number", "max"), folder=("file", "first"))
              .reset_index())
    mapped = [_mapped_view(s, d, mapping) for s, d in zip(series["series"],
                                                           series["description"], strict=True)]
    series["view"] = [m if m is not None else (view_of(d, views, patterns) or "")
                      for m, d in zip(mapped, series["description"], strict=True)]
    series = series[series["view"].isin(list(views))]
    series = series.sort_values(["subject", "view", "n_images", "series_number"],
                                ascending=[True, True, False, False], na_position="last")
    problems = [Problem(str(Path(r.folder).parent), STAGE,
                        f"subject {r.subject}: another {r.view} series (SeriesDescription "
                        f"{r.description!r}) is kept; this one is left out", column="view")
                for r in series[series.duplicated(["subject", "view"])].itertuples()]
    return series.drop_duplicates(["subject", "view"]).reset_index(drop=True), problems


def read_ages(path: str | Path, target: str = "age") -> pd.DataFrame:
    """The ages table keyed by a `subject` column (renamed from SUBJECT_KEYS), as text + target."""
    table = read_table(path, dtype=str)
    key = next((c for c in SUBJECT_KEYS if c in table.columns), None)
    if key is None or target not in table.columns:
        raise InputError(path, "columns", f"a subject column (one of {SUBJECT_KEYS}) and "
                         f"{target!r}", f"columns {list(table.columns)}")
    table = table.rename(columns={key: "subject"})
    table["subject"] = table["subject"].str.strip()
    table[target] = pd.to_numeric(table[target], errors="coerce")
    clash = [c for c in table.columns if c in REQUIRED and c != "subject"]
    return table.rename(columns={c: f"cov_{c}" for c in clash})


def _series_list(headers: pd.DataFrame, subject: str, series: str) -> pd.DataFrame:
    """The images of one series ordered by trigger time (then instance, then file)."""
    rows = headers[(headers["subject"] == subject) & (headers["series"] == series)]
    return rows.sort_values(["trigger_time", "instance", "file"], na_position="last")[
        ["file", "instance", "trigger_time"]]


def ingest_lax(root: str | Path, ages: str | Path | None, out: str | Path,
               views: Sequence[str] = DEFAULT_VIEWS, mapping: str | Path | None = None,
               patterns: Mapping[str, str] | None = None, target: str = "age") -> Ingested:
    """Read the cohort, write series lists, manifest.csv and problems.csv into `out`."""
    out = Path(out)
    headers, problems = read_series_headers(root)
    table = read_mapping(mapping) if mapping is not None else None
    chosen, repeats = assign_views(headers, views, table, patterns)
    problems += repeats
    labels = read_ages(ages, target) if ages is not None else \
        pd.DataFrame(columns=["subject", target])
    rows = []
    for r in chosen.itertuples():
        sample_id = f"{r.subject}_{r.view}"
        path = write_csv(_series_list(headers, r.subject, r.series),
                         out / SERIES_DIR / f"{sample_id}.csv")
        rows.append({"sample_id": sample_id, "patient_id": r.subject, "path": str(path.resolve()),
                     "modality": MODALITY, "view": r.view, "split": "", "fold": -1,
                     "series_uid": r.series, "series_description": r.description,
                     "n_images": int(r.n_images)})
    manifest = _with_labels(rows, labels, target, problems, ages)
    problems += validate_manifest(manifest, None, check_files=True)
    if ages is not None:
        problems += _label_problems(manifest, target, ages)
    result = Ingested(manifest, LAYOUT, None, problems)
    write_ingested(result, out)
    return result


def _with_labels(rows: list[dict], labels: pd.DataFrame, target: str, problems: list[Problem],
                 ages_path: str | Path) -> pd.DataFrame:
    """Manifest rows joined with the ages table; ages of subjects without series reported."""
    if not rows:
        return pd.DataFrame(columns=[*REQUIRED, target])
    manifest = new_manifest(rows).merge(labels, left_on="patient_id", right_on="subject",
                                        how="left").drop(columns=["subject"])
    unseen = sorted(set(labels["subject"]) - set(manifest["patient_id"]))
    problems += [Problem(str(ages_path), STAGE, f"subject {s}: a {target} but no series of "
                         "the requested views", column="subject") for s in unseen]
    return manifest


def _label_problems(manifest: pd.DataFrame, target: str, ages: str | Path) -> list[Problem]:
    """Subjects with series but no usable age (kept unlabelled), ages outside AGE_RANGE."""
    if manifest.empty:
        return []
    values = pd.to_numeric(manifest[target], errors="coerce")
    out = []
    for subject in sorted(set(manifest.loc[values.isna(), "patient_id"])):
        out.append(Problem(str(ages), STAGE, f"subject {subject}: no {target} (kept "
                           "unlabelled)", column=target, expected="a number", found="nothing"))
    lo, hi = AGE_RANGE
    for subject in sorted(set(manifest.loc[(values < lo) | (values > hi), "patient_id"])):
        out.append(Problem(str(ages), STAGE, f"subject {subject}: {target} outside "
                           f"[{lo:g}, {hi:g}]", column=target))
    return out


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _number(value: object) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return np.nan
    return out if np.isfinite(out) else np.nan


def dicom_root(root: str | Path) -> Path:
    """Where a cohort's series are: ``root/dicom`` when it exists, else `root`."""
    root = Path(root)
    return root / DICOM_DIR if (root / DICOM_DIR).is_dir() else root


def _has_age_table(path: Path) -> bool:
    try:
        columns = pd.read_csv(path, nrows=0).columns
    except (OSError, ValueError, pd.errors.ParserError):
        return False
    return "age" in columns and any(c in columns for c in SUBJECT_KEYS)


def is_lax_cohort(root: Path) -> bool:
    """An ages CSV at `root` and long-axis series (3ch/4ch/2ch descriptions) below it."""
    root = Path(root)
    if not (root / AGES_FILE).is_file() or not _has_age_table(root / AGES_FILE):
        return False
    for path in candidate_files(dicom_root(root))[:DETECT_FILES]:
        try:
            ds = read_dataset(path, stop_before_pixels=True, specific_tags=["SeriesDescription"])
        except InputError:
            continue
        if view_of(_text(ds.get("SeriesDescription")), tuple(VIEW_PATTERNS)) is not None:
            return True
    return False


def series_dir(root: Path, options: Mapping[str, object]) -> Path:
    """Where the layout reader writes its series lists: options["out"] (the ingest folder)
    when given, else a folder named after the cohort under the system's temporary folder."""
    if options.get("out"):
        return Path(str(options["out"]))
    digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "cinelab-lax" / digest


def read_lax_layout(root: Path, options: Mapping[str, object]) -> Ingested:
    """The layout reader: `ingest_lax` of ``root`` with the ages CSV (options["labels"] or
    ``root/ages.csv``), views (options["views"], "3ch,4ch") and an optional mapping table."""
    root = Path(root)
    labels = options.get("labels") or (root / AGES_FILE if (root / AGES_FILE).is_file()
                                       else None)
    views = options.get("views") or DEFAULT_VIEWS
    if isinstance(views, str):
        views = [v.strip() for v in views.split(",") if v.strip()]
    return ingest_lax(dicom_root(root), labels, series_dir(root, options),  # type: ignore[arg-type]
                      views=list(views), mapping=options.get("mapping"),  # type: ignore[arg-type]
                      target=str(options.get("target") or "age"))
