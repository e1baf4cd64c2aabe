"""Synthetic wrong-kind inputs for the age model, prepared like a long-axis cine.

`wrong_kind_cine(rng, kind)` draws one input that is not a cardiac MRI cine (an echo
phantom clip, uniform noise, a blank cine of one random grey level, or a chest radiograph
still repeated in time) at `render` x `render` pixels and `frames` frames, then prepares it
with the pipeline's own `preprocess_cine` (centre crop, `size` pixels): what the OOD flag
must catch. The same rng state gives the same cine.
"""

from __future__ import annotations

import cv2
import numpy as np

from cinelab.errors import InputError
from cinelab.pipelines.age.prepare import preprocess_cine
from cinelab.pipelines.cxr.synth import cxr_phantom, draw_anatomy
from cinelab.synth.echo import echo_phantom_video

WRONG_KINDS = ("echo", "noise", "blank", "cxr")
PHANTOM_SIZE = 64  # side of the echo and chest-radiograph phantoms before resizing


def _grey_frames(rng: np.random.Generator, kind: str, frames: int, render: int) -> np.ndarray:
    """(frames, H, W) float grey levels of one wrong-kind input."""
    if kind == "echo":
        return echo_phantom_video(rng, size=PHANTOM_SIZE, n_frames=frames)[0].astype(float)
    if kind == "noise":
        return rng.uniform(0, 1, (frames, render, render))
    if kind == "blank":
        return np.full((frames, render, render), float(rng.uniform(0.2, 1.0)))
    if kind == "cxr":
        still = cxr_phantom(rng, PHANTOM_SIZE, draw_anatomy(rng))[0].astype(float)
        return np.repeat(cv2.resize(still, (render, render))[None], frames, axis=0)
    raise InputError(None, "kind", f"one of {list(WRONG_KINDS)}", repr(kind))


def wrong_kind_cine(rng: np.random.Generator, kind: str, frames: int = 25, render: int = 48,
                    size: int = 16) -> np.ndarray:
    """One wrong-kind input prepared like a cine: uint8 (TARGET_FRAMES, size, size, 1)."""
    return preprocess_cine(_grey_frames(rng, kind, frames, render), None, size,
                           crop="centre")[0]
