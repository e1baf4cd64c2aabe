"""Label and tracing tables (CSV/TSV) read defensively: every bad file is an InputError.

`read_table` refuses, naming the file (and the line where there is one):

- special files and files over the size limit (`cinelab.io.files.refuse_special`);
- empty files (0 bytes, or only whitespace) and files without a header row;
- binary files (NUL bytes or mostly control characters in the first block: a PNG, a zip, an
  .xlsx saved with a .csv name);
- ragged files: a row with more fields than the header (pandas would silently turn the
  first column into the index, or stop with a ParserError);
- missing required columns and values that do not convert to the requested dtype.

The encoding is detected: UTF-8 (with or without a byte-order mark), UTF-16 with a BOM,
else Latin-1, which always decodes; that fallback is recorded as a `TableWarning` and in
`df.attrs["warnings"]` (`df.attrs["encoding"]` always says which encoding was used).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.files import refuse_special

SNIFF_BYTES = 8192
CONTROL_FRACTION = 0.1  # more control characters than this in the first block: binary
_TEXT_CONTROLS = {9, 10, 12, 13}  # tab, newline, form feed, carriage return
_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"PK\x03\x04", "a zip archive (.xlsx, .zip, ...)"),
    (b"\x1f\x8b", "gzip data"), (b"%PDF", "a PDF"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"RIFF", "a RIFF file (AVI/WAV)"), (b"\xd0\xcf\x11\xe0", "an old Office file (.xls)"),
    (b"\x93NUMPY", "a NumPy array"), (b"\x89HDF", "an HDF5 file"),
)
_BOMS = ((b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


class TableWarning(UserWarning):
    """A table was read, but not as cleanly as it should have been (e.g. Latin-1 text)."""


def read_table(
    path: str | Path,
    required: Collection[str] = (),
    dtype: Any = None,
    *,
    text_columns: Collection[str] = (),
    sep: str | None = ",",
    **kwargs: Any,
) -> pd.DataFrame:
    """A CSV (or `sep`-separated) table as a DataFrame, or InputError(file, field, ...).

    `required` columns must be present; `dtype` is passed to pandas; `text_columns` (matched
    case-insensitively) are read as str whatever else `dtype` says. Other keyword arguments
    go to `pandas.read_csv`.
    """
    path = Path(path)
    text, encoding, notes = read_text(path)
    header = _check_rows(path, text, sep) if isinstance(sep, str) and len(sep) == 1 else []
    dtypes = _dtypes(header, dtype, text_columns)
    kwargs.setdefault("index_col", False)  # trailing separators never shift the columns
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=dtypes, **kwargs)
    except (ValueError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        field = "dtype" if dtypes and "convert" in str(exc).lower() else "table"
        raise InputError(path, field, "a table whose values fit the expected types",
                         f"{type(exc).__name__}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(path, "columns", f"the columns {list(required)}",
                         f"missing {missing} (columns: {list(df.columns)})",
                         "check the header row and the separator")
    df.attrs["encoding"] = encoding
    df.attrs["warnings"] = notes
    for note in notes:
        warnings.warn(note, TableWarning, stacklevel=2)
    return df


def read_text(path: str | Path) -> tuple[str, str, list[str]]:
    """(text, encoding, warnings) of a text file; empty and binary files raise InputError."""
    path = refuse_special(path)
    if not path.is_file():
        raise InputError(path, "path", "an existing table file", "nothing at that path")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(path, "file", "a readable table file",
                                  f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise InputError(path, "file", "a table with a header row",
                         "an empty file (0 bytes)" if not data else "only whitespace")
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding, []
            except UnicodeDecodeError as exc:
                raise InputError(path, "encoding", "UTF-16 text after its byte-order mark",
                                 f"undecodable bytes at offset {exc.start}") from exc
    _check_binary(path, data)
    try:
        return data.decode("utf-8-sig"), "utf-8", []
    except UnicodeDecodeError as exc:
        note = (f"{path}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
                "read as Latin-1 - save the table as UTF-8 to be sure of accented names")
        return data.decode("latin-1"), "latin-1", [note]


def _check_binary(path: Path, data: bytes) -> None:
    head = data[:SNIFF_BYTES]
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise InputError(path, "file", "a text table (CSV)", f"binary data ({what})",
                             "export the table as CSV")
    controls = sum(1 for b in head if b < 32 and b not in _TEXT_CONTROLS)
    if b"\x00" in head or controls > CONTROL_FRACTION * len(head):
        raise InputError(path, "file", "a text table (CSV)",
                         f"binary data ({controls} control bytes in the first {len(head)})",
                         "export the table as CSV")


def _check_rows(path: Path, text: str, sep: str) -> list[str]:
    """The header fields; a row with more fields than the header raises, naming the line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header: list[str] | None = None
    try:
        for row in reader:
            if header is None:
                if not any(field.strip() for field in row):
                    continue
                header = row
                continue
            if len(row) > len(header) and any(f.strip() for f in row[len(header):]):
                raise InputError(path, f"line {reader.line_num}",
                                 f"{len(header)} fields (as in the header)",
                                 f"{len(row)} fields",
                                 "remove the extra separators or quote the values")
    except csv.Error as exc:
        raise InputError(path, f"line {reader.line_num}", "well-formed CSV",
                         f"csv.Error: {exc}") from exc
    if header is None:
        raise InputError(path, "file", "a table with a header row", "no header row")
    return header


def _dtypes(header: list[str], dtype: Any, text_columns: Collection[str]) -> Any:
    if not text_columns:
        return dtype
    wanted = {c.casefold() for c in text_columns}
    text = {c: str for c in header if c.strip().casefold() in wanted}
    if dtype is None:
        return text or None
    if isinstance(dtype, Mapping):
        return {**dtype, **text}
    return {**{c: dtype for c in header}, **text}
