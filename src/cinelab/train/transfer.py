"""Transfer learning: start weights, encoder freezing, training subsets, data-requirement curves.

- Start weights (`start_model`): random (``model.pretrained: null``), ImageNet (a local
  torchvision file: the encoder's tensors) or any cinelab checkpoint (double transfer, e.g.
  DSB -> 7T): every tensor whose name and shape fit is loaded, the rest is reported in the
  `LoadReport` (kept in the new checkpoint's extra as ``start_weights``).
- `FreezeEncoder`: a Lightning callback that keeps ``model.encoder`` fixed (no gradients,
  BatchNorm statistics frozen) for the first N epochs, then trains everything
  (``model.freeze_encoder_epochs`` in the recipe).
- Subsets (``data.subset`` in the recipe): ``patients`` (a number of training patients),
  ``fraction`` (of the training patients), ``phases`` (e.g. [ED, ES]: samples whose manifest
  phase is listed), ``images`` (a number of training images), ``seed``. Patients and images
  are taken in a seeded order, so a smaller subset is part of every larger one; validation
  data are never subsetted.
- `data_requirement_curve`: one training per subset size, validation Dice tabulated.
- `store_view`: the same prepared samples under other splits (k-fold without copying).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from torch import nn

from cinelab.data.manifest import write_manifest
from cinelab.data.store import PreparedStore, combine_stats
from cinelab.errors import InputError
from cinelab.models.registry import create_model, get_entry
from cinelab.models.weights import LoadReport, load_weights
from cinelab.train.recipe import Recipe
from cinelab.utils import read_json, write_json

log = logging.getLogger(__name__)

SUBSET_KEYS = ("patients", "fraction", "phases", "images", "seed")


# -- start weights ------------------------------------------------------------------------------


def start_model(recipe: Recipe) -> tuple[nn.Module, LoadReport | None]:
    """The recipe's model and, with ``model.pretrained``, what was loaded into it."""
    spec = recipe.model
    model = create_model(spec.name, **dict(spec.kwargs))
    if not spec.pretrained:
        return model, None
    return model, load_start_weights(model, spec.pretrained, spec.name)


def load_start_weights(model: nn.Module, path: str | Path, name: str = "") -> LoadReport:
    """Load every fitting tensor of a local file (model's own `load_pretrained` first)."""
    hint = (get_entry(name).weights_hint if name else "") or "a weights file for this model"
    loader = getattr(model, "load_pretrained", None)
    report = loader(path, hint) if callable(loader) else load_weights(model, path,
                                                                      description=hint)
    log.info("start weights: %s", report.summary())
    return report


def report_dict(report: LoadReport | None) -> dict[str, Any] | None:
    """A LoadReport as counts and the first names of what was not loaded (JSON friendly)."""
    if report is None:
        return None
    return {"path": report.path, "loaded": len(report.loaded), "adapted": report.adapted,
            "mismatched": [[k, list(a), list(b)] for k, a, b in report.mismatched],
            "missing": report.missing, "unexpected": report.unexpected[:50],
            "summary": report.summary()}


# -- freezing -----------------------------------------------------------------------------------


