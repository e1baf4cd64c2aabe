"""Out-of-distribution scores from a model's own features, with a threshold set on validation.

* ``MahalanobisDetector``  distance of penultimate features to the training distribution:
                           class-conditional means with one shared (tied) covariance, or a
                           single Gaussian, the covariance shrunk by Ledoit-Wolf (Lee et al.
                           2018); score = smallest distance to a class mean.
* ``EnergyDetector``       energy score from logits, E = -T·logsumexp(logits / T) (Liu et al.
                           2020); a single binary logit z is read as logits (0, z).

Higher score = less like the training data. `set_threshold(val_scores, quantile=0.95)` puts
the threshold at a quantile of in-distribution validation scores, so about 1 - quantile of
in-distribution inputs are flagged. `penultimate_features` / `capture_features` get the
features with a forward hook; the state is a plain dict for a checkpoint's ``extra``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf
from torch import nn

from cinelab.errors import InputError
from cinelab.models.registry import output_layer

OOD_FORMAT = "cinelab-ood/1"
DEFAULT_QUANTILE = 0.95


def _features(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim > 2:  # (N, C, ...) feature maps: global average pool
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1).mean(axis=2)
    return arr


def _threshold(scores: Any, quantile: float) -> float:
    s = np.asarray(scores, dtype=float).reshape(-1)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise InputError(None, "validation OOD scores", "at least one finite score", "none")
    if not 0.0 < quantile < 1.0:
        raise InputError(None, "OOD quantile", "a number between 0 and 1", repr(quantile))
    return float(np.quantile(s, quantile, method="higher"))


@dataclass
class _Thresholded:
    threshold: float = float("inf")
    info: dict[str, Any] = field(default_factory=dict)

    def set_threshold(self, val_scores: Any, quantile: float = DEFAULT_QUANTILE) -> float:
        """Threshold = `quantile` of in-distribution validation scores; returns it."""
        self.threshold = _threshold(val_scores, quantile)
        self.info["threshold_quantile"] = float(quantile)
        self.info["n_validation"] = int(np.isfinite(np.asarray(val_scores, float)).sum())
        return self.threshold

    def flag(self, scores: Any) -> np.ndarray:
        """True where the score is above the threshold (a NaN score is flagged too)."""
        s = np.asarray(scores, dtype=float)
        return ~(s <= self.threshold)


@dataclass
class MahalanobisDetector(_Thresholded):
    """Mahalanobis distance of features to class means under a shrunk shared covariance."""

    means: np.ndarray = field(default_factory=lambda: np.zeros((1, 1)))
    precision: np.ndarray = field(default_factory=lambda: np.eye(1))
    kind: str = "mahalanobis"
    #: where the features come from: a module name ("" = input of the output layer) & pool
    module: str = ""
    pool: str = "mean"

    def features(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(features, output) of `batch` taken where this detector was fitted."""
        return penultimate_features(model, batch, self.module or None, pool=self.pool)

    @classmethod
    def fit(cls, features: Any, labels: Any | None = None, *, module: str = "",
            pool: str = "mean") -> MahalanobisDetector:
        """Fit on training features (N, D) (feature maps are average-pooled); with `labels`,
        one mean per class and a tied covariance, else a single Gaussian. `module` / `pool`
        record where the features were taken (see `features`)."""
        x = _features(features)
        keep = np.isfinite(x).all(axis=1)
        y = None if labels is None else np.asarray(labels).reshape(-1)
        if y is not None and len(y) != len(x):
            raise InputError(None, "labels", f"{len(x)} labels (one per feature row)",
                             str(len(y)))
        x = x[keep]
        y = None if y is None else y[keep]
        if len(x) < 2:
            raise InputError(None, "training features", "at least 2 finite rows", str(len(x)))
        classes = [None] if y is None else sorted(np.unique(y).tolist())
        means = np.stack([x.mean(axis=0) if c is None else x[y == c].mean(axis=0)
                          for c in classes])
        centred = x - (means[0] if y is None else
                       means[np.searchsorted(np.asarray(classes), y)])
        lw = LedoitWolf(assume_centered=True).fit(centred)
        return cls(means=means, precision=np.asarray(lw.precision_, float), module=module,
                   pool=pool,
                   info={"n_train": len(x), "classes": [None if c is None else
                                                         (c.item() if hasattr(c, "item") else c)
                                                         for c in classes],
                         "shrinkage": float(lw.shrinkage_), "dim": int(x.shape[1])})

    def score(self, features: Any) -> np.ndarray:
        """Smallest Mahalanobis distance to a class mean, per row (NaN for a NaN row)."""
        x = _features(features)
        if x.shape[1] != self.means.shape[1]:
            raise InputError(None, "features", f"{self.means.shape[1]} features per sample",
                             str(x.shape[1]))
        d = x[:, None, :] - self.means[None, :, :]
        m = np.einsum("ncd,de,nce->nc", d, self.precision, d)
        return np.sqrt(np.maximum(m.min(axis=1), 0.0))

    def to_dict(self, json_safe: bool = False) -> dict[str, Any]:
        """Dict for a checkpoint's ``extra``: means (float64) and precision (float32, D x D)
        as CPU tensors, which torch's weights-only load accepts and which stay compact for
        wide features (D = 1024: 4 MB); nested lists with `json_safe` (for a JSON sidecar).
        `from_dict` takes either."""
        means = np.ascontiguousarray(self.means, np.float64)
        precision = np.ascontiguousarray(self.precision, np.float32)
        return {"format": OOD_FORMAT, "kind": self.kind, "threshold": self.threshold,
                "means": means.tolist() if json_safe else torch.from_numpy(means),
                "precision": precision.tolist() if json_safe else torch.from_numpy(precision),
                "module": self.module, "pool": self.pool, "info": dict(self.info)}


