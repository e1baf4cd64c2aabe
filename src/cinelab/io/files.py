"""Checks every reader makes before it opens a file: a regular file, not too large.

Opening a device (/dev/zero), a FIFO or a socket blocks or never ends, and a huge file can
exhaust memory before any format check runs; both are refused here, from `stat` alone,
with an InputError naming the file. The size limit is `max_bytes`, else the environment
variable CINELAB_MAX_FILE_BYTES, else DEFAULT_MAX_BYTES.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cinelab.errors import InputError, UnreadableFileError

MAX_BYTES_ENV = "CINELAB_MAX_FILE_BYTES"
DEFAULT_MAX_BYTES = 16 * 1024**3  # 16 GiB: larger than any single medical file cinelab reads
_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def max_file_bytes(max_bytes: int | None = None) -> int:
    """The size limit in bytes: the argument, else $CINELAB_MAX_FILE_BYTES, else the default."""
    if max_bytes is not None:
        return int(max_bytes)
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        return int(float(value))
    except ValueError as exc:
        raise InputError(None, MAX_BYTES_ENV, "a number of bytes", repr(value)) from exc


def file_kind(mode: int) -> str | None:
    """'a character device', 'a FIFO (named pipe)', ... for special files; None for regular."""
    return next((name for test, name in _KINDS if test(mode)), None)


def refuse_special(path: str | Path, max_bytes: int | None = None) -> Path:
    """Raise InputError for a device, FIFO, socket, folder or a file over the size limit.

    A path that does not exist passes (the reader says what it expected there). The symlink
    is followed: a link to /dev/zero is refused like /dev/zero.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise UnreadableFileError(path, "file", "a readable file",
                                  f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise InputError(path, "file type", "a regular file", kind,
                         "point at the data file itself, not a device, pipe or folder")
    limit = max_file_bytes(max_bytes)
    if st.st_size > limit:
        raise InputError(path, "file size", f"at most {limit} bytes", f"{st.st_size} bytes",
                         f"raise {MAX_BYTES_ENV} if this file is genuine")
    return path


def check_input_file(path: str | Path, kind: str = "file",
                     max_bytes: int | None = None) -> Path:
    """An existing, non-empty regular file within the size limit, or a typed error."""
    path = refuse_special(path, max_bytes)
    if not path.exists():
        raise InputError(path, "path", f"an existing {kind}", "nothing at that path")
    if path.stat().st_size == 0:
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise UnreadableFileError(path, "file", f"{article} {kind}", "an empty file (0 bytes)")
    return path
