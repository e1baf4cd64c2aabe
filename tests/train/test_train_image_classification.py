"""Task image_classification: fit on a tiny synthetic CXR store, freeze-then-unfreeze, NIH
multi-label pretraining carried into a binary fine-tune, class balancing."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from cinelab.data.datasets import train_val_ids
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.evaluate.metrics import roc_auc
from cinelab.models.classification import backbone_parameters
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.nih import NIH_FINDINGS, read_nih
from cinelab.pipelines.cxr.predict import predict_arrays
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.train.checkpoint import load_checkpoint, read_checkpoint
from cinelab.train.fit import fit
from cinelab.train.recipe import ensemble_members, load_recipe
from cinelab.train.tasks.image_classification import (
    BalancedImageDataset,
    ImageClassificationModule,
    ImageDataset,
    mean_auc,
    positive_weights,
)

SIDE = 32
TINY = ["data.size=32", "data.batch_size=8", "trainer.max_epochs=1", "model.freeze_epochs=0",
        "data.augment={}"]


def _store(tmp: Path, layout: str, n: int) -> Path:
    cohort = synth_cxr_cohort(tmp / "cohort", n=n, seed=3, size=64, layout=layout)
    manifest = read_cxr_folders(cohort).manifest if layout == "folders" else \
        read_nih(cohort, split="random").manifest
    prepare(manifest, tmp / "store", PrepSpec(size=SIDE, channels=1, crop="uncrop"), workers=1)
    return tmp / "store"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("cxr"), "folders", 24)


@pytest.fixture(scope="module")
def nih_store(tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("nih"), "nih", 24)


@pytest.mark.slow
def test_one_epoch_exports_a_checkpoint_that_reproduces_its_validation_auc(store, tmp_path):
    recipe = load_recipe("cxr-ensemble-cpu", [*TINY, "data.balance=pos_weight"])
    result = fit(recipe, store, tmp_path / "run", progress=False)
    loaded = load_checkpoint(result.best_checkpoint)
    prepared = PreparedStore(store)
    _, val = train_val_ids(prepared, recipe.trainer.seed)
    probs = predict_arrays(loaded, np.stack([np.asarray(prepared.frames(i)[0]) for i in val]))
    labels = prepared.manifest.set_index(prepared.manifest["sample_id"].astype(str))
    truth = labels.loc[val, "label"].to_numpy(float)
    assert 0 < truth.sum() < len(truth)  # both classes: the AUC is defined
    assert result.metrics["monitor"] == "val/auc"
    assert result.metrics["val/auc"] == pytest.approx(roc_auc(truth, probs), abs=1e-4)
    spec = loaded.input_spec
    assert (spec.task, spec.size, spec.channels, spec.target) == \
        ("image_classification", SIDE, 1, "label")
    assert loaded.info["extra"]["pos_weight"] is not None
    with torch.no_grad():
        out = loaded.model(torch.zeros(2, 1, SIDE, SIDE))
    assert out.shape == (2, 1)


class _Snapshot(L.Callback):
    """Backbone and head tensors at the end of each training epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        state = pl_module.model.state_dict()
        self.epochs.append({k: v.detach().clone() for k, v in state.items()})


def _backbone_keys(model: torch.nn.Module) -> list[str]:
    ids = {id(p) for p in backbone_parameters(model)}
    return [k for k, p in model.named_parameters() if id(p) in ids]


@pytest.mark.slow
def test_nih_pretraining_carries_into_a_frozen_then_unfrozen_binary_fine_tune(
        store, nih_store, tmp_path):
    nih = fit(load_recipe("cxr-nih-pretrain-cpu", TINY),
              nih_store, tmp_path / "nih", progress=False)
    pre = read_checkpoint(nih.best_checkpoint)["state_dict"]
    assert pre["fc.weight"].shape[0] == len(NIH_FINDINGS)
    snap = _Snapshot()
    recipe = load_recipe("cxr-ensemble-cpu", [
        *TINY, "trainer.max_epochs=2", "model.freeze_epochs=1",
        f"model.pretrained={nih.best_checkpoint}"])
    fit(recipe, store, tmp_path / "fine", progress=False, callbacks=[snap])
    loaded = load_checkpoint(tmp_path / "fine" / "model.pt")
    backbone = _backbone_keys(loaded.model)
    frozen, unfrozen = snap.epochs
    for key in backbone:  # epoch 0: every backbone tensor is still the NIH one
        assert torch.equal(frozen[key], pre[key]), key
    running = [k for k in frozen if k.endswith("running_mean")]
    assert running and all(torch.equal(frozen[k], pre[k]) for k in running)
    assert not torch.equal(frozen["fc.weight"][0], pre["fc.weight"][0])  # new head trains
    assert frozen["fc.weight"].shape[0] == 1
    assert any(not torch.equal(unfrozen[k], pre[k]) for k in backbone)  # epoch 1 trains all
    start = loaded.info["extra"]["start_weights"]
    assert start["loaded"] > 0 and {m[0] for m in start["mismatched"]} == {"fc.weight", "fc.bias"}


