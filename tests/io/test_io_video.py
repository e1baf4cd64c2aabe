"""io.video validation: declared vs decoded frames, minimum frames, fps, container signature.

Real EchoNet AVIs are read in place (../shared/data/real/echonet-mini) and truncated copies
written to tmp_path; the tests skip when they are absent.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.video import (
    avi_header_fps,
    check_video,
    probe_video,
    read_video,
    write_video,
)
from conftest import real_path


def _frames(n: int, size: int = 24) -> np.ndarray:
    base = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=0) for i in range(n)])


def _real_avi() -> Path:
    videos = sorted(real_path("echonet-mini", "Videos").glob("*.avi"))
    if not videos:
        pytest.skip("no real EchoNet AVIs")
    return videos[0]


@pytest.mark.parametrize(("fraction", "decoded"), [(0.1, 25), (0.5, 123), (0.9, 225)])
def test_real_truncated_avi_is_refused(tmp_path: Path, fraction: float, decoded: int) -> None:
    source = _real_avi()
    if source.name != "0X100CF05D141FF143.avi":
        pytest.skip("frame counts recorded for 0X100CF05D141FF143.avi")
    data = source.read_bytes()
    cut = tmp_path / source.name
    cut.write_bytes(data[: int(len(data) * fraction)])
    assert probe_video(cut).frames == 248  # the header still declares the whole video
    with pytest.raises(UnreadableFileError) as err:
        read_video(cut)
    assert err.value.field == "frames"
    assert err.value.expected == "248 decodable frames (the container declares 248)"
    assert err.value.found == f"{decoded} decoded"
    with pytest.raises(UnreadableFileError):
        check_video(cut)


def test_real_whole_avi_reads_every_declared_frame() -> None:
    source = _real_avi()
    info = check_video(source)
    video = read_video(source)
    assert video.frames.shape[0] == info.frames and video.fps == info.fps > 0


def test_ranged_reads_stay_lenient_inside_the_declared_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.avi", _frames(8), 25.0)
    assert read_video(path, start=6, count=5).frames.shape[0] == 2
    assert read_video(path, start=0, count=1).frames.shape[0] == 1  # min_frames: whole reads
    assert read_video(path, min_frames=8).frames.shape[0] == 8
    with pytest.raises(InputError, match="at least 9 frames"):
        read_video(path, min_frames=9)


def test_avi_header_fps_and_zero_rate(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.avi", _frames(4), 30.0)
    assert avi_header_fps(path) == 30.0
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, data.find(b"strh") + 32, 0)
    path.write_bytes(bytes(data))
    assert avi_header_fps(path) == 0.0
    with pytest.raises(InputError) as err:
        probe_video(path)
    assert err.value.field == "fps"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_other_containers_round_trip(tmp_path: Path, suffix: str) -> None:
    path = write_video(tmp_path / f"v{suffix}", _frames(5), 20.0)
    assert read_video(path).frames.shape == (5, 24, 24, 3)


def test_wrong_container_for_the_suffix(tmp_path: Path) -> None:
    avi = write_video(tmp_path / "v.avi", _frames(5), 20.0)
    renamed = tmp_path / "v.mp4"
    renamed.write_bytes(avi.read_bytes())
    with pytest.raises(UnreadableFileError) as err:
        read_video(renamed)
    assert (err.value.field, err.value.expected) == (
        "container", "an ISO media 'ftyp' box (suffix .mp4)")


def test_decoded_size_limit(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.avi", _frames(5), 20.0)
    with pytest.raises(InputError) as err:
        read_video(path, max_bytes=1000)
    assert err.value.field == "decoded size"
    assert err.value.found == "8640 bytes (5 frames of 24x24)"
