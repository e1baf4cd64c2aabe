"""io.files: special files and oversized files are refused from stat alone."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.files import MAX_BYTES_ENV, check_input_file, max_file_bytes, refuse_special


def test_dev_zero_is_a_character_device() -> None:
    with pytest.raises(InputError) as err:
        refuse_special("/dev/zero")
    assert (err.value.path, err.value.field, err.value.expected, err.value.found) == (
        "/dev/zero", "file type", "a regular file", "a character device")


def test_fifo_socket_folder_and_symlink_to_device(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    link = tmp_path / "zero.avi"
    link.symlink_to("/dev/zero")
    sock_path = tmp_path / "s"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        found = {p.name: _found(p) for p in (fifo, link, sock_path, tmp_path)}
    finally:
        sock.close()
    assert found == {"f": "a FIFO (named pipe)", "zero.avi": "a character device",
                     "s": "a socket", tmp_path.name: "a folder"}


def _found(path: Path) -> str:
    with pytest.raises(InputError) as err:
        refuse_special(path)
    return err.value.found


def test_size_limit_from_argument_and_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(100))
    assert refuse_special(path, max_bytes=100) == path
    with pytest.raises(InputError) as err:
        refuse_special(path, max_bytes=99)
    assert (err.value.field, err.value.found) == ("file size", "100 bytes")
    monkeypatch.setenv(MAX_BYTES_ENV, "50")
    assert max_file_bytes() == 50
    with pytest.raises(InputError, match="file size"):
        refuse_special(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    assert refuse_special(tmp_path / "none") == tmp_path / "none"  # the reader reports it
    with pytest.raises(InputError, match="an existing video file, found nothing"):
        check_input_file(tmp_path / "none", "video file")
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="expected an image file, found an empty"):
        check_input_file(tmp_path / "e", "image file")
