"""Out-of-distribution flag of a CXR ensemble: one Mahalanobis detector per member.

`fit_member_ood` (run by `cinelab calibrate`) fits, for every member, a `MahalanobisDetector`
on the spatial mean of its last feature map for the training images (the
member's own crop and size), each member's distance divided by its median over those
training images. An image's ``ood_score`` is the mean of these normalised distances over the
members; the threshold is the `OOD_QUANTILE` of the validation images' scores (about 5 % of
in-distribution images flagged). It is stored as ``ood.pt`` (tensors, read weights-only) in
an ensemble folder, or under
``cxr_ood`` in a checkpoint's extra; `predict_with_ood` (the pipeline's predict) adds
``ood_score`` / ``ood_flag`` to predictions.csv when it is there, from features taken in the
prediction's own forward pass: under an engine (``--engine onnx``) each member is exported
with its detector's layer as the ``features`` output, so it runs once per image; run.json's
``ood`` says where the features came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cinelab.data.transforms import Normalize
from cinelab.errors import InputError
from cinelab.infer.contract import PREDICTIONS_FILE, RUN_FILE, read_predictions, read_run
from cinelab.infer.engine_outputs import FeatureSpec
from cinelab.infer.ood import DEFAULT_QUANTILE, MahalanobisDetector, last_feature_map, ood_from_dict
from cinelab.pipelines.cxr.predict import (
    CxrEnsemble,
    CxrMember,
    CxrPredictions,
    load_cxr_model,
    predict_run,
    prepare_image,
    to_batch,
)
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import read_checkpoint
from cinelab.utils import write_csv, write_json

OOD_FILE, EXTRA_KEY, FORMAT = "ood.pt", "cxr_ood", "cinelab-cxr-ood/1"
OOD_QUANTILE, POOL, BATCH = DEFAULT_QUANTILE, "mean", 16


@dataclass
class MemberOOD:
    """Per-member detectors (their ``info["scale"]``: median training distance) and the
    threshold of the mean normalised distance."""

    detectors: dict[str, MahalanobisDetector]
    threshold: float = float("inf")
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Mean over members of each member's distance / its training median."""
        return np.mean([d.score(features[n]) / float(d.info.get("scale", 1.0))
                        for n, d in self.detectors.items()], axis=0)

    def flag(self, scores: Any) -> np.ndarray:
        """True above the threshold (NaN flagged)."""
        return ~(np.asarray(scores, float) <= self.threshold)

    def to_dict(self, json_safe: bool = False) -> dict[str, Any]:
        """Plain dict (tensors unless `json_safe`)."""
        return {"format": FORMAT, "threshold": self.threshold, "info": dict(self.info),
                "members": {n: d.to_dict(json_safe) for n, d in self.detectors.items()}}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> MemberOOD:
        """Rebuild from `to_dict` output."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise InputError(None, "CXR OOD state", FORMAT, repr(type(state).__name__))
        detectors = {n: ood_from_dict(d) for n, d in state["members"].items()}
        return cls({n: d for n, d in detectors.items() if isinstance(d, MahalanobisDetector)},
                   float(state["threshold"]), dict(state.get("info") or {}))


def read_member_ood(model: Path) -> MemberOOD | None:
    """The stored detectors of an ensemble folder or a checkpoint (None when none)."""
    model = Path(model)
    folder = model if model.is_dir() else model.parent if model.suffix == ".json" else None
    if folder is not None:
        path = folder / OOD_FILE
        return MemberOOD.from_dict(torch.load(path, weights_only=True)) if path.is_file() \
            else None
    state = (read_checkpoint(model).get("extra") or {}).get(EXTRA_KEY)
    return None if state is None else MemberOOD.from_dict(state)


def _batch(member: CxrMember, images: np.ndarray) -> torch.Tensor:
    spec = member.loaded.input_spec
    return Normalize(spec.mean, spec.std)(to_batch(images, spec.channels))


def member_features(member: CxrMember, images: np.ndarray, detector: MahalanobisDetector,
                    batch_size: int = BATCH) -> np.ndarray:
    """(N, D) features of uint8 images at the member's size, taken where `detector` says."""
    model = member.loaded.model.eval()
    rows = [detector.features(model, _batch(member, images[i:i + batch_size]))[0].numpy()
            for i in range(0, len(images), batch_size)]
    return np.concatenate(rows).astype(float)


def read_images(ens: CxrEnsemble, files: Sequence[Path], mask_source: str = "auto"
                ) -> tuple[list[int], dict[str, np.ndarray]]:
    """(indices of readable files, per member its stacked (crop, size) variant)."""
    kept, variants = [], []
    for i, path in enumerate(files):
        try:
            variants.append(prepare_image(ens, path, mask_source)[1])
            kept.append(i)
        except Exception:  # noqa: BLE001 - unreadable files get no score (as in predict)
            continue
    return kept, {m.name: np.stack([v.images[(m.crop, m.size)] for v in variants])
                  for m in ens.members} if variants else {}


