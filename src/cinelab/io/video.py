"""Video files (AVI, MP4, ...) via OpenCV: read whole, read a frame range, write, probe.

Every read validates before and after decoding, and each failure is an UnreadableFileError
or InputError naming the file, the field, what was expected and what was found:

- the path is a regular file within the size limit (no devices, FIFOs; `io.files`);
- the container matches the content: the first bytes carry the signature of the suffix's
  container (RIFF/AVI, ISO-BMFF 'ftyp', Matroska, ASF) - a PNG renamed .avi is refused, as is
  any non-video file (OpenCV would otherwise open an image as a one-frame "video");
- the frame rate is finite, > 0 and at most MAX_FPS;
- the decoded size (declared frames x height x width x 3) is within MAX_DECODED_BYTES;
- a whole-video read decodes exactly the number of frames the container declares (a file
  truncated at any point, or with a corrupt frame the decoder drops, is refused, never
  prepared as if whole) and at least `min_frames` of them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cinelab.errors import InputError, UnreadableFileError
from cinelab.io.files import refuse_special
from cinelab.utils import atomic_path

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".wmv")
_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "FFV1", ".mov": "mp4v"}
MIN_FRAMES = 3  # fewer frames than this is not a cine loop (a still or a broken export)
MAX_FPS = 1000.0  # high-frame-rate echo stays well below this
MAX_DECODED_BYTES = 8 * 1024**3  # refuse before decoding a video that would not fit memory
SIGNATURE_BYTES = 16
AVI_HEADER_BYTES = 65536  # the hdrl list (stream headers) sits at the start of an AVI
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_SIGNATURES = {  # suffix -> (check on the first bytes, what that container looks like)
    ".avi": (lambda h: h[:4] == b"RIFF" and h[8:12] in (b"AVI ", b"AVIX"), "a RIFF AVI header"),
    ".mp4": (lambda h: h[4:8] in _ISO_BOXES, "an ISO media 'ftyp' box"),
    ".m4v": (lambda h: h[4:8] in _ISO_BOXES, "an ISO media 'ftyp' box"),
    ".mov": (lambda h: h[4:8] in _ISO_BOXES, "a QuickTime/ISO media box"),
    ".mkv": (lambda h: h[:4] == b"\x1a\x45\xdf\xa3", "a Matroska (EBML) header"),
    ".wmv": (lambda h: h[:4] == b"\x30\x26\xb2\x75", "an ASF header"),
}
_KNOWN_CONTENT = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"%PDF", "a PDF"), (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip data"), (b"\x89HDF", "an HDF5 file"), (b"\x93NUMPY", "a NumPy array"),
)


@dataclass(frozen=True)
class Video:
    """Decoded frames (T, H, W, C) uint8 RGB and the frame rate."""

    frames: np.ndarray
    fps: float


@dataclass(frozen=True)
class VideoInfo:
    """What the container says without decoding: frame count, size, frame rate."""

    frames: int
    height: int
    width: int
    fps: float


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, size and frame rate from the container header (validated, not decoded)."""
    cap = _open(path)
    try:
        return _info(path, cap)
    finally:
        cap.release()


def read_video(path: str | Path, start: int = 0, count: int | None = None, *,
               min_frames: int = MIN_FRAMES, max_fps: float = MAX_FPS,
               max_bytes: int = MAX_DECODED_BYTES) -> Video:
    """Decode frames [start, start+count) (all by default) as RGB uint8 (T, H, W, 3).

    A whole-video read (start=0, count=None) must decode every frame the container declares
    and at least `min_frames`; a ranged read must decode the frames it asks for that the
    container declares. Errors name the file and say what was found.
    """
    cap = _open(path)
    try:
        info = _info(path, cap, max_fps)
        _check_size(path, info, start, count, max_bytes)
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames = []
        while count is None or len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise UnreadableFileError(path, "frames", "at least one decodable frame", "0 frames",
                                  "the file is empty, truncated or not a video")
    _check_count(path, info, start, count, len(frames), min_frames)
    return Video(np.stack(frames), info.fps)


def check_video(path: str | Path, min_frames: int = MIN_FRAMES,
                max_fps: float = MAX_FPS) -> VideoInfo:
    """Decode every frame (without keeping them) and validate as `read_video` does."""
    cap = _open(path)
    try:
        info = _info(path, cap, max_fps)
        decoded = 0
        while cap.grab():
            ok, _ = cap.retrieve()
            if not ok:
                break
            decoded += 1
    finally:
        cap.release()
    _check_count(path, info, 0, None, decoded, min_frames)
    return info


