"""Pseudonymised DICOM-folder ingest and burned-in annotation flags (the EchoNet/RVF DICOM
route: ``cinelab ingest DICOMS --layout dicom --option pseudonymise=true``).

The generic "dicom" layout (`cinelab.formats.dicoms`) names samples after their relative
paths and keeps the raw PatientID: fine for an anonymous archive, not for folders named after
patients. `pseudonymise_ingested` rewrites an ingest so that nothing written holds either:

- patient_id = the keyed pseudonym of the raw PatientID ("P" + 12 hex, `prep.deid`), sample_id
  = "<pseudonym>_<k>" (k-th file of that patient in raw path order);
- every DICOM is copied de-identified (PS3.15 Basic Profile, `write_deidentified`) to
  ``<out>/sources/<sample_id>.dcm`` and the manifest's path points there;
- problems name file keys ("F<hex>"), never raw paths; the id map, the file map (key -> raw
  path) and the secret stay beside the raw data (`IdMap`).

`burned_in_problems` flags files whose header says BurnedInAnnotation = YES (text such as a
name burned into the pixels, which no header profile removes), pseudonymised or not.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from cinelab.errors import Problem
from cinelab.formats.ingest import Ingested, ingest, write_ingested
from cinelab.io.dicom import read_dataset
from cinelab.prep.deid import (
    IdMap,
    burned_in_annotation,
    default_idmap_path,
    scrub_value,
    write_deidentified,
)

STAGE = "ingest"
SOURCES_DIR = "sources"
DEFER_BYTES = 1024
BURNED_IN_FIELD = "BurnedInAnnotation"
DICOM_LAYOUT = "dicom"


def burned_in_problems(manifest: pd.DataFrame, names: dict[str, str] | None = None
                       ) -> list[Problem]:
    """A problem per DICOM whose header flags burned-in annotation (kept in the manifest:
    a reviewer decides); `names` maps a path to the name problems show (a file key)."""
    problems = []
    for path in manifest["path"].astype(str):
        why = burned_in_annotation(read_dataset(path, defer_size=DEFER_BYTES))
        if why:
            problems.append(Problem(
                (names or {}).get(path, path), STAGE,
                f"{why}: the pixels may show identifying text that de-identification of "
                "the header cannot remove; review or mask them before sharing",
                column=BURNED_IN_FIELD, expected="NO", found="YES"))
    return problems


def protect_dicom_ingest(result: Ingested, root: str | Path, out: str | Path,
                         pseudonymise: bool = False,
                         idmap_path: str | Path | None = None) -> Ingested:
    """A DICOM-folder ingest as written: pseudonymised with `pseudonymise`, and in every
    case with burned-in annotation flagged in its problems."""
    if pseudonymise:
        return pseudonymise_ingested(result, root, out, idmap_path)
    return replace(result, problems=[*result.problems, *burned_in_problems(result.manifest)])


def deidentified_folder(root: str | Path, work: str | Path,
                        idmap_path: str | Path | None = None) -> Path:
    """Ingest the DICOM folder `root` pseudonymised into `work` (manifest.csv,
    problems.csv, sources/) and return ``work/sources``: a folder of de-identified copies
    named "<pseudonym>_<k>.dcm" that a predict can read instead of the raw folder."""
    result = pseudonymise_ingested(ingest(root, layout=DICOM_LAYOUT), root, work, idmap_path)
    write_ingested(result, work)
    return Path(work) / SOURCES_DIR


def pseudonymise_ingested(result: Ingested, root: str | Path, out: str | Path,
                          idmap_path: str | Path | None = None) -> Ingested:
    """The ingest with pseudonymous ids and de-identified copies (module docstring)."""
    root = Path(root).resolve()
    idmap = IdMap.open(idmap_path or default_idmap_path(root))
    rows, problems, keys = [], [], {}
    counts: dict[str, int] = {}
    manifest = result.manifest.sort_values("path", kind="stable")
    for row in manifest.to_dict("records"):
        raw = str(row["path"])
        keys[raw] = idmap.file_key(_relative(raw, root))
        patient = idmap.pseudonym(str(row["patient_id"]))
        counts[patient] = counts.get(patient, 0) + 1
        sid = f"{patient}_{counts[patient]}"
        dest = Path(out) / SOURCES_DIR / f"{sid}.dcm"
        try:
            write_deidentified(raw, dest, patient, idmap.secret)
        except Exception as exc:  # one bad file is reported and skipped
            problems.append(Problem.from_exception(keys[raw], STAGE, exc))
            continue
        idmap.add_file(sid, _relative(raw, root))
        rows.append({**row, "sample_id": sid, "patient_id": patient, "path": str(dest)})
    problems += burned_in_problems(manifest, keys)
    scrubbed = [_redact(p, root, idmap) for p in result.problems] + problems
    idmap.save()
    table = pd.DataFrame(rows, columns=list(result.manifest.columns))
    table.attrs.update(result.manifest.attrs, pseudonymised=True, idmap_path=str(idmap.path))
    return replace(result, manifest=table, problems=scrubbed)


def _relative(path: str, root: Path) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else resolved.name


def _redact(problem: Problem, root: Path, idmap: IdMap) -> Problem:
    """A read problem with its raw path (absolute or relative) replaced by the file's key."""
    if not problem.file:
        return problem
    relative = _relative(problem.file, root)
    key = idmap.file_key(relative)
    texts = sorted({problem.file, str(Path(problem.file).resolve()), relative}, key=len,
                   reverse=True)
    return Problem(**{k: scrub_value(v, texts, key) if isinstance(v, str) else v
                      for k, v in asdict(problem).items()})