def encoder_of(model: nn.Module) -> nn.Module:
    """The model's ``encoder`` submodule (U-Nets with a classification encoder)."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise InputError(None, "model.freeze_encoder_epochs", "a model with an `encoder` "
                         "(e.g. unet_resnet34, unet_resnet50, unet_vgg16)",
                         f"{type(model).__name__} without one", "set freeze_encoder_epochs: 0")
    return encoder


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """requires_grad on every parameter; frozen modules also stay in eval mode (BatchNorm)."""
    for p in module.parameters():
        p.requires_grad_(trainable)
    if not trainable:
        module.eval()


class FreezeEncoder(L.Callback):
    """Freeze ``pl_module.model.encoder`` during the first `epochs` epochs, then unfreeze."""

    def __init__(self, epochs: int) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise InputError(None, "model.freeze_encoder_epochs", "an integer >= 0",
                             repr(epochs))
        self.epochs = epochs

    def frozen(self, epoch: int) -> bool:
        """True while epoch `epoch` (0-based) trains with a frozen encoder."""
        return epoch < self.epochs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        encoder_of(pl_module.model)  # fail before training when there is no encoder

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = self.frozen(trainer.current_epoch)
        set_trainable(encoder_of(pl_module.model), not frozen)
        log.info("epoch %d: encoder %s", trainer.current_epoch, "frozen" if frozen else "trains")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if self.frozen(trainer.current_epoch):  # Lightning sets train mode after validation
            encoder_of(pl_module.model).eval()


# -- subsets ------------------------------------------------------------------------------------


def check_subset(subset: Mapping[str, Any]) -> dict[str, Any]:
    """``data.subset`` checked: known keys, positive sizes, a fraction in (0, 1]."""
    subset = dict(subset or {})
    unknown = sorted(set(subset) - set(SUBSET_KEYS))
    if unknown:
        raise InputError(None, f"data.subset.{unknown[0]}", f"one of {list(SUBSET_KEYS)}",
                         repr(unknown[0]))
    for key in ("patients", "images"):
        value = subset.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise InputError(None, f"data.subset.{key}", "a positive integer", repr(value))
    fraction = subset.get("fraction")
    if fraction is not None and not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        raise InputError(None, "data.subset.fraction", "a number in (0, 1]", repr(fraction))
    return subset


def _seed(subset: Mapping[str, Any], default: int) -> int:
    return int(subset.get("seed", default))


def subset_ids(store: PreparedStore, ids: Sequence[str], subset: Mapping[str, Any],
               seed: int = 0) -> list[str]:
    """The training samples that `subset` keeps (phases, then patients/fraction), in order."""
    subset = check_subset(subset)
    m = store.manifest.set_index(store.manifest["sample_id"].astype(str)).loc[list(ids)]
    keep = pd.Series(True, index=m.index)
    if subset.get("phases"):
        phases = m["phase"].astype(str) if "phase" in m.columns else pd.Series("", m.index)
        keep &= phases.isin([str(p) for p in subset["phases"]])
    patients = sorted(m.loc[keep, "patient_id"].astype(str).unique())
    n = _n_patients(subset, len(patients))
    order = np.random.default_rng(_seed(subset, seed)).permutation(len(patients))
    chosen = {patients[i] for i in order[:n]}
    keep &= m["patient_id"].astype(str).isin(chosen)
    out = [i for i, k in zip(m.index, keep, strict=True) if k]
    if not out:
        raise InputError(store.root / "manifest.csv", "data.subset", "at least one training "
                         "sample left", f"none of {len(ids)} (subset {dict(subset)})")
    return out


def _n_patients(subset: Mapping[str, Any], available: int) -> int:
    if subset.get("patients") is not None:
        if subset["patients"] > available:
            raise InputError(None, "data.subset.patients", f"at most {available} (the training "
                             "patients available)", repr(subset["patients"]))
        return int(subset["patients"])
    if subset.get("fraction") is not None:
        return max(1, int(math.floor(float(subset["fraction"]) * available + 0.5)))
    return available


def subset_items(items: Sequence[Any], subset: Mapping[str, Any], seed: int = 0) -> list[Any]:
    """The first ``subset.images`` items in a seeded order (original order kept), or all."""
    n = check_subset(subset).get("images")
    if n is None:
        return list(items)
    if n > len(items):
        raise InputError(None, "data.subset.images", f"at most {len(items)} (the training "
                         "images available)", repr(n))
    order = np.random.default_rng(_seed(subset, seed)).permutation(len(items))
    chosen = set(order[:n].tolist())
    return [item for i, item in enumerate(items) if i in chosen]


# -- store views ---------------------------------------------------------------------------------


def store_view(store: PreparedStore | str | Path, out: str | Path,
               split_of: Mapping[str, str], by: str = "patient_id") -> PreparedStore:
    """A store at `out` sharing `store`'s samples (a symlink) with splits from `split_of`
    (keys: patient ids, or sample ids with by="sample_id"); unlisted samples are left out."""
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "samples"
    if not link.exists():
        os.symlink(store.root.resolve() / "samples", link, target_is_directory=True)
    m = store.manifest.copy()
    keys = m[by].astype(str)
    m = m[keys.isin(list(split_of))].copy()
    m["split"] = m[by].astype(str).map(dict(split_of))
    write_manifest(m, out / "manifest.csv")
    train = m.loc[m["split"] == "train", "sample_id"].astype(str).tolist()
    stats = [store.meta(s)["stats"] for s in train or m["sample_id"].astype(str)]
    mean, std = combine_stats(stats)  # intensity statistics of the view's training samples
    info = read_json(store.root / "store.json")
    write_json(out / "store.json", {**info, "mean": mean, "std": std,
                                    "view_of": str(store.root)})
    return PreparedStore(out)