def _info(path: str | Path, cap: cv2.VideoCapture, max_fps: float = MAX_FPS) -> VideoInfo:
    """The container's declared frames, size and fps; an implausible fps raises."""
    raw = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    info = VideoInfo(
        frames=int(raw) if np.isfinite(raw) and raw > 0 else 0,
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        fps=float(cap.get(cv2.CAP_PROP_FPS)),
    )
    header_fps = avi_header_fps(path) if Path(path).suffix.lower() == ".avi" else None
    if header_fps is not None and header_fps <= 0:  # FFmpeg would silently assume 25
        raise InputError(path, "fps", f"a frame rate > 0 and <= {max_fps:g}",
                         "0 (the AVI stream header's rate or scale is 0)",
                         "re-export the video with its real frame rate")
    if not (np.isfinite(info.fps) and 0 < info.fps <= max_fps):
        raise InputError(path, "fps", f"a frame rate > 0 and <= {max_fps:g}", repr(info.fps),
                         "re-export the video with its real frame rate")
    if info.height <= 0 or info.width <= 0:
        raise UnreadableFileError(path, "frame size", "a positive width and height",
                                  f"{info.width}x{info.height}")
    return info


def _check_size(path: str | Path, info: VideoInfo, start: int, count: int | None,
                max_bytes: int) -> None:
    frames = max(info.frames - start, 0) if count is None else count
    size = frames * info.height * info.width * 3
    if size > max_bytes:
        raise InputError(path, "decoded size",
                         f"at most {max_bytes} bytes of frames", f"{size} bytes ({frames} "
                         f"frames of {info.width}x{info.height})",
                         "read a frame range, or downsample the video first")


def _check_count(path: str | Path, info: VideoInfo, start: int, count: int | None,
                 decoded: int, min_frames: int) -> None:
    """Frames decoded against frames declared (and asked for)."""
    if info.frames > 0:
        wanted = max(info.frames - start, 0) if count is None else \
            min(count, max(info.frames - start, 0))
        if decoded < wanted:
            raise UnreadableFileError(
                path, "frames", f"{wanted} decodable frames (the container declares "
                f"{info.frames})", f"{decoded} decoded",
                "the file is truncated or has corrupt frames; copy it again from the source")
    if start == 0 and count is None and decoded < min_frames:
        raise InputError(path, "frames", f"at least {min_frames} frames", f"{decoded}",
                         "a cine loop is needed, not a still image")


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write (T, H, W) or (T, H, W, 3) uint8 RGB frames atomically; codec by suffix."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8 (T, H, W[, 3]), found {frames.dtype} "
                         f"{frames.shape}")
    codec = _CODECS.get(path.suffix.lower(), "MJPG")
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), float(fps),
                                 (width, height))
        if not writer.isOpened():
            raise OSError(f"{path}: OpenCV cannot open a {codec} writer")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    return path


def avi_header_fps(path: str | Path) -> float | None:
    """dwRate / dwScale of the first video stream header ('strh' 'vids') of an AVI, or None."""
    with open(path, "rb") as f:
        head = f.read(AVI_HEADER_BYTES)
    at = _find_video_strh(head)
    if at < 0 or at + 36 > len(head):
        return None
    scale, rate = struct.unpack_from("<II", head, at + 28)
    return rate / scale if scale and rate else 0.0


def _find_video_strh(head: bytes) -> int:
    at = head.find(b"strh")
    while at >= 0:
        if head[at + 8:at + 12] == b"vids":
            return at
        at = head.find(b"strh", at + 4)
    return -1


def check_container(path: str | Path) -> None:
    """Raise UnreadableFileError unless the first bytes match the suffix's container."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(SIGNATURE_BYTES)
    what = next((name for magic, name in _KNOWN_CONTENT if head.startswith(magic)), None)
    check = _SIGNATURES.get(path.suffix.lower())
    if what is not None or (check is not None and not check[0](head)):
        expected = check[1] if check is not None else "a video container"
        raise UnreadableFileError(path, "container", f"{expected} (suffix "
                                  f"{path.suffix.lower() or 'none'})",
                                  what or f"first bytes {head[:12]!r}",
                                  "the file is not the video its name says")


def _open(path: str | Path) -> cv2.VideoCapture:
    path = refuse_special(path)
    if not path.exists():
        raise UnreadableFileError(path, "file", "an existing video file", "nothing at that path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "file", "a video file", "0 bytes")
    check_container(path)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise UnreadableFileError(path, "container", "a video OpenCV can open",
                                  "an unreadable or unknown container")
    return cap
