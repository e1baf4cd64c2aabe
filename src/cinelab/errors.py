"""Typed exceptions: each names the file, the field, what was expected and what was found."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path


class CinelabError(Exception):
    """Base class for every error cinelab raises on user input."""


class InputError(CinelabError):
    """A file or table does not hold what was expected."""

    def __init__(
        self,
        path: str | Path | None,
        field: str,
        expected: str,
        found: str,
        fix: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.field = field
        self.expected = expected
        self.found = found
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        msg = f"{where}{field}: expected {expected}, found {found}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class UnreadableFileError(InputError):
    """The file cannot be decoded at all (truncated, wrong format, no pixel data)."""


class OutsideOutputError(InputError):
    """An output path built from data would lie outside the output folder."""

    def __init__(self, root: str | Path, path: str | Path) -> None:
        super().__init__(path, "output path", f"a path inside {root}",
                         f"{path} (outside the output folder)",
                         "sample ids and names may not hold '..', '/' or absolute paths")
        self.root = str(root)


class OutputWriteError(CinelabError):
    """Writing an output failed (disk full, read-only, not a folder, no permission).

    `path` is what could not be written, `errno` the OS error number, `fix` what to do.
    """

    def __init__(self, path: str | Path | None, errno: int | None, reason: str,
                 fix: str) -> None:
        self.path = None if path is None else str(path)
        self.errno = errno
        self.reason = reason
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}cannot write ({reason}); {fix}")


class MissingWeightsError(CinelabError):
    """A local weights file a recipe names is absent; says what to put where."""


#: Problem.stage of a failed output write: the run must stop, not skip the sample
OUTPUT_STAGE = "output"


@dataclass(frozen=True)
class Problem:
    """One problem found while reading or processing a cohort (reported, then skipped)."""

    file: str
    stage: str
    error: str
    row: int | None = None
    column: str | None = None
    expected: str | None = None
    found: str | None = None

    @classmethod
    def from_exception(cls, file: str | Path, stage: str, exc: BaseException) -> Problem:
        """A problem row from a caught exception."""
        if isinstance(exc, OutputWriteError):  # a fault of the output, not of this input
            return cls(exc.path or str(file), OUTPUT_STAGE, str(exc),
                       expected="a writable output folder", found=exc.reason)
        if isinstance(exc, InputError):
            return cls(str(file), stage, str(exc), column=exc.field,
                       expected=exc.expected, found=exc.found)
        return cls(str(file), stage, f"{type(exc).__name__}: {exc}")


#: errno -> (what went wrong, what to do) for faults of the output folder
_OUTPUT_FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device",
                   "free some space (or choose another output folder) and run the command "
                   "again: finished work is kept"),
    errno.EDQUOT: ("disk quota exceeded",
                   "free some space (or choose another output folder) and run the command "
                   "again: finished work is kept"),
    errno.EFBIG: ("file too large for the file system", "choose another output folder"),
    errno.EROFS: ("read-only file system", "choose a writable output folder"),
    errno.EACCES: ("permission denied",
                   "check the folder's permissions or choose another output folder"),
    errno.EPERM: ("operation not permitted",
                  "check the folder's permissions or choose another output folder"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder",
                    "remove or rename that file, or choose another output folder"),
    errno.EEXIST: ("a file is in the way of a folder",
                   "remove or rename that file, or choose another output folder"),
    errno.EISDIR: ("a folder is where a file should be",
                   "remove or rename that folder, or choose another output folder"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter output path"),
}


def output_fault(exc: OSError, path: str | Path | None = None) -> OutputWriteError | None:
    """The OutputWriteError for an OSError caused by the output folder (full, read-only,
    not a folder, no permission); None for other OS errors."""
    if exc.errno not in _OUTPUT_FAULTS:
        return None
    reason, fix = _OUTPUT_FAULTS[exc.errno]
    return OutputWriteError(exc.filename or path, exc.errno, reason, fix)


def describe_os_error(exc: OSError) -> str:
    """One line for any OSError: the path, what went wrong and (when known) what to do."""
    fault = output_fault(exc)
    if fault is not None:
        return str(fault)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or type(exc).__name__}" + (
        f" (and {exc.filename2})" if exc.filename2 else "")
