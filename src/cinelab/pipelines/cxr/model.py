"""The loaded chest X-ray ensemble: its members (crop, size, checkpoint), weights,
threshold and optional lung U-Net (`CxrEnsemble`); loading an ensemble folder or one
member checkpoint (`load_cxr_model`) and putting the members behind an inference engine
(`engine_members`). Prediction itself lives in `cinelab.pipelines.cxr.predict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cinelab.errors import InputError
from cinelab.infer.engine_outputs import Engine, FeatureSpec
from cinelab.infer.engines import AUTO, engine_checkpoint
from cinelab.infer.ensemble import EnsembleWeights, load_ensemble_weights
from cinelab.io.cxr_dicom import CxrAcceptance
from cinelab.pipelines.cxr.crop import NO_CROP_MODES, VARIANTS
from cinelab.pipelines.cxr.members import load_member
from cinelab.train.checkpoint import LoadedCheckpoint, load_checkpoint

ENSEMBLE_FILE = "ensemble.json"
DEFAULT_THRESHOLD = 0.5


@dataclass
class CxrMember:
    """One loaded member: its name, store variant (crop, size) and checkpoint."""

    name: str
    crop: str
    size: int
    loaded: LoadedCheckpoint


@dataclass
class CxrEnsemble:
    """A loaded ensemble: members, weights, threshold and the optional lung U-Net."""

    root: Path
    members: list[CxrMember]
    weights: EnsembleWeights
    threshold: float
    lung: LoadedCheckpoint | None = None
    crop_source: str | None = None  # the masks its members were trained on (ensemble.json)
    accept: CxrAcceptance = field(default_factory=CxrAcceptance)  # which DICOMs are CXRs

    @property
    def sizes(self) -> list[int]:
        """Every image side the members need."""
        return sorted({m.size for m in self.members})


def load_cxr_ensemble(root: str | Path) -> CxrEnsemble:
    """The ensemble written by `train_ensemble` under `root`."""
    root = Path(root)
    weights = load_ensemble_weights(root / ENSEMBLE_FILE)
    info = weights.details.get("member_info") or {}
    missing = [n for n in weights.members or [] if n not in info]
    if not weights.members or missing:
        raise InputError(root / ENSEMBLE_FILE, "details.member_info",
                         "crop, size and checkpoint of every member",
                         f"nothing for {missing or 'any member'}",
                         "re-run `cinelab cxr train-ensemble` to rewrite it")
    members = [CxrMember(n, str(info[n]["crop"]), int(info[n]["size"]),
                         load_member(root / info[n]["checkpoint"])) for n in weights.members]
    lung_rel = weights.details.get("lung_model")
    lung = load_checkpoint(root / lung_rel) if lung_rel else None
    threshold = weights.details.get("threshold")
    return CxrEnsemble(root, members, weights,
                       DEFAULT_THRESHOLD if threshold is None else float(threshold), lung,
                       weights.details.get("crop_source"))


def is_cxr_ensemble(model: str | Path) -> bool:
    """An ensemble folder written by `train_ensemble` (or its ensemble.json)."""
    path = Path(model)
    file = path / ENSEMBLE_FILE if path.is_dir() else path
    return file.name == ENSEMBLE_FILE and file.is_file() and \
        "member_info" in file.read_text(errors="replace")


def load_cxr_model(model: str | Path) -> CxrEnsemble:
    """An ensemble folder (or its ensemble.json), or one image_classification checkpoint
    as a one-member ensemble (its crop from the recipe, size from its input spec)."""
    path = Path(model)
    if not path.exists():
        raise InputError(path, "model", "an ensemble folder (with ensemble.json) or an "
                         "image_classification checkpoint", "no such file or folder")
    if path.is_dir() or path.name == ENSEMBLE_FILE:
        return load_cxr_ensemble(path if path.is_dir() else path.parent)
    loaded = load_member(path)
    raw = str((loaded.recipe.get("data") or {}).get("crop") or "")
    crop = raw if raw in VARIANTS else "uncrop" if raw in ("", *NO_CROP_MODES) else "crop"
    name = f"{(loaded.recipe.get('model') or {}).get('name', 'model')}-{loaded.input_spec.size}"
    weights = EnsembleWeights(np.ones(1), "single", "binary", [name], {})
    extra = loaded.info.get("extra") or {}
    threshold = extra.get("threshold")
    return CxrEnsemble(path.parent, [CxrMember(name, crop, int(loaded.input_spec.size), loaded)],
                       weights, DEFAULT_THRESHOLD if threshold is None else float(threshold),
                       crop_source=extra.get("crop_source"))


def engine_members(ensemble: CxrEnsemble, engine: str, device: str = "cpu",
                   features: Mapping[str, FeatureSpec] | None = None) -> dict[str, Any]:
    """Put every member behind `engine` (`infer.engines`: each exported once for this
    call, with the ``features`` output `features` names for it, else the default; the lung
    U-Net stays eager); run.json's ``engine``."""
    for member in ensemble.members:
        spec = (features or {}).get(member.name)
        member.loaded = engine_checkpoint(member.loaded, engine, device,
                                          features=AUTO if spec is None else spec)
    return {"name": engine, **{m.name: _engine_info(m.loaded.model) for m in ensemble.members
                               if engine != "eager"}}


def _engine_info(engine: Engine) -> dict[str, Any]:
    """run.json's record of one member's engine: its info and its ``features`` output."""
    features = None if engine.features is None else engine.features.to_dict()
    return {**engine.info, "features": features}
