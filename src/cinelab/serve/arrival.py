"""Where studies arrive: DICOM instances (from the DICOM node or an upload) and uploaded
files (DICOM, a zip of them, AVI/MP4, PNG/JPEG, NIfTI), stored under the state folder and
recorded in the queue.

With pseudonymisation on, every DICOM instance is de-identified *before* anything is written
or logged (`cinelab.prep.deid`: PS3.15 basic profile, keyed pseudonym of the PatientID, keyed
UID remapping, so the instances of one study stay one study); uploaded non-DICOM files are
stored under a content hash, never under their own name.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid

from cinelab.errors import CinelabError, InputError
from cinelab.prep.deid import IdMap, deidentify_dataset, pseudonym
from cinelab.serve.config import Limits
from cinelab.serve.link import record_links, uids_of
from cinelab.serve.queue import HTTP_SOURCE, JobQueue
from cinelab.utils import atomic_path

QUEUE_DB, INCOMING, RESULTS, IDMAP = "queue.db", "incoming", "results", "idmap.csv"
LINKS, LINKS_SUFFIX = "links", ".tsv"
PARTIAL_PREFIX = ".partial-"
DICOM_SUFFIX = ".dcm"
#: uploaded file kinds that are not DICOM -> the modality they are routed as
FILE_MODALITIES = {".avi": "US", ".mp4": "US", ".png": "CR", ".jpg": "CR", ".jpeg": "CR",
                   ".nii": "MR", ".nii.gz": "MR"}
HASH_CHARS = 16
MODALITY = re.compile(r"^[A-Z]{2,16}$")
CHUNK = 1 << 20
#: the index of the route a study's metadata picks (None: no route)
RouteOf = Callable[[dict[str, Any]], int | None]


class LimitError(CinelabError):
    """An upload or a study is larger than the configured limits (HTTP 413)."""


@dataclass(frozen=True)
class StatePaths:
    """The state folder: queue database, incoming instances, results."""

    root: Path

    @property
    def db(self) -> Path:
        """The SQLite queue."""
        return self.root / QUEUE_DB

    def incoming(self, uid: str) -> Path:
        """Folder of one study's received files."""
        return self.root / INCOMING / _safe_uid(uid)

    def results(self, uid: str) -> Path:
        """Folder of one study's finished outputs (appears whole, by one rename)."""
        return self.root / RESULTS / _safe_uid(uid)

    def links(self, uid: str) -> Path:
        """Pseudonymised -> original UIDs of one study (kept only when asked for)."""
        return self.root / LINKS / f"{_safe_uid(uid)}{LINKS_SUFFIX}"

    def partial(self, uid: str) -> Path:
        """Where one study's outputs are written before that rename."""
        return self.root / RESULTS / f"{PARTIAL_PREFIX}{_safe_uid(uid)}"


def _safe_uid(uid: str) -> str:
    """A UID (digits and dots) or another key as a single, safe path component."""
    text = "".join(c if c.isalnum() or c in ".-_" else "_" for c in str(uid))
    if not text.strip("._") or len(text) > 128:
        raise InputError(None, "StudyInstanceUID", "a DICOM UID", f"{len(text)} characters")
    return text


def suffix_of(name: str) -> str:
    """Lower-case file suffix, with .nii.gz as one."""
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else Path(lower).suffix


def dataset_meta(ds: Dataset) -> dict[str, Any]:
    """What routing reads: modality, SOP class, series description (free text: it is only
    read to pick the route on arrival, never kept)."""
    return {"modality": str(ds.get("Modality", "") or ""),
            "sop_class": str(ds.get("SOPClassUID", "") or ""),
            "series_description": str(ds.get("SeriesDescription", "") or "")}


