"""Metrics as plain numpy functions: Dice, regression (MAE/RMSE/R²), ROC/AUC, confusion.

Conventions shared by every function here:

- Pairs where any input is NaN or infinite are left out; each report says how many pairs it
  used (`n`).
- A *metric entry* is a dict ``{"value", "ci_low", "ci_high"}`` (percentile bootstrap over
  samples); a bare number is a count or a setting. `metrics_table` flattens nested reports
  into rows ``metric, value, ci_low, ci_high`` with dotted names.
- Functions marked with `batched` accept arrays with a leading resample axis ``(B, n)`` and
  return ``(B,)``; `bootstrap_ci` then evaluates all resamples in one vectorised call.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from cinelab.errors import InputError

DEFAULT_N_BOOT = 1000
DEFAULT_ALPHA = 0.05
BOOT_CHUNK_ELEMENTS = 4_000_000  # resampled elements held in memory at once per chunk
METRIC_KEYS = ("value", "ci_low", "ci_high")
BINARY_RATES = ("sensitivity", "specificity", "accuracy", "ppv", "npv")
#: Fewest cases of each class for a bootstrap CI of a binary metric; below it the CIs are
#: refused (NaN) and ``ci_refused`` says why (one positive gives AUC CI [1.000, 1.000]).
MIN_CASES_PER_CLASS = 2
#: Below this many cases of a class the CIs are kept but ``ci_flag`` calls them unreliable.
RELIABLE_CASES_PER_CLASS = 10
#: Predictions whose spread is below this fraction of the labels' spread have collapsed.
COLLAPSE_SPREAD_RATIO = 0.1


# --------------------------------------------------------------------------- helpers


def batched(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark `fn` as accepting (B, n) arrays and returning (B,) (see `bootstrap_ci`)."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def _as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise InputError(None, name, "a 1-D array", f"shape {arr.shape}")
    return arr


def finite_pairs(**arrays: Any) -> list[np.ndarray]:
    """1-D float arrays of equal length with rows holding any NaN/inf left out."""
    arrs = [_as_1d(name, a) for name, a in arrays.items()]
    lengths = {name: len(a) for name, a in zip(arrays, arrs, strict=True)}
    if len(set(lengths.values())) > 1:
        raise InputError(None, "/".join(lengths), "arrays of equal length", str(lengths))
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrs]) if arrs else None
    return [a[keep] for a in arrs]


def _binary(name: str, y: np.ndarray) -> np.ndarray:
    """Check 0/1 labels; returns them as float."""
    bad = np.setdiff1d(np.unique(y), [0.0, 1.0])
    if bad.size:
        raise InputError(None, name, "binary labels 0/1 (or booleans)",
                         f"values {bad[:5].tolist()}", "map the positive class to 1")
    return y


def _safe_div(num: Any, den: Any) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------- Dice


def dice(pred: Any, true: Any) -> float:
    """Binary Dice 2|A∩B| / (|A|+|B|) over all elements; two empty masks score 1."""
    p, t = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    if p.shape != t.shape:
        raise InputError(None, "pred/true", "masks of the same shape", f"{p.shape} vs {t.shape}")
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(p, t).sum()) / total


def dice_per_frame(pred: Any, true: Any) -> np.ndarray:
    """Dice of each item along the first axis (frames, slices) of two masks; empty-empty = 1."""
    p, t = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    if p.shape != t.shape or p.ndim < 2:
        raise InputError(None, "pred/true", "stacks of masks of the same shape",
                         f"{p.shape} vs {t.shape}")
    axes = tuple(range(1, p.ndim))
    total = p.sum(axis=axes) + t.sum(axis=axes)
    inter = np.logical_and(p, t).sum(axis=axes)
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


@batched
def pooled_dice(inter: np.ndarray, size: np.ndarray) -> np.ndarray:
    """2 Σ|A∩B| / Σ(|A|+|B|) from per-sample intersections and size sums (last axis)."""
    total = np.sum(size, axis=-1)
    return np.where(total > 0, 2.0 * np.sum(inter, axis=-1) / np.where(total > 0, total, 1), 1.0)


def dice_per_class(pred: Any, true: Any, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label of two integer label maps (label vs. rest)."""
    p, t = np.asarray(pred), np.asarray(true)
    return {int(lab): dice(p == lab, t == lab) for lab in labels}


