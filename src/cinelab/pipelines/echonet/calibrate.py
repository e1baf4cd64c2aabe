"""Fit an EF checkpoint's uncertainty state after training and store it in the checkpoint.

`calibrate_echonet(model, store, out, options)`:

1. an OOD detector (`MahalanobisDetector`, Ledoit-Wolf shrunk covariance) on the EF model's
   penultimate features of the training videos (per video, the mean over `FIT_CLIPS` clips
   spread over the video);
2. the whole `predict` (beat by beat, as the headline ``ef``) on the calibration split,
   which training never saw (default ``val``), giving ``ef`` and the video's ``ood_score``
   exactly as prediction will;
3. split-conformal intervals of ``ef`` from those residuals, and the OOD threshold at the
   `OOD_QUANTILE` of the calibration scores (about 5 % of in-distribution videos flagged);
4. the state merged into the EF checkpoint's ``extra`` (`UncertaintyState.to_extra`), so
   every later `predict` adds ``ef_lo``/``ef_hi`` and ``ood_score``/``ood_flag``.

`out` keeps the calibration predictions and calibration.json (what was fitted, on what).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.sampling import all_clip_starts
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.infer.contract import read_predictions
from cinelab.infer.intervals import DEFAULT_COVERAGE, IntervalModel, check_coverage
from cinelab.infer.ood import DEFAULT_QUANTILE, MahalanobisDetector
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.pipelines.echonet.predict import predict
from cinelab.pipelines.echonet.sources import (
    EF_TASK,
    STORE_INFO,
    conform,
    list_items,
    load_for_task,
    load_item,
    resolve_checkpoints,
)
from cinelab.pipelines.echonet.uncertainty import mean_feature, video_features
from cinelab.pipelines.echonet.video import predict_ef_clips, resample_to_fps, training_fps
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import LoadedCheckpoint, update_checkpoint_extra
from cinelab.utils import write_json

CALIBRATION_SPLIT, FIT_SPLIT = "val", "train"
FIT_CLIPS = 4  # clips per training video averaged into its feature
OOD_QUANTILE = DEFAULT_QUANTILE
CALIBRATION_JSON, PREDICTIONS = "calibration.json", "predictions"
CALIBRATE_OPTIONS = {"coverage": "default coverage of ef_lo/ef_hi (default 0.9)",
                     "ood_quantile": "quantile of calibration OOD scores used as threshold "
                                     "(default 0.95)",
                     "fit_split": "split whose videos fit the OOD detector (default train)"}


def training_features(loaded: LoadedCheckpoint, store: Path, split: str = FIT_SPLIT,
                      batch_size: int = 16, device: str = "cpu",
                      n_clips: int = FIT_CLIPS) -> np.ndarray:
    """(videos, D) penultimate features of a store split: per video the mean over `n_clips`
    clips spread evenly over the video (resampled to the EF model's training rate)."""
    spec, target = loaded.input_spec, training_fps(loaded)
    probe = MahalanobisDetector()  # default place: the input of the output Linear
    rows = []
    for item in list_items(store, split=split):
        sample = load_item(item, spec.size, spec.channels)
        frames, _ = resample_to_fps(conform(sample.frames, spec.size, spec.channels),
                                    sample.fps, target)
        starts = all_clip_starts(len(frames), int(spec.frames or 1), int(spec.period or 1))
        pick = starts[np.unique(np.linspace(0, len(starts) - 1, n_clips).round().astype(int))]
        with video_features(loaded.model, probe) as found:
            predict_ef_clips(loaded.model, frames, spec, pick, batch_size, device)
        feature = mean_feature(found)
        if feature is not None:
            rows.append(feature)
    if len(rows) < 2:
        raise InputError(store, f"{split} split", "at least 2 videos to fit the OOD detector",
                         str(len(rows)))
    return np.stack(rows)


def _check_store(store: Path, split: str) -> pd.DataFrame:
    """sample_id, EF of the store's `split` (InputError when it is not a store with it)."""
    if not (Path(store) / STORE_INFO).is_file():
        raise InputError(store, "--data", "a prepared store (`cinelab prepare`)",
                         "no store.json there")
    m = PreparedStore(store).manifest
    splits = sorted(set(m["split"].astype(str).str.lower()))
    if split not in splits or "EF" not in m.columns:
        raise InputError(store, "--split", f"a split with EF labels (one of {splits})", split)
    rows = m[m["split"].astype(str).str.lower() == split]
    return pd.DataFrame({"sample_id": rows["sample_id"].astype(str),
                         "EF": pd.to_numeric(rows["EF"], errors="coerce")})


def _finite(value: float) -> float | None:
    """None for an infinite half-width (too few calibration videos for that coverage)."""
    return float(value) if np.isfinite(value) else None


def _coverage(options: Options) -> float:
    """The ``coverage`` option (default DEFAULT_COVERAGE), checked."""
    return float(check_coverage(options.get("coverage", DEFAULT_COVERAGE)))


def calibrate_echonet(model: Path, store: Path, out: Path, options: Options) -> dict[str, Any]:
    """Fit and store the EF checkpoint's uncertainty state (see the module docstring);
    returns calibration.json's content. Options: split (default val), device, batch_size;
    extra: `CALIBRATE_OPTIONS`."""
    unknown = sorted(set(options.extra) - set(CALIBRATE_OPTIONS))
    if unknown:
        raise InputError(None, "--option", f"one of {', '.join(CALIBRATE_OPTIONS)}",
                         ", ".join(unknown))
    split = (options.split or CALIBRATION_SPLIT).lower()
    labels, out = _check_store(store, split), Path(out)
    ef_path, seg_path = resolve_checkpoints(model)
    if ef_path is None:
        raise InputError(model, "model", "an EF checkpoint (or a run folder with ef/)",
                         "a segmentation checkpoint alone")
    loaded = load_for_task(ef_path, EF_TASK)
    fit_split = str(options.get("fit_split", FIT_SPLIT)).lower()
    detector = MahalanobisDetector.fit(training_features(
        loaded, store, fit_split, options.batch_size, options.device))  # type: ignore[arg-type]
    pred = predict(ef_path, store, out / PREDICTIONS, seg_checkpoint=seg_path, split=split,
                   batch_size=options.batch_size, device=options.device,
                   uncertainty=UncertaintyState(ood=detector))
    joined = labels.merge(read_predictions(pred)[["sample_id", "ef", "ood_score"]],
                          on="sample_id", how="inner")
    intervals = IntervalModel.fit(joined["EF"], joined["ef"], output="ef",
                                  coverage=_coverage(options))
    quantile = float(options.get("ood_quantile", OOD_QUANTILE))
    detector.set_threshold(joined["ood_score"], quantile)
    state = UncertaintyState(intervals={"ef": intervals}, ood=detector)
    update_checkpoint_extra(ef_path, state.to_extra())
    summary = {"pipeline": "echonet", "checkpoint": str(ef_path), "store": str(store),
               "split": split, "fit_split": fit_split, "n_calibration": intervals.n,
               "coverage": intervals.coverage, "ef_half_width": _finite(intervals.half_width()),
               "ood": "mahalanobis", "ood_threshold": detector.threshold,
               "ood_quantile": quantile, "n_fit": int(detector.info["n_train"]),
               "feature_dim": int(detector.info["dim"])}
    write_json(out / CALIBRATION_JSON, summary)
    return summary
