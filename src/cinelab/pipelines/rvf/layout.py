"""RV-failure echo cohorts: a folder of echo DICOMs + a class CSV + a split CSV -> manifest.

The DICOM PatientID carries the study id (e.g. a REDCap record number). The class CSV maps
study id -> class name (e.g. "RVF"/"noRVF"), the split CSV study id -> train/val/test.
Manifest label columns: `class` (the name) and `label` (its index in the class order: for two
classes the negative one, e.g. "noRVF", is 0 and the other 1; see `class_order`).

Pseudonymised by default. Design, so that nothing that leaves ingest holds PHI:
- sample_id is "<pseudonym>_<k>" (k-th file of the patient by raw path), patient_id the
  pseudonym; study ids, raw paths and file names never appear in the manifest or problems
  (problems name a sample id, a file key "F<hex>" or a row of a CSV);
- `read_rvf_cohort` returns `path` = the raw file (in memory only);
- `write_rvf_ingest` writes a de-identified copy of every DICOM to `<out>/sources/<id>.dcm`
  (PHI tags, names, dates and private tags removed, see prep.deid) and the manifest points
  there, so prepare (which records its source path) and everything after it only ever see
  pseudonymous files. Copies rather than symlinks: a link would keep the raw path, which may
  name the patient. The id map and the key -> raw path map stay beside the raw data.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.data.manifest import new_manifest, normalise_split, validate_manifest, write_manifest
from cinelab.errors import InputError, Problem
from cinelab.formats.dicoms import read_dicom_folder
from cinelab.io.table import read_table
from cinelab.prep.deid import IdMap, default_idmap_path, safe_id, scrub_value, write_deidentified
from cinelab.prep.deid_ingest import burned_in_problems
from cinelab.utils import write_csv

STAGE = "ingest"
ID_COLUMNS = ("id", "study_id", "record_id", "redcap_id", "patient_id", "PatientID")
CLASS_COLUMNS = ("class", "label", "outcome", "group")
SPLIT_COLUMNS = ("split", "set", "partition", "subset")
NEGATIONS = ("no", "non", "not")
SOURCES_DIR = "sources"
COLUMNS = ("label", "class", "n_frames", "rows", "columns", "fps")


def read_rvf_cohort(
    dicom_root: str | Path,
    classes_csv: str | Path,
    splits_csv: str | Path,
    idmap_path: str | Path | None = None,
    pseudonymise: bool = True,
    positive_class: str | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Manifest of the labelled videos under `dicom_root` and every problem found.

    Reported (and left out of the manifest): DICOMs without PatientID, videos with no label,
    patients given two classes; also reported: labels with no video, videos with no split.
    `path` holds the raw file: write the result with `write_rvf_ingest`, not as it is.
    The id map defaults to `<dicom_root>/.cinelab-idmap.csv`.
    """
    root = Path(dicom_root).resolve()
    videos, read_problems = read_dicom_folder(root)
    idmap = IdMap.open(idmap_path or default_idmap_path(root)) if pseudonymise else None
    ids = _Ids(root, idmap)
    problems = [ids.redact(p) for p in read_problems if p.column != "PatientID"]
    no_pid = {p.file for p in read_problems if p.column == "PatientID"}
    classes, conflicted, class_problems = _class_table(classes_csv, ids)
    splits, split_problems = _split_table(splits_csv, ids)
    names = class_order(sorted(set(classes.values())), positive_class, classes_csv)
    rows = []
    for row in videos.to_dict("records"):
        if row["path"] in no_pid:
            problems.append(_no_patient_id(ids.file_key(row["path"])))
            continue
        rows.append(_video_row(row, ids))
    rows = _number_videos(rows, ids)
    problems += class_problems + split_problems + _burned_in(videos, ids)
    problems += _label_problems(rows, classes, conflicted, classes_csv, splits)
    labelled = [dict(r, **{"class": classes[r["study"]],
                           "label": names.index(classes[r["study"]]),
                           "split": splits.get(r["study"], "")})
                for r in rows if r["study"] in classes]
    if idmap is not None:
        idmap.save()
    manifest = _manifest(labelled)
    manifest.attrs.update(class_names=names, pseudonymised=pseudonymise, dicom_root=str(root),
                          idmap_path=None if idmap is None else str(idmap.path))
    return manifest, problems


