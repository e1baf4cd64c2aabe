"""Frame-by-frame left-ventricle segmentation of a video and the LV area curve.

Frames go through the model in batches (read from the possibly memory-mapped uint8 video one
batch at a time, normalised with the checkpoint's mean/std). A one-channel output is a
logit map (LV where sigmoid > 0.5); a multi-channel output is per-class logits (LV where the
argmax is `lv_class`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cinelab.data.sampling import iter_clip_batches
from cinelab.pipelines.echonet.sources import check_frames
from cinelab.train.checkpoint import InputSpec

LV_CLASS = 1  # index of the LV class in multi-class outputs (0 is background)
MASK_THRESHOLD = 0.5  # probability above which a one-channel output marks LV
DEFAULT_SEG_BATCH = 32


@torch.inference_mode()
def segment_video(
    model: nn.Module,
    frames: np.ndarray,
    spec: InputSpec,
    batch_size: int = DEFAULT_SEG_BATCH,
    device: str | torch.device = "cpu",
    lv_class: int = LV_CLASS,
    index: np.ndarray | None = None,
) -> np.ndarray:
    """LV masks uint8 (T, H, W) in {0, 1} for uint8 frames (T, H, W, C) at the model's size.

    With `index`, only those frames are segmented; the masks of the others stay 0 (the caller
    must track which frames were segmented: `fastbeats.SparseSegmentation`).
    """
    check_frames(frames, spec.size, spec.channels)
    model = model.eval().to(device)
    masks = np.zeros(frames.shape[:3], dtype=np.uint8)
    starts = np.arange(len(frames)) if index is None else _frame_index(index, len(frames))
    for batch_starts, clips in iter_clip_batches(frames, starts, 1, 1, batch_size, spec.mean,
                                                 spec.std, device):
        logits = _logits(model(clips[:, :, 0]))
        masks[batch_starts] = logits_to_mask(logits, lv_class).cpu().numpy()
    return masks


def _frame_index(index: np.ndarray, n: int) -> np.ndarray:
    """Sorted distinct frame indices, each in [0, n)."""
    index = np.unique(np.asarray(index, dtype=np.int64).reshape(-1))
    if len(index) and (index[0] < 0 or index[-1] >= n):
        raise ValueError(f"index: expected frame indices in [0, {n}), found {index[0]}.."
                         f"{index[-1]}")
    return index


def logits_to_mask(logits: torch.Tensor, lv_class: int = LV_CLASS) -> torch.Tensor:
    """uint8 (B, H, W) LV mask from logits (B, 1, H, W) or (B, K, H, W)."""
    if logits.ndim != 4:
        raise ValueError(f"logits: expected (B, K, H, W), found shape {tuple(logits.shape)}")
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0].float()) > MASK_THRESHOLD).to(torch.uint8)
    if not 0 <= lv_class < logits.shape[1]:
        raise ValueError(f"lv_class: expected a class index below {logits.shape[1]}, "
                         f"found {lv_class}")
    return (logits.argmax(dim=1) == lv_class).to(torch.uint8)


def lv_area(masks: np.ndarray) -> np.ndarray:
    """LV area per frame in pixels (int64, length T) of masks (T, H, W)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks: expected (T, H, W), found shape {masks.shape}")
    return masks.reshape(len(masks), -1).astype(bool).sum(axis=1).astype(np.int64)


def _logits(output: torch.Tensor | dict) -> torch.Tensor:
    """The logits of a model output (torchvision segmentation models return {"out": ...})."""
    return output["out"] if isinstance(output, dict) else output
