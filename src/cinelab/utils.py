"""Small shared helpers: atomic writes, hashing, JSON."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cinelab.errors import InputError, OutsideOutputError


def _default_file_mode() -> int:
    """What open() would give a new file under the current umask (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def inside(root: str | Path, path: str | Path) -> bool:
    """True when `path` (resolved, symlinks followed) lies inside `root` (resolved)."""
    base = Path(root).resolve()
    target = Path(path).resolve()
    return target == base or base in target.parents


def safe_child(root: str | Path, *parts: str | Path) -> Path:
    """`root`/parts..., refused (OutsideOutputError) unless it resolves inside `root`.

    Every output path built from data (sample ids, names read from files) goes through this
    before anything is written, so `../x` or `/abs` never escapes the output folder.
    """
    path = Path(root).joinpath(*parts)
    if any(Path(p).is_absolute() for p in parts) or not inside(root, path):
        raise OutsideOutputError(root, path)
    return path


def resolve_beside(value: str | Path, base: str | Path) -> Path:
    """A path as written when absolute or existing from the working folder, else taken
    relative to `base` (the folder of the table that names it)."""
    path = Path(value)
    return path if path.is_absolute() or path.exists() else Path(base) / path


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable))


def write_csv(df: Any, path: str | Path) -> Path:
    """Write a pandas DataFrame atomically as CSV (no index)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex, first 16 characters); InputError for anything but a
    regular file (a device, FIFO or socket would block or never end)."""
    check_regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def check_regular_file(path: str | Path) -> None:
    """InputError unless `path` is a regular file (checked without opening it); a missing
    file raises FileNotFoundError as open() would."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a special file")
        raise InputError(path, "file", "a regular file", kind, "point it at a real file")


def versions() -> dict[str, str]:
    """Versions of cinelab and its main dependencies, for provenance records."""
    import importlib.metadata as md

    out = {}
    for name in ("cinelab", "numpy", "torch", "torchvision", "opencv-python-headless",
                 "pydicom", "lightning", "monai", "timm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


DONE_FILE = "done.json"


def mark_done(folder: str | Path, outputs: Iterable[str], **info: Any) -> Path:
    """Write `folder`/done.json listing each output file (relative name) with its size."""
    folder = Path(folder)
    files = {name: (folder / name).stat().st_size for name in outputs}
    write_json(folder / DONE_FILE, {"files": files, **info})
    return folder / DONE_FILE


def is_done(folder: str | Path) -> bool:
    """The one resume rule: done.json exists and every file it lists has its recorded size."""
    folder = Path(folder)
    done = folder / DONE_FILE
    if not done.is_file():
        return False
    try:
        files = read_json(done)["files"]
    except (ValueError, KeyError, TypeError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size
               for name, size in files.items())