@dataclass
class EnergyDetector(_Thresholded):
    """Energy score of logits (higher = more OOD)."""

    temperature: float = 1.0
    kind: str = "energy"

    def score(self, logits: Any) -> np.ndarray:
        """-T·logsumexp(logits / T) per row; a 1-D array is one binary logit per sample."""
        z = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) \
            else np.asarray(logits, dtype=float)
        if z.ndim == 1 or (z.ndim == 2 and z.shape[1] == 1):
            z = z.reshape(-1, 1)
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        return -self.temperature * logsumexp(z / self.temperature, axis=1)

    def to_dict(self, json_safe: bool = False) -> dict[str, Any]:  # noqa: ARG002
        """Plain dict for storage (always JSON-safe)."""
        return {"format": OOD_FORMAT, "kind": self.kind, "threshold": self.threshold,
                "temperature": self.temperature, "info": dict(self.info)}


OODDetector = MahalanobisDetector | EnergyDetector


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=float)


def ood_from_dict(state: dict[str, Any]) -> OODDetector:
    """Rebuild a detector from its `to_dict` output."""
    if not isinstance(state, dict) or state.get("format") != OOD_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise InputError(None, "OOD state", OOD_FORMAT, repr(found))
    info = dict(state.get("info", {}))
    if state.get("kind") == "mahalanobis":
        return MahalanobisDetector(threshold=float(state["threshold"]), info=info,
                                   means=_array(state["means"]),
                                   precision=_array(state["precision"]),
                                   module=str(state.get("module", "")),
                                   pool=str(state.get("pool", "mean")))
    if state.get("kind") == "energy":
        return EnergyDetector(threshold=float(state["threshold"]), info=info,
                              temperature=float(state.get("temperature", 1.0)))
    raise InputError(None, "OOD kind", "mahalanobis or energy", repr(state.get("kind")))