def test_store_and_model_channels_must_agree(store, tmp_path):
    recipe = load_recipe("cxr-ensemble-cpu", [*TINY, "model.kwargs.in_channels=3"])
    with pytest.raises(InputError, match="in_channels"):
        fit(recipe, store, tmp_path / "run", progress=False)


def test_outputs_must_match_the_labels(store, tmp_path):
    recipe = load_recipe("cxr-ensemble-cpu", [*TINY, "model.kwargs.num_outputs=2"])
    with pytest.raises(InputError, match="num_outputs"):
        fit(recipe, store, tmp_path / "run", progress=False)


def test_balanced_sampler_draws_both_classes_equally(store):
    ds = ImageDataset(store, _ids(store), ["label"])
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (1, SIDE, SIDE) and label.shape == (1,)
    balanced = BalancedImageDataset(store, _ids(store), ["label"], seed=0)
    weights = balanced.sample_weights()
    y = balanced.labels[:, 0] > 0.5
    assert weights[y].sum() == pytest.approx(0.5) and weights[~y].sum() == pytest.approx(0.5)
    first = balanced.order.copy()
    balanced.set_epoch(1)
    assert not np.array_equal(first, balanced.order)


def _ids(store: Path) -> list[str]:
    return PreparedStore(store).manifest["sample_id"].astype(str).tolist()


def test_positive_weights_and_mean_auc():
    labels = np.array([[1, 0], [0, 0], [0, 0], [1, 0]], np.float32)
    assert positive_weights(labels) == [1.0, 1.0]
    labels[:, 0] = [1, 0, 0, 0]
    assert positive_weights(labels)[0] == pytest.approx(3.0)
    probs = np.array([[0.9, 0.1], [0.2, 0.1], [0.3, 0.1], [0.1, 0.1]])
    assert mean_auc(labels, probs) == pytest.approx(1.0)  # column 2 has one class: ignored
    assert np.isnan(mean_auc(labels[:, 1:], probs[:, 1:]))


def test_recipes_expand_to_their_ensemble_members():
    paper = load_recipe("cxr-ensemble")
    members = ensemble_members(paper)
    assert len(members) == 24 and members[0][0] == "densenet121-224-crop"
    assert {(r.model.name, r.data.size, r.data.crop) for _, r in members} == {
        (a, s, c) for a in paper.ensemble.archs for s in (224, 331) for c in ("crop", "uncrop")}
    assert (paper.optim.name, paper.optim.lr, paper.optim.momentum, paper.optim.kwargs) == \
        ("sgd", 1e-3, 0.9, {"nesterov": True})
    assert paper.model.kwargs["drop_rate"] == 0.3 and paper.model.freeze_epochs == 50
    cpu = dict(ensemble_members(load_recipe("cxr-ensemble-cpu")))
    assert len(cpu) == 3 and cpu["regnetx_002-96-crop"].model.name == "regnetx_002"
    assert all(r.data.size <= 128 for r in cpu.values())
    subset = load_recipe("cxr-ensemble", ["ensemble.members=[{model: resnet50, size: 224, "
                                          "crop: uncrop, overrides: [optim.lr=0.01]}]"])
    ((name, member),) = ensemble_members(subset)
    assert name == "resnet50-224-uncrop" and member.optim.lr == 0.01
    with pytest.raises(InputError, match="crop"):
        load_recipe("cxr-ensemble", ["ensemble.crops=[lungs]"])


def test_plateau_schedule_watches_validation_auc():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    module = ImageClassificationModule(model, [0.0], [1.0], ["label"],
                                       optim={"name": "sgd", "lr": 0.1, "momentum": 0.9},
                                       schedule={"name": "plateau", "step_size": 3,
                                                 "gamma": 0.1})
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]
    assert scheduler["monitor"] == "val/auc" and scheduler["scheduler"].mode == "max"
    assert scheduler["scheduler"].patience == 3 and scheduler["scheduler"].factor == 0.1


def test_per_architecture_start_weights_and_frozen_without_them(store, tmp_path):
    recipe = load_recipe("cxr-ensemble", ["ensemble.pretrained.densenet121=/w/dense.pt",
                                          "ensemble.sizes=[224]", "ensemble.crops=[crop]"])
    members = dict(ensemble_members(recipe))
    assert members["densenet121-224-crop"].model.pretrained == "/w/dense.pt"
    assert members["resnet50-224-crop"].model.pretrained is None
    own = load_recipe("cxr-ensemble", ["ensemble.pretrained.resnet50=/w/r.pt",
                                       "ensemble.members=[{model: resnet50, size: 224, "
                                       "crop: crop, pretrained: /w/own.pt}]"])
    assert ensemble_members(own)[0][1].model.pretrained == "/w/own.pt"  # the member's wins
    frozen = load_recipe("cxr-ensemble-cpu", [*TINY, "model.freeze_epochs=2"])
    with pytest.raises(InputError, match="model.pretrained"):
        fit(frozen, store, tmp_path / "run", progress=False)
