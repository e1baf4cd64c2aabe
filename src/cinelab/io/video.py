"""Video files (AVI, MP4, ...) via OpenCV: read whole, read a frame range, write, probe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cinelab.errors import UnreadableFileError
from cinelab.utils import atomic_path

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".wmv")
_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "FFV1", ".mov": "mp4v"}


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
    """Frame count, size and frame rate from the container header."""
    cap = _open(path)
    try:
        return VideoInfo(
            frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            fps=float(cap.get(cv2.CAP_PROP_FPS)),
        )
    finally:
        cap.release()


def read_video(path: str | Path, start: int = 0, count: int | None = None) -> Video:
    """Decode frames [start, start+count) (all by default) as RGB uint8 (T, H, W, 3)."""
    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
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
    return Video(np.stack(frames), fps)


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


def _open(path: str | Path) -> cv2.VideoCapture:
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(path, "file", "an existing video file", "nothing at that path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "file", "a video file", "0 bytes")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise UnreadableFileError(path, "container", "a video OpenCV can open",
                                  "an unreadable or unknown container")
    return cap