def _tensor_of(value: Any) -> torch.Tensor:
    """The tensor in a module's output: a dict's 'out' (or first value), a list's last item
    (encoders return feature pyramids, deepest last), a tuple's first (output, aux...)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = value["out"] if "out" in value else next(iter(value.values()))
    elif isinstance(value, list):
        value = value[-1]
    elif isinstance(value, tuple):
        value = value[0]
    else:
        raise TypeError(f"no tensor in a {type(value).__name__}")
    return _tensor_of(value)


POOLS = ("mean", "meanstd")


def _pooled(t: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """(N, D) features: feature maps (N, C, ...) average-pooled over space/time, and with
    pool="meanstd" their spatial SD appended (texture the average hides)."""
    t = t.detach().float()
    if t.ndim <= 2:
        return t.reshape(t.shape[0], -1)
    flat = t.flatten(2)
    if pool == "meanstd":
        return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)
    return flat.mean(dim=2)


def last_feature_map(model: nn.Module, batch: torch.Tensor) -> str:
    """Name of the module that last produced a feature map (N, C, H, W[, T]) larger than
    1 x 1 in one no-grad forward of `batch`, among submodules run exactly once (a block
    finishes after its inner layers, so this is the outermost one, e.g. ``layer4``): the
    layer to hook with pool="meanstd" for Mahalanobis OOD scores of classifiers and video
    networks. For segmentation networks the last map is the mask logits: name the encoder
    instead (e.g. ``backbone``)."""
    names = {m: n for n, m in model.named_modules() if m is not model}
    order: list[str] = []
    calls: dict[str, int] = {}

    def hook(mod: nn.Module, _args: Any, out: Any) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        try:
            t = _tensor_of(out)
        except (StopIteration, KeyError, IndexError, TypeError):
            return
        if isinstance(t, torch.Tensor) and t.ndim > 2 and t[0, 0].numel() > 1:
            order.append(name)

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    once = [n for n in order if calls[n] == 1]
    if not once:
        raise InputError(None, "feature map", "a layer with a (N, C, H, W) output",
                         f"none in {type(model).__name__}")
    return once[-1]


@contextmanager
def capture_features(model: nn.Module, module: nn.Module | str | None = None,
                     capture: str | None = None, pool: str = "mean"
                     ) -> Iterator[list[torch.Tensor]]:
    """While open, every forward of `model` appends the (N, D) features at `module` to the
    yielded list: the input of the recorded output Linear when `module` is None (the
    penultimate features), else `module`'s output (or input with capture="input"); `module`
    may be a name (``model.get_submodule``). Feature maps are pooled (`pool`: "mean" or
    "meanstd"). Use it around an existing predict loop. An execution engine (not a module;
    `infer.engines.Engine`) yields its exported features instead, when taken there."""
    if pool not in POOLS:
        raise InputError(None, "pool", f"one of {', '.join(POOLS)}", repr(pool))
    if not isinstance(model, nn.Module) and hasattr(model, "feature_capture"):
        with model.feature_capture(module, capture, pool) as found:
            yield found
        return
    if isinstance(module, str):
        module = model.get_submodule(module) if module else None
    if module is None:
        try:
            module, capture = output_layer(model), capture or "input"
        except TypeError as exc:
            raise InputError(None, "output layer",
                             "a recorded output Linear, or the module to hook", str(exc),
                             "pass module= (e.g. the encoder of a segmentation model)"
                             ) from exc
    capture = capture or "output"
    if capture not in ("input", "output"):
        raise InputError(None, "capture", "'input' or 'output'", repr(capture))
    found: list[torch.Tensor] = []
    if capture == "input":
        handle = module.register_forward_pre_hook(
            lambda _m, args: found.append(_pooled(_tensor_of(args[0]), pool).cpu()))
    else:
        handle = module.register_forward_hook(
            lambda _m, _args, out: found.append(_pooled(_tensor_of(out), pool).cpu()))
    try:
        yield found
    finally:
        handle.remove()


def penultimate_features(model: nn.Module, batch: torch.Tensor,
                         module: nn.Module | str | None = None, capture: str | None = None,
                         pool: str = "mean") -> tuple[torch.Tensor, Any]:
    """(features (N, D) on CPU, model output) of one no-grad forward of `batch`; see
    `capture_features` for which features."""
    with capture_features(model, module, capture, pool) as found, torch.no_grad():
        output = model(batch)
    if not found:
        raise InputError(None, "feature hook", "the hooked module to run in forward",
                         "it was not called")
    return torch.cat(found, dim=0), output
