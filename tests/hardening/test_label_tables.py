"""Issue 12: every pipeline's user label table goes through `io.table.read_table`, so an
empty, binary or ragged CSV is a one-line InputError naming the file (and the line), never a
pandas traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cinelab.data.manifest import new_manifest
from cinelab.errors import InputError
from cinelab.evaluate.classification import read_labels
from cinelab.pipelines.age.layout import read_ages
from cinelab.pipelines.cmr.layouts import with_labels
from cinelab.pipelines.cxr.layout import read_cxr_labels
from cinelab.pipelines.cxr.nih import read_nih
from cinelab.pipelines.echonet.sources import read_labels as echonet_labels
from cinelab.pipelines.rvf.layout import read_rvf_cohort


def _rvf(csv: Path) -> object:
    (csv.parent / "dicom").mkdir(exist_ok=True)
    splits = csv.parent / "splits.csv"
    splits.write_text("patient_id,split\np1,train\n")
    return read_rvf_cohort(csv.parent / "dicom", csv, splits)


READERS: dict[str, Callable[[Path], object]] = {
    "rvf classes": _rvf,
    "cxr labels": read_cxr_labels,
    "nih csv": lambda csv: read_nih(csv.parent, csv=csv),
    "age table": read_ages,
    "cmr labels": lambda csv: with_labels(new_manifest([{"sample_id": "a", "path": "a"}]),
                                          csv),
    "echonet evaluate --labels": echonet_labels,
    "classification evaluate --labels": read_labels,
}
BAD = {
    "empty": (b"", "file", "an empty file (0 bytes)"),
    "binary": (b"PK\x03\x04" + bytes(100), "file", "binary data (a zip archive (.xlsx, .zip, "
                                                   "...))"),
    "ragged": (b"sample_id,label\na,1\nb,0,1,1\n", "line 3", "4 fields"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_bad_label_table_is_one_line_error(reader: str, bad: str, tmp_path: Path) -> None:
    content, field, found = BAD[bad]
    csv = tmp_path / "labels.csv"
    csv.write_bytes(content)
    with pytest.raises(InputError) as err:
        READERS[reader](csv)
    assert (err.value.path, err.value.field, err.value.found) == (str(csv), field, found)
    assert "\n" not in str(err.value)


def test_cmr_labels_still_join(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("sample_id,EF\n007,55.5\n")
    manifest = new_manifest([{"sample_id": "007", "path": "a.nii.gz"}])
    assert with_labels(manifest, csv)["EF"].tolist() == [55.5]  # ids stay text: '007'
