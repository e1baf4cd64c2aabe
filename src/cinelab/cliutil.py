"""Shared CLI plumbing: the stderr console, friendly errors, problem listings."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from rich.console import Console

from cinelab.errors import CinelabError, InputError, describe_os_error

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Unusable input or a fault of the output folder (disk full, read-only, not a folder,
    no permission): exit 2 with a one-line reason naming the path, no traceback. Whatever
    was written before stays complete (every write is atomic)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (CinelabError, FileNotFoundError) as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(describe_os_error(exc))

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


#: exit status of a command that finished and wrote its outputs, but skipped inputs
#: (listed in problems.csv); 2 is unusable input (nothing written), 0 a clean run
EXIT_PROBLEMS = 3


def exit_if_problems(problems: list, where: object) -> None:
    """Exit with EXIT_PROBLEMS (after the outputs are written) when anything was skipped."""
    if problems:
        console.print(f"finished with {len(problems)} problem(s): see {where}", highlight=False,
                      soft_wrap=True)
        sys.exit(EXIT_PROBLEMS)


def finish_predictions(n_predicted: int, problems: list, folder: object, source: object,
                       summary: str | None = None) -> None:
    """The end of every predict verb (generic or a pipeline's): list the problems, print
    `summary`, exit 2 when nothing could be predicted, 3 when inputs were skipped (the
    good rows are written and the bad ones are in problems.csv), else return (exit 0)."""
    print_problems(problems)
    if summary:
        console.print(summary, highlight=False, soft_wrap=True)
    listing = Path(str(folder)) / "problems.csv"
    if n_predicted == 0:
        raise CinelabError(f"{source}: no usable input (see {listing})")
    exit_if_problems(problems, listing)


def print_problems(problems: list, limit: int = 10) -> None:
    """The first problems of a run, one line each, and how many more are in problems.csv."""
    for p in problems[:limit]:
        console.print(
            f"[yellow]problem:[/yellow] {p.file} [{p.stage}] {p.error}",
            highlight=False,
            soft_wrap=True,
        )
    if len(problems) > limit:
        console.print(f"... and {len(problems) - limit} more (see problems.csv)")


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings -> a dict; values are read as YAML scalars (1, 0.5, true, x)."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(None, "--option", "key=value", repr(item))
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise InputError(None, f"--option {key.strip()}", "a plain YAML scalar",
                             repr(value)) from exc
    return options
