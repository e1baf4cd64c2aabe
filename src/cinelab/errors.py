"""Typed exceptions: each names the file, the field, what was expected and what was found."""

from __future__ import annotations

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


class MissingWeightsError(CinelabError):
    """A local weights file a recipe names is absent; says what to put where."""


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
        if isinstance(exc, InputError):
            return cls(str(file), stage, str(exc), column=exc.field,
                       expected=exc.expected, found=exc.found)
        return cls(str(file), stage, f"{type(exc).__name__}: {exc}")