def read_unlabelled(dicom_root: str | Path, idmap_path: str | Path | None = None
                    ) -> tuple[pd.DataFrame, list[Problem]]:
    """Pseudonymised manifest of every echo DICOM under `dicom_root` with no labels (videos
    to predict): as `read_rvf_cohort`, without the class and split CSVs."""
    root = Path(dicom_root).resolve()
    videos, read_problems = read_dicom_folder(root)
    idmap = IdMap.open(idmap_path or default_idmap_path(root))
    ids = _Ids(root, idmap)
    problems = [ids.redact(p) for p in read_problems if p.column != "PatientID"]
    no_pid = {p.file for p in read_problems if p.column == "PatientID"}
    problems += [_no_patient_id(ids.file_key(path)) for path in videos["path"]
                 if path in no_pid]
    rows = _number_videos([_video_row(r, ids) for r in videos.to_dict("records")
                           if r["path"] not in no_pid], ids)
    problems += _burned_in(videos, ids)
    idmap.save()
    manifest = _manifest([dict(r, **{"class": "", "label": np.nan, "split": ""})
                          for r in rows], labelled=False)
    manifest.attrs.update(class_names=[], pseudonymised=True, dicom_root=str(root),
                          idmap_path=str(idmap.path))
    return manifest, problems


def _burned_in(videos: pd.DataFrame, ids: _Ids) -> list[Problem]:
    """BurnedInAnnotation = YES flags, each naming the file's key (never its raw path)."""
    return burned_in_problems(videos, {p: ids.file_key(p) for p in videos["path"]})


class _Ids:
    """Study ids -> patient ids, raw paths -> keys; redacts problems (pseudonymised or not)."""

    def __init__(self, root: Path, idmap: IdMap | None) -> None:
        self.root, self.idmap = root, idmap

    def patient(self, study_id: str) -> str:
        if self.idmap is None:
            return safe_id(study_id)
        return self.idmap.pseudonym(study_id)

    def relative(self, path: str) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    def file_key(self, path: str) -> str:
        if self.idmap is None:
            return str(path)
        return self.idmap.file_key(self.relative(path))

    def redact(self, problem: Problem) -> Problem:
        """A read problem with the raw path replaced by the file's key everywhere."""
        if self.idmap is None or not problem.file:
            return problem
        key = self.file_key(problem.file)
        texts = [problem.file, self.relative(problem.file)]
        fields = {k: scrub_value(v, texts, key) if isinstance(v, str) else v
                  for k, v in asdict(problem).items()}
        return Problem(**fields)


def _video_row(row: dict, ids: _Ids) -> dict:
    study = str(row["patient_id"]).strip()
    return {"study": study, "patient_id": ids.patient(study), "path": row["path"],
            "modality": "echo", "view": "", "fold": -1,
            **{k: row[k] for k in ("n_frames", "rows", "columns", "fps")}}


def _number_videos(rows: list[dict], ids: _Ids) -> list[dict]:
    """sample_id = '<patient>_<k>', k counting each patient's files in raw path order."""
    counts: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: (r["patient_id"], r["path"])):
        k = counts.get(row["patient_id"], 0)
        counts[row["patient_id"]] = k + 1
        row["sample_id"] = f"{row['patient_id']}_{k}"
        if ids.idmap is not None:
            ids.idmap.add_file(row["sample_id"], ids.relative(row["path"]))
    return sorted(rows, key=lambda r: r["sample_id"])


def class_order(names: list[str], positive: str | None = None,
                source: str | Path | None = None) -> list[str]:
    """Class names in label order. Two classes: the negation ("noRVF", "non-X") is label 0;
    otherwise sorted, with `positive` (when given) last."""
    if positive is not None:
        if positive not in names:
            raise InputError(source, "positive_class", f"one of {names}", repr(positive))
        return sorted(n for n in names if n != positive) + [positive]
    if len(names) == 2:
        a, b = names
        if _negates(a, b):
            return [a, b]
        if _negates(b, a):
            return [b, a]
    return sorted(names)


def _negates(negative: str, positive: str) -> bool:
    """'noRVF' negates 'RVF' (also 'no RVF', 'non-RVF', 'not_RVF'; any case)."""
    text = negative.lower().replace(" ", "").replace("-", "").replace("_", "")
    return any(text == word + positive.lower().replace(" ", "") for word in NEGATIONS)


