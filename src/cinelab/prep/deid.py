"""Pseudonymisation: keyed pseudonyms, an id map kept beside the raw data, DICOM de-identification.

A study id (e.g. a REDCap record number in the DICOM PatientID) becomes
"P" + 12 hex digits of HMAC-SHA256(secret, study id). The secret is drawn once and saved beside
the id map (`<raw_root>/.cinelab-secret`), so pseudonyms are stable across reruns and cannot be
recomputed by anyone who does not hold the raw data. The id map (`.cinelab-idmap.csv`: study id
-> pseudonym) and the file map (`.cinelab-idmap.files.csv`: output key -> raw path relative to
the raw root) stay with the raw data; nothing written by ingest refers to them.

De-identified DICOM copies follow the DICOM PS3.15 Basic Application Level Confidentiality
Profile (Annex E, Table E.1-1, in `prep.ps315`), applied by dicognito's dataset walker (which
recurses into every sequence item and visits the file meta):

- every attribute the table lists, at any depth, gets the table's action: X removed, Z emptied,
  D a dummy value, U a keyed deterministic UID (`remap_uid`); where the table offers a choice
  (X/Z, X/D, X/Z/D) the attribute is removed, Z/D is emptied, and the reference sequences
  marked X/Z/U* are kept with the UIDs inside them replaced. So descriptions (Study/Series
  Description, ProtocolName, ImageComments), addresses, occupation, requesting service, the
  referenced-patient sequence and PatientAge (ages over 89 identify) are gone;
- every private element (odd group, private creators included) is removed, and so are the
  curve (50xx) and overlay (60xx) groups, whose comments, descriptions and labels are free text;
- the file meta keeps only the version, SOP class/instance UIDs, transfer syntax and the
  implementation identity (set to cinelab's): source/sending/receiving AE titles, private
  information and its creator UID are dropped;
- whatever the table does not list is left to dicognito's own handlers: any other person name
  becomes a made-up one, other dates/times are shifted, other ids/addresses replaced, and any
  other non-class UID gets the keyed UID;
- PatientID and PatientName become the pseudonym; PatientIdentityRemoved = YES and the
  de-identification method (with code 113100, Basic Application Confidentiality Profile) are
  recorded.

Everything is keyed by the secret (dicognito's seed is HMAC(secret)), so a rerun writes
byte-identical files. Pixel data, geometry and timing (Rows, Columns, NumberOfFrames, FrameTime,
PixelSpacing, SequenceOfUltrasoundRegions, ...) are not in the table and are kept.

`burned_in_annotation` reports text burned into the pixels (flag or top-band heuristic); the
profile cannot clean pixels, so ingests should report such files.
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

import numpy as np
import pandas as pd
from dicognito.anonymizer import Anonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID_dictionary
from pydicom.valuerep import DA, DT, TM

from cinelab.errors import InputError
from cinelab.io.dicom import read_dataset
from cinelab.prep.ps315 import BASIC_PROFILE, REPEATING_GROUPS
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
DEID_METHOD = "cinelab: PS3.15 Basic Profile (dicognito)"  # LO: at most 64 characters
DEID_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")  # CID 7050
IMPLEMENTATION_VERSION = "CINELAB_DEID"
PHI_VRS = ("PN", "DA", "DT", "TM")  # every person name, date, date-time and time
META_KEPT = (0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010)  # length, version,
# SOP class and instance, transfer syntax
REPEATING_REMOVED = (0x5000, 0x6000)  # curve and overlay groups (50xx, 60xx): all removed
REPEATING_MASK = 0xFF00
DUMMY_TEXT = "ANONYMOUS"
DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0",
         "AS": "000D", "PN": DUMMY_TEXT}
TEXT_VRS = ("AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "UR")
BURNED_IN_BAND = 0.12  # the top fraction of the rows examined for burned-in text
BURNED_IN_MIN_ROWS = 8
BURNED_IN_STEP = 0.25  # a "sharp step": a horizontal neighbour difference > 25 % of full scale
BURNED_IN_DENSITY = 0.02  # text-like when more than 2 % of the band's pixels are sharp steps
BURNED_IN_SAMPLES = 16  # frames sampled for the temporal median (text does not move)
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
_TEMPORAL = {  # the forms dicognito can shift; anything else in an unlisted element is removed
    "DA": (re.compile(r"\d{8}"), DA),
    "DT": (re.compile(r"\d{4}(\d{2}){0,5}(\.\d{1,6})?([+-]\d{4})?"), DT),
    "TM": (re.compile(r"\d{2}(\d{2}){0,2}(\.\d{1,6})?"), TM),
}
_FAILED_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")


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


def profile_action(tag: int) -> str | None:
    """The Basic Profile action for a tag (None when the table does not list it)."""
    action = BASIC_PROFILE.get(int(tag))
    if action is not None:
        return action
    group, element = int(tag) >> 16, int(tag) & 0xFFFF
    if group & 1:
        return "X"  # private attributes
    for base, elem, code in REPEATING_GROUPS:
        if group & REPEATING_MASK == base and elem in (None, element):
            return code
    return None


def _is_phi(elem: DataElement) -> bool:
    """Does de-identification remove or replace this element?"""
    tag = elem.tag
    if tag.group == 0x0002:
        return int(tag) not in META_KEPT
    return (profile_action(int(tag)) is not None or elem.VR in PHI_VRS
            or tag.group & REPEATING_MASK in REPEATING_REMOVED)


def phi_values(ds: Dataset) -> list[str]:
    """The PHI text a header holds: the text of every element that de-identification removes
    or replaces (profile attributes, names, dates, times, private, file meta), name parts too."""
    found: list[str] = []

    def collect(_: Dataset, elem: DataElement) -> None:
        if elem.VR == "SQ" or not _is_phi(elem):
            return
        values = elem.value if _multi(elem.value) else [elem.value]
        for value in values:
            if value is None:
                continue
            if isinstance(value, bytes | bytearray):
                value = value.decode("latin-1")
            text = str(value).strip().strip("\x00")
            if text and text not in (PYDICOM_IMPLEMENTATION_UID, IMPLEMENTATION_VERSION):
                found.append(text)
                found.extend(part for part in re.split(r"[\^=]", text) if len(part) > 1)

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.walk(collect)
    ds.walk(collect)
    return sorted(set(found))


def _multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _is_class_uid(elem: DataElement, value: str) -> bool:
    """SOP class, transfer syntax and other registered (well-known) UIDs are not identifying."""
    return (elem.keyword.endswith("ClassUID") or elem.keyword == "TransferSyntaxUID"
            or value in UID_dictionary)


class _BasicProfile(ElementAnonymizer):
    """The PS3.15 Basic Profile as a dicognito element handler (runs before dicognito's own).

    Returns True for every element it decided on (so dicognito leaves it alone), False for the
    elements the table does not list (dicognito's name/date/id/address handlers then run).
    """

    def __init__(self, secret: bytes | str) -> None:
        self.secret = secret

    def __call__(self, dataset: Dataset, elem: DataElement) -> bool:
        tag = elem.tag
        if tag.group == 0x0002 and isinstance(dataset, FileMetaDataset):
            return True  # the file meta is rebuilt afterwards (see _clean_file_meta)
        if tag.group in (0x0000, 0x0002):  # command or file meta elements inside the data set
            del dataset[tag]
            return True
        if tag.is_private or tag.group & REPEATING_MASK in REPEATING_REMOVED:
            del dataset[tag]
            return True
        action = profile_action(int(tag))
        if action is None:
            if elem.VR == "UI":
                self._remap(elem)
                return True
            if elem.VR in _TEMPORAL:
                return self._drop_unreadable_temporal(dataset, elem)
            return False
        if action == "U" or (action.endswith("U*") and elem.VR == "UI"):
            self._remap(elem, listed=True)
        elif action.endswith("U*"):
            pass  # a reference sequence: kept, the UIDs inside are replaced as it is walked
        elif action.startswith("X"):
            del dataset[tag]
        elif action.startswith("Z"):
            self._empty(elem)
        else:  # D
            self._dummy(elem)
        return True

    @staticmethod
    def _drop_unreadable_temporal(dataset: Dataset, elem: DataElement) -> bool:
        """Remove a date/time dicognito could not shift (and empty a date's unreadable partner
        time, which dicognito shifts with it); False leaves a readable one to dicognito."""
        partner, name = None, elem.keyword.replace("Date", "Time")
        if elem.VR == "DA" and name != elem.keyword and name in dataset:
            partner = dataset.data_element(name)
        if partner is not None and partner.VR == "TM" and (
                not _readable(partner) or partner.VM > elem.VM):  # dicognito pairs them
            partner.value = None  # emptied, not deleted: the walk still has to visit it
        if _readable(elem):
            return False
        del dataset[elem.tag]
        return True

    def _remap(self, elem: DataElement, listed: bool = False) -> None:
        """Keyed new UIDs: always for the table's U attributes, else for non-class UIDs."""
        values = list(elem.value) if _multi(elem.value) else [elem.value]
        new = [v if not v or (not listed and _is_class_uid(elem, str(v)))
               else remap_uid(str(v), self.secret) for v in values]
        elem.value = new if _multi(elem.value) else new[0]

    @staticmethod
    def _empty(elem: DataElement) -> None:
        elem.value = Sequence() if elem.VR == "SQ" else None

    def _dummy(self, elem: DataElement) -> None:
        if elem.VR == "UI":
            self._remap(elem)
        elif elem.VR in DUMMY:
            elem.value = DUMMY[elem.VR]
        elif elem.VR in TEXT_VRS:
            elem.value = DUMMY_TEXT
        else:  # sequences, binary and numeric values: emptied
            self._empty(elem)


def _readable(elem: DataElement) -> bool:
    """Is every value of a DA/DT/TM element in a form dicognito can shift?"""
    pattern, parse = _TEMPORAL[elem.VR]
    for value in (elem.value if _multi(elem.value) else [elem.value]):
        text = str(value or "").strip()
        if not text:
            continue
        try:
            parse(text)
        except (ValueError, TypeError, OverflowError):
            return False
        if not pattern.fullmatch(text):
            return False
    return True


def _anonymizer(secret: bytes | str) -> Anonymizer:
    """dicognito's anonymizer seeded by the secret, with the Basic Profile handler first."""
    seed = hmac.new(_key_bytes(secret), b"dicognito", hashlib.sha256).hexdigest()
    anonymizer = Anonymizer(seed=seed)
    anonymizer.add_element_handler(_BasicProfile(secret))
    return anonymizer


def _clean_file_meta(ds: Dataset) -> None:
    """Keep only the file meta elements that identify the object, not its origin."""
    meta = ds.file_meta
    for tag in [t for t in meta.keys() if int(t) not in META_KEPT]:
        del meta[tag]
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION


def deidentify_dataset(ds: Dataset, pseudonym_id: str, secret: bytes | str) -> Dataset:
    """De-identify `ds` in place by the PS3.15 Basic Profile (see module docstring); return it."""
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    try:
        _anonymizer(secret).anonymize(ds)
    except Exception as exc:  # a value no handler can read: refuse, naming only the tag
        where = _FAILED_TAG.search(str(exc))
        tag = f"({where.group(1)},{where.group(2)})" if where else "an element"
        raise InputError(ds.get("filename"), f"DICOM header {tag}",
                         "values the de-identifier can read",
                         f"{type(exc).__name__} while de-identifying {tag}",
                         fix="fix or remove that element; no copy was written") from None
    ds.remove_private_tags()  # already gone; kept as a guard should a handler change
    _clean_file_meta(ds)
    ds.PatientID = pseudonym_id
    ds.PatientName = pseudonym_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = DEID_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    return ds


def burned_in_annotation(ds: Dataset | None, frames: np.ndarray | None = None) -> str | None:
    """Why the pixels probably hold burned-in text (a name, a date...), or None.

    1. BurnedInAnnotation (0028,0301) == "YES" in the header (`ds` may be None for videos).
    2. With `frames` ((H, W), (T, H, W) or (T, H, W, C)): a cheap heuristic on the top band
       (the top 12 % of the rows, at least 8), where scanners print patient name, date and
       settings. Text is static and high-contrast, so the band's median over up to 16 evenly
       sampled frames (moving anatomy and speckle average out) is tested for dense sharp
       horizontal steps: more than 2 % of its pixels differ from their right-hand neighbour by
       over 25 % of the full scale (the integer type's maximum, else the sampled range).
       Cheap, not OCR: expect false positives on bright static graphics (logos, depth
       scales) and misses on text elsewhere.

    The Basic Profile does not clean pixel data, so an ingest should report files flagged here.
    """
    flag = "" if ds is None else str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation (0028,0301) is YES"
    if frames is None:
        return None
    arr = np.asarray(frames)
    integer_max = np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4:
        arr = arr.mean(axis=-1)
    if arr.ndim != 3 or min(arr.shape[1:]) < BURNED_IN_MIN_ROWS or arr.shape[0] == 0:
        return None
    picks = np.unique(np.linspace(0, len(arr) - 1, min(len(arr), BURNED_IN_SAMPLES)).astype(int))
    rows = max(BURNED_IN_MIN_ROWS, round(arr.shape[1] * BURNED_IN_BAND))
    sample = arr[picks].astype(np.float32)
    full = integer_max if integer_max is not None else sample.max() - sample.min()
    if not np.isfinite(full) or full <= 0:
        return None
    band = np.median(sample[:, :rows], axis=0)
    density = float((np.abs(np.diff(band, axis=1)) > BURNED_IN_STEP * float(full)).mean())
    if density > BURNED_IN_DENSITY:
        return (f"text-like content in the top {rows} rows ({density:.1%} of the pixels are "
                f"sharp steps, threshold {BURNED_IN_DENSITY:.0%})")
    return None


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
