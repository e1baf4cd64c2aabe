"""Links from pseudonymised results back to the original study.

With pseudonymisation on, every stored instance carries keyed replacement UIDs, so the SR and
SEG written on them reference UIDs the sending PACS has never seen. When a forward
destination asks for ``link_to_original``, `Arrival` appends every (pseudonymised, original)
UID pair of a study to ``links/<study>.tsv`` in the state folder (folder 0700, files 0600:
the only place the originals are kept), and `relink` rewrites the outgoing copies of the
results with the original UIDs; the results on disk stay pseudonymised.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

#: the UIDs that tie a result to its sources, kept per instance
LINKED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
FOLDER_MODE, FILE_MODE = 0o700, 0o600
_LOCK = threading.Lock()


def uids_of(ds: Dataset) -> dict[str, str]:
    """The `LINKED` UIDs a dataset holds, by keyword."""
    return {k: str(ds.get(k)) for k in LINKED if ds.get(k)}


def record_links(path: Path, original: Mapping[str, str], pseudonymised: Mapping[str, str]
                 ) -> None:
    """Append the (pseudonymised, original) pairs of one instance to a study's link file."""
    lines = "".join(f"{pseudonymised[k]}\t{original[k]}\n" for k in original
                    if k in pseudonymised and pseudonymised[k] != original[k])
    if not lines:
        return
    path.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    with _LOCK:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            os.write(fd, lines.encode("ascii"))
        finally:
            os.close(fd)


def read_links(path: Path) -> dict[str, str]:
    """Pseudonymised -> original UIDs of one study ({} when none were kept)."""
    if not path.is_file():
        return {}
    pairs = (line.split("\t") for line in path.read_text().splitlines() if "\t" in line)
    return {pseudo: original for pseudo, original in pairs}


def relink(ds: Dataset, links: Mapping[str, str]) -> Dataset:
    """`ds` with every UID value found in `links` (at any depth) replaced by its original."""

    def swap(_: Dataset, element: DataElement) -> None:
        if element.VR != "UI" or element.value is None:
            return
        value: Any = element.value
        if isinstance(value, MultiValue | list):
            element.value = [links.get(str(v), str(v)) for v in value]
        else:
            element.value = links.get(str(value), value)

    ds.walk(swap)
    return ds