def _read_table(path: str | Path, value_columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """A two-column table (id, value) with the CSV row of each entry; columns found by name."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", f"a {what} CSV (id,{what})", "nothing at that path")
    table = read_table(path, dtype=str, keep_default_na=False)
    id_col = _pick(table, ID_COLUMNS, 0)
    value_col = _pick(table, value_columns, 1)
    if id_col is None or value_col is None or id_col == value_col:
        raise InputError(path, "columns", f"an id column ({'/'.join(ID_COLUMNS)}) and a {what} "
                         f"column ({'/'.join(value_columns)})", f"columns {list(table.columns)}")
    return pd.DataFrame({"id": table[id_col].str.strip(), "value": table[value_col].str.strip(),
                         "row": np.arange(len(table))})


def _pick(table: pd.DataFrame, names: tuple[str, ...], position: int) -> str | None:
    """The first column named like one of `names` (any case), else the one at `position`."""
    lower = {str(c).strip().lower(): c for c in table.columns}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    return table.columns[position] if len(table.columns) > position else None


def _class_table(path: str | Path, ids: _Ids
                 ) -> tuple[dict[str, str], set[str], list[Problem]]:
    """Study id -> class, the ids with two classes; empty classes and conflicts are problems."""
    table, name = _read_table(path, CLASS_COLUMNS, "class"), Path(path).name
    problems = [_csv_problem(name, r, "class", "a class name", "an empty cell")
                for r in table.loc[table["value"] == "", "row"]]
    table = table[(table["value"] != "") & (table["id"] != "")]
    out, conflicted = {}, set()
    for study, group in table.groupby("id", sort=True):
        values = sorted(set(group["value"]))
        if len(values) > 1:
            conflicted.add(study)
            rows = group["row"].tolist()
            problems.append(_csv_problem(
                name, rows[0], "class", "one class per patient",
                f"patient {ids.patient(study)} has classes {values} (rows {rows}); "
                "its videos are left out"))
        else:
            out[study] = values[0]
    return out, conflicted, problems


def _split_table(path: str | Path, ids: _Ids) -> tuple[dict[str, str], list[Problem]]:
    """Study id -> train/val/test; unknown or conflicting splits are problems."""
    table, name = _read_table(path, SPLIT_COLUMNS, "split"), Path(path).name
    out: dict[str, str] = {}
    problems = []
    for study, group in table[table["id"] != ""].groupby("id", sort=True):
        values = {normalise_split(v) for v in group["value"]}
        rows = group["row"].tolist()
        if None in values:
            problems.append(_csv_problem(name, rows[0], "split", "train, val or test",
                                         f"{sorted(group['value'])} for patient "
                                         f"{ids.patient(study)}; split left empty"))
        elif len(values) > 1:
            problems.append(_csv_problem(name, rows[0], "split", "one split per patient",
                                         f"patient {ids.patient(study)} in {sorted(values)} "
                                         f"(rows {rows}); split left empty"))
        else:
            out[study] = values.pop()
    return out, problems


def _label_problems(rows: list[dict], classes: dict[str, str], conflicted: set[str],
                    classes_csv: str | Path, splits: dict[str, str]) -> list[Problem]:
    """Videos with no label or no split, labels with no video (conflicts reported apart)."""
    problems = []
    with_video = {r["study"] for r in rows}
    for r in rows:
        if r["study"] in conflicted:
            continue
        if r["study"] not in classes:
            problems.append(Problem(r["sample_id"], STAGE, "video with no label: its patient "
                                    f"{r['patient_id']} has no class in "
                                    f"{Path(classes_csv).name}; left out", column="class",
                                    expected="a class", found="none"))
        elif r["study"] not in splits:
            problems.append(Problem(r["sample_id"], STAGE, "video with no split: split left "
                                    "empty", column="split", expected="train/val/test",
                                    found="none"))
    table = _read_table(classes_csv, CLASS_COLUMNS, "class")
    for study, row in zip(table["id"], table["row"], strict=True):
        if study and study not in with_video:
            problems.append(_csv_problem(Path(classes_csv).name, row, "id",
                                         "a video for this patient", "label with no video"))
    return problems


def _csv_problem(name: str, row: int, column: str, expected: str, found: str) -> Problem:
    return Problem(name, STAGE, f"row {row} (line {row + 2}): {column}: expected {expected}, "
                   f"found {found}", row=int(row), column=column, expected=expected, found=found)


def _no_patient_id(key: str) -> Problem:
    return Problem(key, STAGE, "PatientID: expected the study id, found none; video left out",
                   column="PatientID", expected="a study id", found="missing or empty")


def _manifest(rows: list[dict], labelled: bool = True) -> pd.DataFrame:
    """new_manifest without the internal study id (an empty one with all columns)."""
    if not rows:
        columns = ["sample_id", "patient_id", "path", "modality", "view", "split", "fold"]
        return pd.DataFrame(columns=columns + list(COLUMNS))
    manifest = new_manifest([{k: v for k, v in r.items() if k != "study"} for r in rows])
    manifest["label"] = manifest["label"].astype(int if labelled else float)
    return manifest


def write_rvf_ingest(
    manifest: pd.DataFrame,
    problems: list[Problem],
    out: str | Path,
    idmap_path: str | Path | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Write de-identified sources, manifest.csv and problems.csv into `out`.

    With a pseudonymised manifest (the default of read_rvf_cohort) every DICOM is copied,
    de-identified, to `<out>/sources/<sample_id>.dcm` (existing copies newer than their raw
    file are kept) and `path` points to the copy; otherwise paths stay raw.
    """
    out = Path(out).resolve()
    manifest, problems = manifest.copy(), list(problems)
    idmap_path = idmap_path or manifest.attrs.get("idmap_path")
    if manifest.attrs.get("pseudonymised", True) and len(manifest):
        if idmap_path is None:
            raise InputError(None, "idmap_path", "the id map used by read_rvf_cohort",
                             "none given")
        raw_root = Path(manifest.attrs.get("dicom_root") or Path(idmap_path).parent)
        manifest = _write_sources(manifest, out, raw_root, IdMap.open(idmap_path), problems)
    problems += validate_manifest(manifest)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, out / "manifest.csv")
    columns = list(Problem.__dataclass_fields__)
    write_csv(pd.DataFrame([asdict(p) for p in problems], columns=columns),
              out / "problems.csv")
    return manifest, problems


