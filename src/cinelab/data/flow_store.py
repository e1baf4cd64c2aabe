"""Optical flow in the prepared store: uint8 quantisation and the per-sample flow files.

`prep.flow` computes flow and writes it with these functions; datasets read it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cinelab.errors import InputError
from cinelab.utils import read_json

QUANT_CENTRE = 128.0
QUANT_HALF_RANGE = 127.5
UINT8_MAX = 255
MIN_SCALE = 1e-3  # px: the scale of a flow that is zero everywhere


def quantise_flow(flow: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, float]:
    """uint8 flow = clip(round(flow / scale * 127.5 + 128)) and the scale (default: max |flow|).

    Values within +-scale come back from `dequantise_flow` within scale / 255.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if scale is None:
        scale = float(np.max(np.abs(flow))) if flow.size else 0.0
    scale = max(float(scale), MIN_SCALE)
    q = np.rint(flow / scale * QUANT_HALF_RANGE + QUANT_CENTRE)
    return np.clip(q, 0, UINT8_MAX).astype(np.uint8), scale


def dequantise_flow(q: np.ndarray, scale: float) -> np.ndarray:
    """float32 flow in pixels from quantised uint8 flow and its scale."""
    return ((np.asarray(q, dtype=np.float32) - QUANT_CENTRE) / QUANT_HALF_RANGE
            * np.float32(scale)).astype(np.float32)


def flow_files(root: str | Path, sample_id: str) -> dict[str, Path]:
    """Paths of one sample's quantised flow and its metadata."""
    base = Path(root) / "samples"
    return {"flow": base / f"{sample_id}.flow.npy", "meta": base / f"{sample_id}.flow.json"}


def read_flow(root: str | Path, sample_id: str, dequantise: bool = True) -> np.ndarray:
    """A sample's flow: float32 px (T, H, W, 2), or the memory-mapped uint8 when not dequantised."""
    files = flow_files(root, sample_id)
    if not files["meta"].exists():
        raise InputError(files["meta"], "flow", "flow computed by `prepare_flow`",
                         "no flow metadata for this sample")
    q = np.load(files["flow"], mmap_mode="r")
    return dequantise_flow(q, read_json(files["meta"])["scale"]) if dequantise else q
