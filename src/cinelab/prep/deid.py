"""Pseudonymisation: keyed pseudonyms, an id map kept beside the raw data, DICOM de-identification.

A study id (e.g. a REDCap record number in the DICOM PatientID) becomes
"P" + 12 hex digits of HMAC-SHA256(secret, study id). The secret is drawn once and saved beside
the id map (`<raw_root>/.cinelab-secret`), so pseudonyms are stable across reruns and cannot be
recomputed by anyone who does not hold the raw data. The id map (`.cinelab-idmap.csv`: study id
-> pseudonym) and the file map (`.cinelab-idmap.files.csv`: output key -> raw path relative to
the raw root) stay with the raw data; nothing written by ingest refers to them.

De-identified DICOM copies lose every tag in PHI_TAGS, every person name, date and time
(VR PN, DA, DT, TM) and every private tag; PatientID/PatientName become the pseudonym and
instance UIDs are replaced by keyed, deterministic ones (so a rerun writes identical files).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cinelab.errors import InputError
from cinelab.io.dicom import read_dataset
from cinelab.utils import atomic_path, write_csv

PSEUDONYM_PREFIX = "P"
FILE_KEY_PREFIX = "F"
PSEUDONYM_HEX = 12
IDMAP_NAME = ".cinelab-idmap.csv"
SECRET_NAME = ".cinelab-secret"
FILES_SUFFIX = ".files.csv"
SECRET_BYTES = 32
SECRET_MODE = 0o600
REDACTED = "[redacted]"
UUID_ROOT = "2.25."  # UIDs derived from a UUID (PS3.5 B.2)
UUID_BYTES = 16
UUID_VERSION = 5  # name-based
DEID_METHOD = "cinelab: PHI tags, names, dates, times, private tags removed"
PHI_VRS = ("PN", "DA", "DT", "TM")  # every person name, date, date-time and time
PHI_TAGS = (
    "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientBirthName",
    "PatientMotherBirthName", "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence",
    "IssuerOfPatientID", "PatientAddress", "PatientTelephoneNumbers", "MilitaryRank",
    "MedicalRecordLocator", "PatientComments", "AdditionalPatientHistory",
    "AccessionNumber", "StudyID", "RequestAttributesSequence", "ImageComments",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "DeviceUID", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
    "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime",
    "AcquisitionDateTime", "SourceApplicationEntityTitle",
)
TYPE2_BLANKED = ("PatientBirthDate", "StudyDate", "StudyTime", "ReferringPhysicianName",
                 "AccessionNumber", "StudyID")  # type 2 in the US IODs: kept, emptied
REMAPPED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                 "FrameOfReferenceUID", "ReferencedSOPInstanceUID", "MediaStorageSOPInstanceUID",
                 "SynchronizationFrameOfReferenceUID")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def _key_bytes(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def pseudonym(patient_id: str, secret: bytes | str) -> str:
    """'P' + 12 hex digits of HMAC-SHA256(secret, patient id), stable for one secret."""
    digest = hmac.new(_key_bytes(secret), str(patient_id).strip().encode(), hashlib.sha256)
    return PSEUDONYM_PREFIX + digest.hexdigest()[:PSEUDONYM_HEX]


def file_key(relative_path: str, secret: bytes | str) -> str:
    """A non-identifying key for a raw file ('F' + 12 hex), for problems about that file."""
    digest = hmac.new(_key_bytes(secret), b"file:" + relative_path.encode(), hashlib.sha256)
    return FILE_KEY_PREFIX + digest.hexdigest()[:PSEUDONYM_HEX]


def safe_id(text: str) -> str:
    """Text usable as a file name: anything outside [A-Za-z0-9._-] becomes '_'."""
    return _SAFE_ID.sub("_", str(text).strip()) or "_"


def scrub_value(text: str, values: Iterable[str], replacement: str = REDACTED) -> str:
    """`text` with every occurrence of any of `values` (longest first) replaced."""
    out = str(text)
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        out = out.replace(value, replacement)
    return out


def phi_values(ds: Dataset) -> list[str]:
    """The PHI text held by a header: PHI_TAGS values, names, dates and times, name parts."""
    found: list[str] = []

    def collect(_: Dataset, elem: DataElement) -> None:
        if elem.VR in ("SQ",) or not (elem.keyword in PHI_TAGS or elem.VR in PHI_VRS):
            return
        values = elem.value if _multi(elem.value) else [elem.value]
        for value in values:
            text = str(value).strip()
            if text:
                found.append(text)
                found.extend(part for part in re.split(r"[\^=]", text) if len(part) > 1)

    ds.walk(collect)
    return sorted(set(found))


def _multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def deidentify_dataset(ds: Dataset, pseudonym_id: str, secret: bytes | str) -> Dataset:
    """Remove PHI from `ds` in place (see module docstring); return it."""
    doomed: list[tuple[Dataset, int]] = []

    def mark(dataset: Dataset, elem: DataElement) -> None:
        if elem.tag.is_private or elem.keyword in PHI_TAGS or elem.VR in PHI_VRS:
            doomed.append((dataset, elem.tag))
        elif elem.keyword in REMAPPED_UIDS and elem.value:
            elem.value = remap_uid(str(elem.value), secret)

    ds.walk(mark)
    blanks = [kw for kw in TYPE2_BLANKED if kw in ds]
    for dataset, tag in doomed:
        if tag in dataset:
            del dataset[tag]
    for keyword in blanks:  # required-but-may-be-empty attributes stay, empty
        setattr(ds, keyword, "")
    ds.PatientID = pseudonym_id
    ds.PatientName = pseudonym_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
        if "SourceApplicationEntityTitle" in meta:
            del meta.SourceApplicationEntityTitle
    return ds


def remap_uid(uid: str, secret: bytes | str) -> str:
    """A keyed, deterministic replacement UID: 2.25.<a name-based UUID from HMAC(secret, uid)>."""
    digest = hmac.new(_key_bytes(secret), b"uid:" + uid.encode(), hashlib.sha256).digest()
    return UUID_ROOT + str(uuid.UUID(bytes=digest[:UUID_BYTES], version=UUID_VERSION).int)


def write_deidentified(src: str | Path, dst: str | Path, pseudonym_id: str,
                       secret: bytes | str) -> Path:
    """Write a de-identified copy of the DICOM at `src` to `dst` (pixel data kept as stored)."""
    ds = read_dataset(src)
    deidentify_dataset(ds, pseudonym_id, secret)
    with atomic_path(dst) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(dst)


def default_idmap_path(raw_root: str | Path) -> Path:
    """`<raw_root>/.cinelab-idmap.csv`."""
    return Path(raw_root) / IDMAP_NAME


@dataclass
class IdMap:
    """Study id -> pseudonym and output key -> raw relative path, kept beside the raw data."""

    path: Path
    secret: bytes
    ids: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def files_path(self) -> Path:
        """The file map beside the id map (`<idmap stem>.files.csv`)."""
        return self.path.with_name(self.path.stem + FILES_SUFFIX)

    @classmethod
    def open(cls, path: str | Path) -> IdMap:
        """Load the id map at `path`, or start one with a new random secret saved beside it."""
        path = Path(path)
        secret = _load_or_create_secret(path)
        ids = _read_pairs(path, ("study_id", "pseudonym"))
        files = _read_pairs(path.with_name(path.stem + FILES_SUFFIX), ("key", "raw_path"))
        return cls(path, secret, ids, files)

    def pseudonym(self, study_id: str) -> str:
        """The pseudonym of a study id (recorded in the map)."""
        key = str(study_id).strip()
        self.ids[key] = pseudonym(key, self.secret)
        return self.ids[key]

    def file_key(self, relative_path: str) -> str:
        """A non-identifying key for a raw file (recorded in the file map)."""
        key = file_key(relative_path, self.secret)
        self.files[key] = relative_path
        return key

    def add_file(self, key: str, relative_path: str) -> None:
        """Record which raw file an output key (e.g. a sample id) came from."""
        self.files[key] = relative_path

    def save(self) -> None:
        """Write both maps atomically (sorted, so reruns produce the same files)."""
        ids = pd.DataFrame(sorted(self.ids.items()), columns=["study_id", "pseudonym"])
        files = pd.DataFrame(sorted(self.files.items()), columns=["key", "raw_path"])
        write_csv(ids, self.path)
        write_csv(files, self.files_path)


def _load_or_create_secret(idmap_path: Path) -> bytes:
    """The secret beside the id map; a missing secret for an existing map is an error."""
    secret_path = idmap_path.with_name(SECRET_NAME)
    if secret_path.exists():
        text = secret_path.read_text().strip()
        if not text:
            raise InputError(secret_path, "secret", "a hex secret", "an empty file")
        return text.encode()
    if idmap_path.exists():
        raise InputError(secret_path, "secret", f"the secret that made {idmap_path.name}",
                         "no secret file", fix="restore it from a backup; without it the same "
                         "study ids would get different pseudonyms")
    try:
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    except OSError as exc:
        raise InputError(secret_path, "secret", "a writable place beside the raw data",
                         f"{type(exc).__name__}: {exc.strerror}",
                         fix="pass idmap_path= a writable path kept with the raw data (not "
                         "with the outputs)") from exc
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(SECRET_BYTES))
    return secret_path.read_text().strip().encode()


def _read_pairs(path: Path, columns: tuple[str, str]) -> dict[str, str]:
    """Two text columns of a CSV as a dict ({} when the file is absent)."""
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(path, ", ".join(missing), f"columns {list(columns)}",
                         f"columns {list(table.columns)}")
    return dict(zip(table[columns[0]], table[columns[1]], strict=True))
