"""io.table.read_table: encodings, empty/binary/ragged files, columns and dtypes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinelab.errors import InputError
from cinelab.io.table import TableWarning, read_table


def _csv(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    return path


def test_utf8_bom_and_text_columns(tmp_path: Path) -> None:
    df = read_table(_csv(tmp_path, b"\xef\xbb\xbfFileName,EF\n007,55.5\n"),
                    required=["FileName"], text_columns=["filename"])
    assert df.to_dict("list") == {"FileName": ["007"], "EF": [55.5]}
    assert df.attrs == {"encoding": "utf-8", "warnings": []}


def test_latin1_is_read_with_a_recorded_warning(tmp_path: Path) -> None:
    path = _csv(tmp_path, "name,x\nJosé,1\n".encode("latin-1"))
    with pytest.warns(TableWarning, match="not UTF-8 \\(byte 0xe9 at offset 10\\)"):
        df = read_table(path)
    assert df["name"].tolist() == ["José"] and df.attrs["encoding"] == "latin-1"
    assert len(df.attrs["warnings"]) == 1


@pytest.mark.parametrize(("data", "field", "found"), [
    (b"", "file", "an empty file (0 bytes)"),
    (b"\n \n", "file", "only whitespace"),
    (b"a,b\x00\n1,2\n", "file", "binary data (1 control bytes in the first 9)"),
    (b"PK\x03\x04rest", "file", "binary data (a zip archive (.xlsx, .zip, ...))"),
    (b"a,b\n1,2\n3,4,5\n", "line 3", "3 fields"),
    (b"a,b\n1,2,3\n", "line 2", "3 fields"),
    (b"a,b\n1,2\n", "columns", "missing ['c'] (columns: ['a', 'b'])"),
])
def test_refused_tables_name_file_field_and_found(tmp_path: Path, data: bytes, field: str,
                                                  found: str) -> None:
    path = _csv(tmp_path, data)
    with pytest.raises(InputError) as err:
        read_table(path, required=["a", "b", "c"] if field == "columns" else ())
    assert (err.value.path, err.value.field, err.value.found) == (str(path), field, found)


def test_trailing_separator_does_not_shift_columns(tmp_path: Path) -> None:
    df = read_table(_csv(tmp_path, b"a,b,\n1,2,\n"))
    assert df[["a", "b"]].to_dict("list") == {"a": [1], "b": [2]}


def test_bad_dtype_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_table(_csv(tmp_path, b"a\nx\n"), dtype={"a": float})
    assert err.value.field == "dtype"


def test_tab_separated(tmp_path: Path) -> None:
    df = read_table(_csv(tmp_path, b"a\tb\n1\t2\n"), sep="\t")
    assert df.to_dict("list") == {"a": [1], "b": [2]}