# --------------------------------------------------------------------------- regression


@batched
def mean(x: np.ndarray) -> np.ndarray:
    """Mean along the last axis (batched, for bootstrap CIs of a mean)."""
    return np.mean(x, axis=-1)


@batched
def median(x: np.ndarray) -> np.ndarray:
    """Median along the last axis (batched, for bootstrap CIs of a median)."""
    return np.median(x, axis=-1)


@batched
def mae(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean absolute error along the last axis."""
    return np.mean(np.abs(y_pred - y_true), axis=-1)


@batched
def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Root mean squared error along the last axis."""
    return np.sqrt(np.mean((y_pred - y_true) ** 2, axis=-1))


@batched
def bias(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean of prediction minus truth along the last axis."""
    return np.mean(y_pred - y_true, axis=-1)


@batched
def r2(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination 1 - SS_res/SS_tot (NaN when the truth is constant)."""
    ss_res = np.sum((y_true - y_pred) ** 2, axis=-1)
    ss_tot = np.sum((y_true - np.mean(y_true, axis=-1, keepdims=True)) ** 2, axis=-1)
    return 1.0 - _safe_div(ss_res, ss_tot)


REGRESSION_METRICS: dict[str, Callable[..., Any]] = {"mae": mae, "rmse": rmse, "r2": r2,
                                                     "bias": bias}


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """MAE, RMSE, R², bias (mean of pred - true) and n, over finite pairs."""
    t, p = finite_pairs(y_true=y_true, y_pred=y_pred)
    out = {name: float(fn(t, p)) if len(t) else float("nan")
           for name, fn in REGRESSION_METRICS.items()}
    return {**out, "n": int(len(t))}


# --------------------------------------------------------------------------- bootstrap


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Chunks of (b, n) resampling indices, n_boot rows in all, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOT_CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def percentile_ci(stats: np.ndarray, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    """Percentile interval of bootstrap statistics, ignoring NaN resamples."""
    stats = np.asarray(stats, dtype=float)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _resampled_stats(metric_fn: Callable[..., Any], arrays: Sequence[np.ndarray],
                     n_boot: int, seed: int, is_batched: bool) -> np.ndarray:
    out = []
    for idx in bootstrap_indices(len(arrays[0]), n_boot, seed):
        if is_batched:
            out.append(np.asarray(metric_fn(*[a[idx] for a in arrays]), dtype=float))
        else:
            out.append(np.array([metric_fn(*[a[row] for a in arrays]) for row in idx], float))
    return np.concatenate(out) if out else np.empty(0)


def bootstrap_ci(
    metric_fn: Callable[..., Any],
    *arrays: Any,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    is_batched: bool | None = None,
) -> tuple[float, float, float]:
    """(point, lo, hi): metric on the data and its percentile bootstrap interval.

    Samples (the first axis of every array) are resampled with replacement `n_boot` times
    with a seeded generator. Functions marked `batched` (or `is_batched=True`) are evaluated
    on all resamples at once; others are called once per resample.
    """
    arrs = [np.asarray(a) for a in arrays]
    if not arrs:
        raise InputError(None, "arrays", "at least one array", "none")
    if len({len(a) for a in arrs}) > 1:
        raise InputError(None, "arrays", "arrays of equal length", str([len(a) for a in arrs]))
    if len(arrs[0]) == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(metric_fn(*arrs))
    use_batch = getattr(metric_fn, "batched", False) if is_batched is None else is_batched
    stats = _resampled_stats(metric_fn, arrs, n_boot, seed, bool(use_batch))
    lo, hi = percentile_ci(stats, alpha)
    return point, lo, hi


def metric_entry(point: float, lo: float, hi: float) -> dict[str, float]:
    """A metric entry dict {value, ci_low, ci_high}."""
    return {"value": float(point), "ci_low": float(lo), "ci_high": float(hi)}


def regression_report(y_true: Any, y_pred: Any, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                      alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
    """MAE, RMSE, R² and bias, each with a bootstrap CI, plus n (finite pairs)."""
    t, p = finite_pairs(y_true=y_true, y_pred=y_pred)
    out: dict[str, Any] = {"n": int(len(t))}
    for name, fn in REGRESSION_METRICS.items():
        out[name] = metric_entry(*bootstrap_ci(fn, t, p, n_boot=n_boot, seed=seed, alpha=alpha))
    return out


# --------------------------------------------------------------------------- ROC / AUC


def _auc_batched(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC along the last axis (ties count 1/2); NaN for a single class."""
    ranks = rankdata(score, axis=-1)
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    u = (ranks * y).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    return _safe_div(u, n_pos * n_neg)


_auc_batched.batched = True  # type: ignore[attr-defined]


def _warn_single_class(y: np.ndarray, what: str) -> bool:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        warnings.warn(f"{what}: labels hold a single class ({n_pos} positive of {len(y)}); "
                      "the result is NaN", RuntimeWarning, stacklevel=3)
        return True
    return False


def roc_curve(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score, descending, from (0, 0).

    The first threshold is +inf (nothing called positive); a case is positive when
    ``score >= threshold``. Tied scores move together (one diagonal step).
    """
    y, s = finite_pairs(y=y, score=score)
    y = _binary("y", y)
    _warn_single_class(y, "roc_curve")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], int)
    tps = np.cumsum(y)[last] if len(s) else np.array([])
    fps = (last + 1) - tps
    tpr = _safe_div(np.r_[0.0, tps], np.full(len(tps) + 1, y.sum()))
    fpr = _safe_div(np.r_[0.0, fps], np.full(len(fps) + 1, len(y) - y.sum()))
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y: Any, score: Any) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties 1/2); NaN + warning
    when only one class is present."""
    y, s = finite_pairs(y=y, score=score)
    y = _binary("y", y)
    if len(y) == 0 or _warn_single_class(y, "roc_auc"):
        return float("nan")
    return float(_auc_batched(y, s))


def youden_threshold(y: Any, score: Any) -> float:
    """Threshold maximising sensitivity + specificity - 1 (positive when score >= it)."""
    fpr, tpr, thr = roc_curve(y, score)
    j = tpr[1:] - fpr[1:]
    if j.size == 0 or not np.isfinite(j).any():
        return float("nan")
    return float(thr[1:][int(np.nanargmax(j))])


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> np.ndarray:
    """Counts (k, k): rows are true labels, columns predicted, in `labels` order."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise InputError(None, "y_true/y_pred", "1-D arrays of equal length",
                         f"{t.shape} vs {p.shape}")
    labels = list(np.unique(np.r_[t, p])) if labels is None else list(labels)
    out = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for (i, a), (j, b) in itertools.product(enumerate(labels), repeat=2):
        out[i, j] = int(np.sum((t == a) & (p == b)))
    return out


