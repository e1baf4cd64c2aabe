"""Sample ids are validated where they enter and never become a path outside the output."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cinelab.data.manifest import (
    SAMPLE_ID_PATTERN,
    SAMPLE_ID_RULE,
    new_manifest,
    sample_id_error,
    validate_manifest,
    validate_sample_id,
    validate_sample_ids,
)
from cinelab.data.store import CHECKSUMS, is_complete, sample_files, write_sample
from cinelab.errors import InputError, OutsideOutputError
from cinelab.utils import file_hash, inside, safe_child

GOOD = ["0X1A0A263B22CCD966", "patient001_frame01", "1.2.840.113619.2.55", "a", "A-b_c.d",
        "x" * 128]
BAD = ["", "../../x", "..", "/abs", "/etc/passwd", "a/b", "a\\b", ".hidden", "a..b", "-x",
       "x" * 129, "a b", "a\nb", "é", "a\x00b", "C:x"]


@pytest.mark.parametrize("sid", GOOD)
def test_good_ids_pass(sid: str) -> None:
    assert validate_sample_id(sid) == sid and sample_id_error(sid) is None


@pytest.mark.parametrize("sid", BAD)
def test_bad_ids_are_input_errors(sid: str) -> None:
    with pytest.raises(InputError) as info:
        validate_sample_id(sid, "m.csv")
    assert (info.value.path, info.value.field, info.value.expected) == \
        ("m.csv", "sample_id", SAMPLE_ID_RULE)
    assert repr(sid) in info.value.found


def test_non_strings_are_refused() -> None:
    for value in (None, 3, 1.5, float("nan")):
        assert sample_id_error(value) is not None


def test_duplicates_are_refused_with_both_rows() -> None:
    assert validate_sample_ids(["a", "b"]) == ["a", "b"]
    with pytest.raises(InputError) as info:
        validate_sample_ids(["a", "b", "a"])
    assert info.value.found == "'a' in rows 0 and 2"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=140))
def test_any_accepted_id_is_one_plain_file_name(text: str) -> None:
    ok = sample_id_error(text) is None
    assert ok == (re.fullmatch(SAMPLE_ID_PATTERN, text) is not None and ".." not in text)
    if ok:
        assert "/" not in text and "\\" not in text and not text.startswith(".")
        root = Path("/tmp/out-root")
        path = sample_files(root, text)["frames"]
        assert path.parent == root / "samples" and inside(root, path)
    else:
        with pytest.raises(InputError):
            sample_files(Path("/tmp/out-root"), text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab./\\_-", max_size=12))
def test_safe_child_never_leaves_the_root(text: str) -> None:
    root = Path("/tmp/out-root")
    try:
        path = safe_child(root, text)
    except OutsideOutputError:
        return
    assert inside(root, path)


def test_validate_manifest_reports_bad_and_repeated_ids() -> None:
    df = new_manifest([{"sample_id": s, "path": "x.avi", "split": "train"}
                       for s in ("ok", "../../x", "/abs", "ok")])
    problems = [p for p in validate_manifest(df, check_files=False) if p.column == "sample_id"]
    assert [(p.row, p.expected, p.found) for p in problems] == [
        (1, SAMPLE_ID_RULE, "'../../x'"),
        (2, SAMPLE_ID_RULE, "'/abs'"),
        (3, "a unique sample id", "'ok' already in row 0"),
    ]


# -- the store ---------------------------------------------------------------------------------


def frames() -> np.ndarray:
    return np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)


@pytest.mark.parametrize("sid", ["../../x", "/abs/y", "a/b", ".."])
def test_write_sample_refuses_ids_that_would_leave_the_store(tmp_path: Path, sid: str) -> None:
    root = tmp_path / "out" / "store"
    with pytest.raises(InputError) as info:
        write_sample(root, sid, frames(), {})
    assert info.value.field == "sample_id"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == []


def test_write_sample_refuses_a_symlink_out_of_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "samples").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "samples" / "v1.npy").symlink_to(elsewhere / "v1.npy")
    with pytest.raises(OutsideOutputError):
        write_sample(root, "v1", frames(), {})
    assert list(elsewhere.iterdir()) == []


def test_checksums_are_recorded_and_damage_is_detected(tmp_path: Path) -> None:
    mask = np.zeros((2, 4, 4), np.uint8)
    meta = write_sample(tmp_path, "v1", frames(), {"fps": 50.0}, mask)
    files = sample_files(tmp_path, "v1")
    assert meta[CHECKSUMS] == {"frames": file_hash(files["frames"]),
                               "mask": file_hash(files["mask"])}
    assert is_complete(tmp_path, "v1", verify=True)
    data = bytearray(files["frames"].read_bytes())
    data[-1] ^= 0xFF  # same size and shape, one byte changed
    files["frames"].write_bytes(bytes(data))
    assert is_complete(tmp_path, "v1")  # shape check alone misses it
    assert not is_complete(tmp_path, "v1", verify=True)
    assert not is_complete(tmp_path, "../v1", verify=True)
