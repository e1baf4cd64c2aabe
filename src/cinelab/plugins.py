"""Registries that pipelines fill, and the loader that imports every pipeline package once.

The generic layers own registries (layouts in `formats`, preparers in `prep`, task setups in
`train`, models in `models`, pipelines in `pipelines`); a pipeline package registers its
entries when it is imported. A lookup that misses imports the pipelines first
(`load_pipelines`): the built-in packages under ``cinelab.pipelines`` and any third-party
package named by an entry point in the ``cinelab.pipelines`` group. So a new pipeline is one
new package; no generic file lists it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from cinelab.errors import CinelabError

BUILTIN_PACKAGE = "cinelab.pipelines"
ENTRY_POINT_GROUP = "cinelab.pipelines"

T = TypeVar("T")
_state = {"loaded": False}


def load_pipelines() -> None:
    """Import every pipeline package (built in, then entry points), once per process."""
    if _state["loaded"]:
        return
    _state["loaded"] = True
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.ispkg:
            importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


class UnknownNameError(CinelabError, KeyError):
    """A name is not in a registry (the message lists the registered names)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Named entries of one kind; lookups load the pipelines before they give up."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, value: T) -> T:
        """Register `value` under `name` (a second, different value is an error)."""
        if name in self._entries and self._entries[name] is not value:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = value
        return value

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator form of `add`, under one or more names."""

        def decorate(value: T) -> T:
            for name in names:
                self.add(name, value)
            return value

        return decorate

    def get(self, name: str) -> T:
        """The entry `name`, or an error that lists the registered names."""
        if name not in self._entries:
            load_pipelines()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownNameError(f"{self.kind}: expected one of {self.names()}, "
                                   f"found {name!r}{hint}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, sorted (pipelines loaded first)."""
        load_pipelines()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) pairs, sorted by name (pipelines loaded first)."""
        return ((name, self._entries[name]) for name in self.names())

    def __contains__(self, name: object) -> bool:
        load_pipelines()
        return name in self._entries
