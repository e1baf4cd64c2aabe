"""Out-of-distribution scores of CMR stacks from the segmentation network's own features.

The U-Net's deepest feature map (the bottleneck / last encoder output: the module whose
output has the smallest spatial size, `bottleneck_module`) is average-pooled per slice
and averaged per stack (a cine: over all its frames and slices). `fit_cmr_ood` fits a
Mahalanobis detector on the training split's stacks and sets its threshold at the 95th
percentile of the calibration split's scores (`cinelab calibrate`, stored in the
checkpoint's ``extra`` with the intervals); `cmr_ood_columns` adds ``ood_score`` /
``ood_flag`` to predict's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.infer.ood import DEFAULT_QUANTILE, MahalanobisDetector, capture_features
from cinelab.train.checkpoint import InputSpec

FEATURE_BATCH = 16


def _normalised(slices: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """Float (N, C, H, W) input of uint8 slices (N, H, W) or (N, H, W, C)."""
    x = torch.from_numpy(np.asarray(slices, np.float32))
    if x.ndim == 3:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2)
    mean = torch.as_tensor(spec.mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.as_tensor(spec.std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def bottleneck_module(model: nn.Module, batch: torch.Tensor) -> str:
    """Name of the module run once in a forward of `batch` whose (N, C, H, W) output has
    the fewest pixels (the last such: the bottleneck's outermost block)."""
    names = {m: n for n, m in model.named_modules() if m is not model}
    calls: dict[str, int] = {}
    sizes: dict[str, int] = {}

    def hook(mod: nn.Module, _args: Any, out: Any) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            sizes[name] = int(out.shape[2] * out.shape[3])

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for h in handles:
            h.remove()
    once = [n for n in sizes if calls[n] == 1]
    if not once:
        raise InputError(None, "feature map", "a layer with a (N, C, H, W) output",
                         f"none in {type(model).__name__}")
    smallest = min(sizes[n] for n in once)
    return [n for n in once if sizes[n] == smallest][-1]


def stack_features(model: nn.Module, spec: InputSpec, store: PreparedStore,
                   ids: Sequence[str], module: str, pool: str = "mean") -> np.ndarray:
    """(len(ids), D) features: `module`'s output pooled per slice, averaged per stack."""
    model = model.eval().cpu()
    rows = []
    for sid in ids:
        slices = store.frames(sid)
        with capture_features(model, module, pool=pool) as found, torch.no_grad():
            for first in range(0, len(slices), FEATURE_BATCH):
                model(_normalised(slices[first:first + FEATURE_BATCH], spec))
        rows.append(torch.cat(found, dim=0).mean(dim=0).numpy())
    return np.stack(rows).astype(float)


def fit_cmr_ood(model: nn.Module, spec: InputSpec, store: PreparedStore,
                train_ids: Sequence[str], calibration_ids: Sequence[str],
                quantile: float = DEFAULT_QUANTILE) -> MahalanobisDetector:
    """Mahalanobis detector on the training stacks' bottleneck features, its threshold the
    `quantile` of the calibration stacks' scores."""
    if len(train_ids) < 2 or not calibration_ids:
        raise InputError(store.root, "OOD samples", "at least 2 training stacks and 1 "
                         "calibration stack", f"{len(train_ids)} and {len(calibration_ids)}")
    first = _normalised(store.frames(train_ids[0])[:1], spec)
    module = bottleneck_module(model.eval().cpu(), first)
    detector = MahalanobisDetector.fit(stack_features(model, spec, store, train_ids, module),
                                       module=module)
    detector.set_threshold(detector.score(
        stack_features(model, spec, store, calibration_ids, module)), quantile)
    return detector


def cmr_ood_columns(table: pd.DataFrame, detector: MahalanobisDetector, model: nn.Module,
                    spec: InputSpec, store: PreparedStore) -> pd.DataFrame:
    """`table` (one row per sample_id of `store`) with ``ood_score`` / ``ood_flag``."""
    feats = stack_features(model, spec, store, table["sample_id"].astype(str).tolist(),
                           detector.module, detector.pool)
    scores = detector.score(feats)
    return table.assign(ood_score=scores, ood_flag=detector.flag(scores))