class Arrival:
    """Stores arriving instances and files and records them in the queue."""

    def __init__(self, queue: JobQueue, paths: StatePaths, limits: Limits,
                 pseudonymise: bool, route_of: RouteOf, link: bool = False) -> None:
        """`link`: keep each study's pseudonymised -> original UIDs (`StatePaths.links`)."""
        self.queue, self.paths, self.limits, self.route_of = queue, paths, limits, route_of
        self.secret = IdMap.open(paths.root / IDMAP).secret if pseudonymise else None
        self.link = link and self.secret is not None

    def _meta(self, found: dict[str, Any]) -> dict[str, Any]:
        """Modality, SOP class and the index of the route chosen now, before any
        de-identification removes the descriptions routes may read (None: no route)."""
        return {"modality": found["modality"], "sop_class": found["sop_class"],
                "route": self.route_of(found)}

    def accept_dataset(self, ds: Dataset, source: str) -> tuple[str, bool]:
        """Store one DICOM instance (de-identified first when configured); (study uid,
        whether it was new). LimitError when its study already holds the maximum."""
        meta = self._meta(dataset_meta(ds))
        original = uids_of(ds) if self.link else {}
        if self.secret is not None:
            pid = str(ds.get("PatientID", "") or "")
            deidentify_dataset(ds, pseudonym(pid, self.secret), self.secret)
        study, sop = str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        if not study or not sop:
            raise InputError(None, "StudyInstanceUID/SOPInstanceUID", "both present", "missing")
        if self.queue.has_instance(sop):
            return study, False
        self._check_room(study)
        path = self.paths.incoming(study) / f"{_safe_uid(sop)}{DICOM_SUFFIX}"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        if original:
            record_links(self.paths.links(study), original, uids_of(ds))
        return study, self.queue.add_instance(study, sop, str(path), meta, source)

    def _check_room(self, study: str) -> None:
        found = self.queue.get(study)
        if found is not None and found.n_instances >= self.limits.instances_per_study:
            raise LimitError(f"study holds the maximum of {self.limits.instances_per_study} "
                             "instances (limits.instances_per_study)")

    def accept_files(self, files: list[Path], modality: str | None, work: Path) -> list[str]:
        """Store uploaded files (zips unpacked into `work`); queue every study they make up;
        the study uids, in order. Non-DICOM files of one upload form one new study."""
        studies: list[str] = []
        loose: list[Path] = []
        for path in self._unpacked(files, work):
            if _is_dicom(path):
                study, _ = self.accept_dataset(_read_dicom(path), HTTP_SOURCE)
                studies += [] if study in studies else [study]
            elif suffix_of(path.name) in FILE_MODALITIES:
                loose.append(path)
            else:
                raise InputError(None, "file", "DICOM, zip, " + ", ".join(FILE_MODALITIES),
                                 f"a {suffix_of(path.name) or 'suffix-less'} file")
        if loose:
            studies.append(self._accept_loose(loose, modality))
        for study in studies:
            self.queue.enqueue(study)
        return studies

    def _unpacked(self, files: list[Path], work: Path) -> list[Path]:
        """`files` with each zip replaced by its members (bounded in count and bytes)."""
        out: list[Path] = []
        for path in files:
            if zipfile.is_zipfile(path):
                out += self._unzip(path, work / f"zip{len(out)}")
            else:
                out.append(path)
        return out

    def _unzip(self, path: Path, folder: Path) -> list[Path]:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) > self.limits.instances_per_study:
                raise LimitError(f"zip holds {len(members)} files; at most "
                                 f"{self.limits.instances_per_study} (limits.instances_per_study)")
            if sum(m.file_size for m in members) > self.limits.upload_bytes:
                raise LimitError("zip unpacks to more than limits.upload_bytes")
            folder.mkdir(parents=True, exist_ok=True)
            out = []
            for i, member in enumerate(members):  # names are never used as paths
                target = folder / f"{i:06d}{suffix_of(member.filename)}"
                with archive.open(member) as src, target.open("wb") as dst:
                    _copy_bounded(src, dst, member.file_size)
                out.append(target)
        return out

    def _accept_loose(self, files: list[Path], modality: str | None) -> str:
        """One new study of non-DICOM files, each stored under its content hash."""
        if len(files) > self.limits.instances_per_study:
            raise LimitError("more files than limits.instances_per_study")
        study = generate_uid()
        kind = (modality or FILE_MODALITIES[suffix_of(files[0].name)]).upper()
        if not MODALITY.match(kind):
            raise InputError(None, "modality", "a DICOM modality code (US, MR, CR, DX, ...)",
                             f"{len(kind)} characters")
        meta = self._meta({"modality": kind, "sop_class": "", "series_description": ""})
        for path in files:
            digest = _sha256(path)[:HASH_CHARS]
            target = self.paths.incoming(study) / f"{digest}{suffix_of(path.name)}"
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
            self.queue.add_instance(study, f"file:{study}:{digest}", str(target), meta,
                                    HTTP_SOURCE)
        return study


def _copy_bounded(src: Any, dst: Any, size: int) -> None:
    """Copy at most `size` bytes (a zip member's declared size); more is a LimitError."""
    copied = 0
    while chunk := src.read(CHUNK):
        copied += len(chunk)
        if copied > size:
            raise LimitError("a zip member is larger than it declares")
        dst.write(chunk)


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (DICM at byte 128) or a .dcm file."""
    with path.open("rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM" or suffix_of(path.name) == DICOM_SUFFIX


def _read_dicom(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, force=suffix_of(path.name) == DICOM_SUFFIX)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputError(None, "file", "a readable DICOM file", type(exc).__name__) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