def fit_member_ood(model: Path, train_files: Sequence[Path], val_files: Sequence[Path],
                   mask_source: str = "auto", quantile: float = OOD_QUANTILE) -> MemberOOD:
    """Detectors fitted on `train_files`, threshold at `quantile` of `val_files` scores."""
    ens = load_cxr_model(model)
    _, train = read_images(ens, train_files, mask_source)
    if not train:
        raise InputError(None, "training images", "readable radiographs", "none")
    detectors = {}
    for m in ens.members:
        probe = _batch(m, train[m.name][:2])
        layer = last_feature_map(m.loaded.model.eval(), probe)
        where = MahalanobisDetector(module=layer, pool=POOL)
        feats = member_features(m, train[m.name], where)
        det = MahalanobisDetector.fit(feats, module=layer, pool=POOL)
        det.info["scale"] = float(np.median(det.score(feats))) or 1.0
        detectors[m.name] = det
    ood = MemberOOD(detectors, info={"n_train": len(train[ens.members[0].name]),
                                     "pool": POOL})
    ood.threshold = float(np.quantile(score_files(ens, ood, val_files, mask_source)[1],
                                      quantile, method="higher"))
    ood.info.update(quantile=float(quantile), n_validation=len(val_files))
    return ood


def score_files(ens: CxrEnsemble, ood: MemberOOD, files: Sequence[Path],
                mask_source: str = "auto") -> tuple[list[int], np.ndarray]:
    """(indices of readable files, their scores)."""
    kept, images = read_images(ens, files, mask_source)
    if not kept:
        return kept, np.zeros(0)
    feats = {m.name: member_features(m, images[m.name], ood.detectors[m.name])
             for m in ens.members}
    return kept, ood.score(feats)


def add_ood_columns(table: pd.DataFrame, model: Path, ood: MemberOOD,
                    mask_source: str = "auto") -> pd.DataFrame:
    """predictions with ``ood_score`` / ``ood_flag`` (from the ``file`` column)."""
    ens = load_cxr_model(model)
    files = [Path(f) for f in table["file"]]
    kept, scores = score_files(ens, ood, files, mask_source)
    column = np.full(len(table), np.nan)
    column[kept] = scores
    return table.assign(ood_score=column, ood_flag=ood.flag(column))


def feature_specs(ood: MemberOOD) -> dict[str, FeatureSpec]:
    """Per member, where its detector takes its features (what its engine exports)."""
    return {n: FeatureSpec.of_detector(d) for n, d in ood.detectors.items()}


def predict_with_ood(model: Path, source: Path, out: Path, options: Options) -> Path:
    """The pipeline's predict (`cxr.predict.predict_run`) plus ``ood_score`` / ``ood_flag``
    when the model carries fitted detectors: the features come from the same forward pass
    as the probabilities (an engine's ``features`` output, or hooks on the eager member);
    run.json ``ood`` records the detectors' layers and that source."""
    ood = read_member_ood(Path(model)) if Path(model).exists() else None  # else: predict's error
    specs = None if ood is None else feature_specs(ood)
    result = predict_run(model, source, out, options, features=specs)
    if ood is not None:
        _write_ood(Path(out), ood, result, str(options.get("engine", "eager")))
    return Path(out)


def _write_ood(out: Path, ood: MemberOOD, result: CxrPredictions, engine: str) -> None:
    """``ood_score`` / ``ood_flag`` in predictions.csv (rows matched by sample_id) and
    run.json ``ood``."""
    missing = [n for n in ood.detectors if n not in result.features]
    if missing:
        raise InputError(out / RUN_FILE, "ood.members", "a member of the ensemble per "
                         "detector", repr(missing[0]))
    table = read_predictions(out)
    if len(table):
        scores = pd.Series(ood.score(result.features) if len(result.table) else [],
                           index=result.table["sample_id"].astype(str), dtype=float)
        column = table["sample_id"].astype(str).map(scores).to_numpy(float)
        write_csv(table.assign(ood_score=column, ood_flag=ood.flag(column)),
                  out / PREDICTIONS_FILE)
    run = read_run(out)
    run["ood"] = {"method": "mahalanobis per member", "threshold": ood.threshold,
                  "features": "engine" if engine != "eager" else "eager",
                  "engine": engine, "one_pass": True,
                  "members": {n: str(s) for n, s in feature_specs(ood).items()}}
    write_json(out / RUN_FILE, run)