def _write_sources(manifest: pd.DataFrame, out: Path, raw_root: Path, idmap: IdMap,
                   problems: list[Problem]) -> pd.DataFrame:
    """De-identified copies; rows whose copy fails are reported and dropped."""
    raw_root = raw_root.resolve()
    if out == raw_root or raw_root in out.parents:
        raise InputError(out, "out", "a folder outside the raw data", f"inside {raw_root}",
                         fix="write ingest output elsewhere, or it would be read as raw data")
    keep, paths = [], []
    for sid, patient, src in zip(manifest["sample_id"], manifest["patient_id"],
                                 manifest["path"], strict=True):
        dst = out / SOURCES_DIR / f"{sid}.dcm"
        try:
            if not dst.exists() or dst.stat().st_mtime < Path(src).stat().st_mtime:
                write_deidentified(src, dst, str(patient), idmap.secret)
        except Exception as exc:  # one bad file is reported and skipped
            texts = [str(src), str(Path(src).resolve().relative_to(raw_root))]
            problems.append(Problem(str(sid), STAGE, f"de-identified copy failed: "
                                    f"{type(exc).__name__}: {scrub_value(str(exc), texts, sid)}"))
            keep.append(False)
            continue
        keep.append(True)
        paths.append(str(dst))
    manifest = manifest[keep].copy()
    manifest["path"] = paths
    return manifest.reset_index(drop=True)


def ingest_rvf(
    dicom_root: str | Path,
    classes_csv: str | Path,
    splits_csv: str | Path,
    out: str | Path,
    idmap_path: str | Path | None = None,
    pseudonymise: bool = True,
    positive_class: str | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """read_rvf_cohort + write_rvf_ingest: the written manifest and all problems."""
    manifest, problems = read_rvf_cohort(dicom_root, classes_csv, splits_csv, idmap_path,
                                         pseudonymise, positive_class)
    return write_rvf_ingest(manifest, problems, out, idmap_path)