def _binary_rates(y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, accuracy, PPV, NPV along the last axis."""
    tp = (y * pred).sum(-1)
    tn = ((1 - y) * (1 - pred)).sum(-1)
    fp = ((1 - y) * pred).sum(-1)
    fn = (y * (1 - pred)).sum(-1)
    return {"sensitivity": _safe_div(tp, tp + fn), "specificity": _safe_div(tn, tn + fp),
            "accuracy": _safe_div(tp + tn, y.shape[-1]), "ppv": _safe_div(tp, tp + fp),
            "npv": _safe_div(tn, tn + fn)}


def _binary_boot(y: np.ndarray, s: np.ndarray, pred: np.ndarray, n_boot: int, seed: int,
                 alpha: float) -> dict[str, tuple[float, float]]:
    stats: dict[str, list[np.ndarray]] = {name: [] for name in ("auc", *BINARY_RATES)}
    for idx in bootstrap_indices(len(y), n_boot, seed):
        yb = y[idx]
        stats["auc"].append(_auc_batched(yb, s[idx]))
        for name, vals in _binary_rates(yb, pred[idx]).items():
            stats[name].append(vals)
    return {name: percentile_ci(np.concatenate(v) if v else np.empty(0), alpha)
            for name, v in stats.items()}


def binary_report(
    y: Any,
    score: Any,
    threshold: float | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    y_pred: Any | None = None,
    min_cases: int = MIN_CASES_PER_CLASS,
) -> dict[str, Any]:
    """AUC, sensitivity, specificity, accuracy, PPV, NPV (bootstrap CIs) and tn/fp/fn/tp.

    Predicted positive: ``score >= threshold`` (Youden's threshold when None), or the 0/1
    labels `y_pred` when given (then `threshold` is only recorded).
    With fewer than `min_cases` positives or negatives every CI is refused (NaN), a
    RuntimeWarning is issued and ``ci_refused`` states the counts (else it is None); with
    fewer than `RELIABLE_CASES_PER_CLASS` ``ci_flag`` says the CIs are unreliable.
    """
    y_arr, s = _as_1d("y", y), _as_1d("score", score)
    p_arr = np.zeros(len(y_arr)) if y_pred is None else _as_1d("y_pred", y_pred)
    y_arr, s, p_arr = finite_pairs(y=y_arr, score=s, y_pred=p_arr)
    y_arr = _binary("y", y_arr)
    if y_pred is None:
        threshold = youden_threshold(y_arr, s) if threshold is None else threshold
        p_arr = (s >= threshold).astype(float)
    p_arr = _binary("y_pred", p_arr)
    auc = roc_auc(y_arr, s) if len(y_arr) else float("nan")
    refused = class_count_refusal(y_arr, min_cases)
    if refused is None:
        cis = _binary_boot(y_arr, s, p_arr, n_boot, seed, alpha)
    else:
        warnings.warn(refused, RuntimeWarning, stacklevel=2)
        cis = {name: (float("nan"), float("nan")) for name in ("auc", *BINARY_RATES)}
    rates = {k: float(v) for k, v in _binary_rates(y_arr, p_arr).items()}
    (tn, fp), (fn, tp) = confusion_matrix(y_arr, p_arr, labels=[0.0, 1.0]).tolist()
    out: dict[str, Any] = {"n": int(len(y_arr)), "n_pos": int(y_arr.sum()),
                           "threshold": None if threshold is None else float(threshold),
                           "ci_refused": refused,
                           "ci_flag": None if refused is not None else class_count_refusal(
                               y_arr, RELIABLE_CASES_PER_CLASS, "bootstrap CIs unreliable"),
                           "auc": metric_entry(auc, *cis["auc"])}
    out.update({name: metric_entry(rates[name], *cis[name]) for name in BINARY_RATES})
    out.update({"tn": tn, "fp": fp, "fn": fn, "tp": tp})
    return out


def class_count_refusal(y: Any, min_cases: int = MIN_CASES_PER_CLASS,
                        what: str = "bootstrap CIs refused") -> str | None:
    """Why bootstrap CIs of a binary metric are refused (a class has fewer than `min_cases`
    cases), else None."""
    y = np.asarray(y, dtype=float).reshape(-1)
    n_pos = int(np.sum(y == 1))
    n_neg = int(len(y) - n_pos)
    if min(n_pos, n_neg) >= int(min_cases):
        return None
    return (f"{what}: {n_pos} positive and {n_neg} negative case(s); each "
            f"class needs at least {int(min_cases)}")


# --------------------------------------------------------------------------- baseline


def _mae_gain(y: np.ndarray, pred: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Baseline MAE minus model MAE along the last axis (> 0: the model is better)."""
    return np.abs(y - base).mean(-1) - np.abs(y - pred).mean(-1)


_mae_gain.batched = True  # type: ignore[attr-defined]


def baseline_comparison(y_true: Any, y_pred: Any, baseline: Any, n_boot: int = DEFAULT_N_BOOT,
                        seed: int = 0, alpha: float = DEFAULT_ALPHA,
                        what: str = "the model") -> dict[str, Any]:
    """Is the model better than a baseline (e.g. predict-the-training-mean)? The collapse
    detector.

    ``mae_gain``: baseline MAE minus model MAE with a paired bootstrap CI (> 0 is better);
    ``spread_ratio``: SD of the predictions / SD of the labels. ``not_better`` is True when
    the CI of the gain reaches 0 or below; ``collapsed`` when the predictions' spread is
    below `COLLAPSE_SPREAD_RATIO` of the labels'; ``warning`` is the sentence to show (None
    when the model is better beyond its CI). `baseline` is a number or one value per case.
    """
    t, p = finite_pairs(y_true=y_true, y_pred=y_pred)
    base = np.broadcast_to(np.asarray(baseline, dtype=float), np.asarray(y_true).shape)
    keep = np.isfinite(np.asarray(y_true, float)) & np.isfinite(np.asarray(y_pred, float))
    b = np.asarray(base, dtype=float)[keep]
    out: dict[str, Any] = {"n": int(len(t))}
    if len(t) < 2:
        out.update(mae_gain=metric_entry(float("nan"), float("nan"), float("nan")),
                   spread_ratio=None, not_better=True, collapsed=False,
                   warning=f"{what} cannot be compared with the baseline: "
                           f"{len(t)} scored case(s)")
        return out
    gain = metric_entry(*bootstrap_ci(_mae_gain, t, p, b, n_boot=n_boot, seed=seed,
                                      alpha=alpha))
    sd_true = float(np.std(t))
    spread = float(np.std(p) / sd_true) if sd_true > 0 else None
    not_better = not gain["ci_low"] > 0
    collapsed = spread is not None and spread < COLLAPSE_SPREAD_RATIO
    warning = None
    if not_better or collapsed:
        parts = []
        if not_better:
            parts.append(f"{what} is not better than the predict-the-mean baseline: MAE gain "
                         f"{gain['value']:.2f} (CI {gain['ci_low']:.2f} to "
                         f"{gain['ci_high']:.2f}) includes 0 or less")
        if collapsed:
            parts.append(f"its predictions have collapsed (SD {np.std(p):.2f} vs labels' "
                         f"{sd_true:.2f}, ratio {spread:.3f} < {COLLAPSE_SPREAD_RATIO})")
        warning = "; ".join(parts) + " - the model may have learned nothing"
    out.update(mae_gain=gain, spread_ratio=spread, not_better=bool(not_better),
               collapsed=bool(collapsed), warning=warning)
    return out


# --------------------------------------------------------------------------- tables


def is_metric_entry(obj: Any) -> bool:
    """True for a {value, ci_low, ci_high} dict."""
    return isinstance(obj, Mapping) and "value" in obj and set(obj) <= set(METRIC_KEYS)


def _is_number(obj: Any) -> bool:
    return obj is None or (isinstance(obj, (int, float, np.integer, np.floating))
                           and not isinstance(obj, bool))


def metric_rows(report: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Flatten a nested report into rows {metric, value, ci_low, ci_high} (dotted names).

    Metric entries give one row with their CI (None where it is undefined); bare numbers
    (counts, settings) one row with an empty string as CI; strings, lists and booleans are
    left out.
    """
    rows: list[dict[str, Any]] = []
    for key, val in report.items():
        name = f"{prefix}{key}"
        if is_metric_entry(val):
            rows.append({"metric": name, **{k: val.get(k) for k in METRIC_KEYS}})
        elif isinstance(val, Mapping):
            rows.extend(metric_rows(val, prefix=f"{name}."))
        elif _is_number(val):
            rows.append({"metric": name, "value": val, "ci_low": "", "ci_high": ""})
    return rows


def metrics_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """`metric_rows` as a DataFrame with columns metric, value, ci_low, ci_high."""
    return pd.DataFrame(metric_rows(report), columns=["metric", *METRIC_KEYS], dtype=object)


def json_safe(obj: Any) -> Any:
    """Nested copy with NaN/inf as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def surface_distances(pred: Any, true: Any, spacing: Sequence[float] | None = None,
                      percentile: float = 95.0) -> dict[str, float]:
    """Boundary distances of two binary masks (2D or 3D), in the units of `spacing` (one
    value per axis; voxels when None), with MONAI's `compute_hausdorff_distance` and
    `compute_average_surface_distance`: {"hd": the `percentile`-th percentile Hausdorff
    distance (HD95 by default), "assd": the average symmetric surface distance}. NaN when
    either mask is empty (not scored)."""
    p, t = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    if p.shape != t.shape or p.ndim not in (2, 3):
        raise InputError(None, "pred/true", "binary masks of one 2D or 3D shape",
                         f"{p.shape} vs {t.shape}")
    if not p.any() or not t.any():
        return {"hd": float("nan"), "assd": float("nan")}
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    def onehot(mask: np.ndarray) -> Any:
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))

    spacing = None if spacing is None else [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI's own deprecation notices
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(onehot(p), onehot(t), include_background=False,
                                        percentile=percentile, spacing=spacing)
        assd = compute_average_surface_distance(onehot(p), onehot(t),
                                                include_background=False, symmetric=True,
                                                spacing=spacing)
    return {"hd": float(hd.reshape(-1)[0]), "assd": float(assd.reshape(-1)[0])}
