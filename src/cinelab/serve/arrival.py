"""Where studies arrive: DICOM instances (from the DICOM node or an upload) and uploaded
files (DICOM, a zip of them, AVI/MP4, PNG/JPEG, NIfTI), stored under the state folder and
recorded in the queue.

With pseudonymisation on, every DICOM instance is de-identified *before* anything is written
or logged (`cinelab.prep.deid`: PS3.15 basic profile, keyed pseudonym of the PatientID, keyed
UID remapping, so the instances of one study stay one study); uploaded non-DICOM files are
stored under a content hash, never under their own name. The profile removes the
SeriesDescription; with ``pseudonymise.series_description`` (a regex of allowed words, after
PS3.15's Clean Descriptors Option) it is put back as only the words that regex matches
(`clean_description`): "4CH cine PATIENT-12345 John" is stored as "4CH".

An instance whose BurnedInAnnotation is YES (text such as names burned into the pixels,
which de-identification of the header cannot remove) is, by the config's
``burned_in_annotation``, either refused (`BurnedInError`: C-STORE 0xC000, HTTP 422) or
accepted with the problem recorded on its study (``meta["problems"]``, shown by the API and
the review page).
"""

from __future__ import annotations

import hashlib
import os
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
from cinelab.serve.queue import HTTP_SOURCE, JobQueue, LimitError
from cinelab.utils import atomic_path

QUEUE_DB, INCOMING, RESULTS, IDMAP = "queue.db", "incoming", "results", "idmap.csv"
LINKS, LINKS_SUFFIX = "links", ".tsv"
PARTIAL_PREFIX, LINK_PREFIX, VERSION_INFIX = ".partial-", ".link-", ".v"
DICOM_SUFFIX = ".dcm"
DESCRIPTION_CHARS = 64  # SeriesDescription is an LO
#: uploaded file kinds that are not DICOM -> the modality they are routed as
FILE_MODALITIES = {".avi": "US", ".mp4": "US", ".png": "CR", ".jpg": "CR", ".jpeg": "CR",
                   ".nii": "MR", ".nii.gz": "MR"}
HASH_CHARS = 16
MODALITY = re.compile(r"^[A-Z]{2,16}$")
CHUNK = 1 << 20
#: the index of the route a study's metadata picks (None: no route)
RouteOf = Callable[[dict[str, Any]], int | None]


BURNED_IN_FLAG, BURNED_IN_REFUSE = "flag", "refuse"
BURNED_IN_PROBLEM = ("burned-in annotation: an instance has BurnedInAnnotation YES (text in "
                     "its pixels may identify the patient; processed anyway)")

__all__ = ["Arrival", "BurnedInError", "LimitError", "StatePaths"]


class BurnedInError(CinelabError):
    """An instance with burned-in annotation, refused by ``burned_in_annotation: refuse``."""


def burned_in(ds: Dataset) -> bool:
    """Whether the instance declares annotation burned into its pixels."""
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


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
        """One study's current finished outputs: a link to its latest version's folder
        (swapped whole, by one rename)."""
        return self.root / RESULTS / _safe_uid(uid)

    def version(self, uid: str, version: int) -> Path:
        """Folder of one version of a study's outputs (`results` links the current one)."""
        return self.root / RESULTS / f"{_safe_uid(uid)}{VERSION_INFIX}{int(version)}"

    def publish(self, uid: str, version: int) -> Path:
        """Make `version` the study's current results: ``results/<uid>`` swapped onto it
        by one rename of a fresh link (readers see the old or the new one, never none)."""
        link, target = self.results(uid), self.version(uid, version)
        if link.is_dir() and not link.is_symlink():  # a folder of an older release
            os.replace(link, self.version(uid, 0))
        fresh = link.with_name(f"{LINK_PREFIX}{link.name}")
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(target.name)
        os.replace(fresh, link)
        return link

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


def clean_description(text: str, allowed: str) -> str | None:
    """Only the distinct matches of the `allowed` regex in `text` (whitespace collapsed,
    joined by a space, at most 64 characters); None when nothing matches."""
    words: list[str] = []
    for match in re.finditer(allowed, text):
        word = " ".join(match.group(0).split())
        if word and word not in words and \
                len(" ".join([*words, word])) <= DESCRIPTION_CHARS:
            words.append(word)
    return " ".join(words) or None


def dataset_meta(ds: Dataset) -> dict[str, Any]:
    """What routing reads: modality, SOP class, series description (free text: it is only
    read to pick the route on arrival, never kept)."""
    return {"modality": str(ds.get("Modality", "") or ""),
            "sop_class": str(ds.get("SOPClassUID", "") or ""),
            "series_description": str(ds.get("SeriesDescription", "") or "")}


class Arrival:
    """Stores arriving instances and files and records them in the queue."""

    def __init__(self, queue: JobQueue, paths: StatePaths, limits: Limits,
                 pseudonymise: bool, route_of: RouteOf, link: bool = False,
                 burned_in: str = BURNED_IN_FLAG, series_words: str | None = None) -> None:
        """`link`: keep each study's pseudonymised -> original UIDs (`StatePaths.links`);
        `burned_in`: "flag" or "refuse" instances with burned-in annotation; `series_words`:
        regex of the SeriesDescription words de-identification keeps (None: none)."""
        self.queue, self.paths, self.limits, self.route_of = queue, paths, limits, route_of
        self.burned_in, self.series_words = burned_in, series_words
        self.secret = IdMap.open(paths.root / IDMAP).secret if pseudonymise else None
        self.link = link and self.secret is not None

    def _meta(self, found: dict[str, Any]) -> dict[str, Any]:
        """Modality, SOP class and the index of the route chosen now, before any
        de-identification removes the descriptions routes may read (None: no route)."""
        return {"modality": found["modality"], "sop_class": found["sop_class"],
                "route": self.route_of(found)}

    def accept_dataset(self, ds: Dataset, source: str) -> tuple[str, bool]:
        """Store one DICOM instance (de-identified first when configured); (study uid,
        whether it was new). LimitError when its study already holds the maximum (checked
        atomically with the insert), BurnedInError when refused for burned-in annotation."""
        meta = self._meta(dataset_meta(ds))
        problems = []
        if burned_in(ds):
            if self.burned_in == BURNED_IN_REFUSE:
                raise BurnedInError("BurnedInAnnotation is YES: refused "
                                    "(burned_in_annotation: refuse)")
            problems.append(BURNED_IN_PROBLEM)
        original = uids_of(ds) if self.link else {}
        if self.secret is not None:
            pid = str(ds.get("PatientID", "") or "")
            described = str(ds.get("SeriesDescription", "") or "")
            deidentify_dataset(ds, pseudonym(pid, self.secret), self.secret)
            cleaned = clean_description(described, self.series_words) \
                if self.series_words else None
            if cleaned:
                ds.SeriesDescription = cleaned
        study, sop = str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        if not study or not sop:
            raise InputError(None, "StudyInstanceUID/SOPInstanceUID", "both present", "missing")
        if self.queue.has_instance(sop):
            return study, False
        path = self.paths.incoming(study) / f"{_safe_uid(sop)}{DICOM_SUFFIX}"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        try:
            added = self.queue.add_instance(study, sop, str(path), meta, source,
                                            limit=self.limits.instances_per_study,
                                            problems=problems)
        except LimitError:
            path.unlink(missing_ok=True)  # refused: not one of the study's instances
            raise
        if original and added:
            record_links(self.paths.links(study), original, uids_of(ds))
        return study, added

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
