"""Ensemble matrix runner: member plan, resume without retraining, weights and files.

Training itself is replaced by a fake `fit` that writes a small random resnet10t checkpoint
(the real Lightning fit is covered by the training tests and tests/commands/test_commands_cxr).
"""

import json
import os

import pandas as pd
import pytest
import torch

from cinelab.errors import InputError
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.infer.ensemble import load_ensemble_weights
from cinelab.models.registry import create_model
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from cinelab.pipelines.cxr.ensemble import (
    is_finished,
    member_dir,
    plan_members,
    store_name,
    train_ensemble,
    train_members,
)
from cinelab.train.recipe import load_recipe, recipe_to_dict

SIZE = 32
MEMBERS = ("ensemble.members=[{model: resnet10t, size: 32, crop: crop}, "
           "{model: resnet10t, size: 32, crop: uncrop}, "
           "{model: mobilenetv3_small, size: 32, crop: crop}]")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cxr")
    cohort = read_cxr_folders(synth_cxr_cohort(tmp / "cohort", n=30, size=64, seed=1))
    root = tmp / "stores"
    for crop, mode in (("crop", "auto"), ("uncrop", "never")):
        prepare(cohort.manifest, root / store_name(crop, SIZE),
                PrepSpec(size=SIZE, channels=1, crop=mode), workers=1)
    return root


@pytest.fixture
def fake_fit(monkeypatch):
    import cinelab.train.fit as fit_module

    calls = []

    def fit(recipe, store, out_dir, **kwargs):
        calls.append(recipe.model.name + "-" + str(recipe.data.crop))
        torch.manual_seed(len(calls))
        model = create_model(recipe.model.name, **recipe.model.kwargs)
        spec = InputSpec(task=recipe.task, size=SIZE, channels=1, mean=[120.0], std=[50.0])
        save_checkpoint(out_dir / "model.pt", model, recipe_to_dict(recipe), spec)
        (out_dir / "metrics.json").write_text(json.dumps({"best_score": 0.5}))

    monkeypatch.setattr(fit_module, "fit", fit)
    return calls


def _recipe():
    return load_recipe("cxr-ensemble-cpu", [MEMBERS])


def test_plan_names_members_and_checks_stores(stores, tmp_path):
    plan = plan_members(_recipe(), stores, tmp_path)
    assert [m.name for m in plan] == ["resnet10t-32-crop", "resnet10t-32-uncrop",
                                      "mobilenetv3_small-32-crop"]
    assert plan[1].store == stores / store_name("uncrop", SIZE)
    assert plan[0].recipe.data.crop == "crop" and plan[0].recipe.data.size == SIZE
    with pytest.raises(InputError, match="member"):
        plan_members(_recipe(), stores, tmp_path, only=["nope"])
    with pytest.raises(InputError, match="prepared store"):
        plan_members(load_recipe("cxr-ensemble-cpu"), stores, tmp_path)  # 96 px: none


def test_resume_never_retrains_a_finished_member(stores, tmp_path, fake_fit):
    out = tmp_path / "ens"
    first = train_ensemble(_recipe(), stores, out, members=["resnet10t-32-crop"])
    assert first.trained == ["resnet10t-32-crop"] and first.weights is None
    assert not (out / "ensemble.json").exists()  # not every member is finished yet
    model_pt = member_dir(out, "resnet10t-32-crop") / "model.pt"
    stamp = (model_pt.stat().st_mtime_ns, model_pt.read_bytes())

    run = train_ensemble(_recipe(), stores, out)
    assert fake_fit == ["resnet10t-crop", "resnet10t-uncrop", "mobilenetv3_small-crop"]
    assert run.skipped == ["resnet10t-32-crop"] and len(run.trained) == 2
    assert (model_pt.stat().st_mtime_ns, model_pt.read_bytes()) == stamp
    assert all(is_finished(member_dir(out, n)) for n in run.members)

    again = train_ensemble(_recipe(), stores, out)
    assert again.trained == [] and len(fake_fit) == 3

    ens = load_ensemble_weights(out / "ensemble.json")
    assert ens.members == run.members and ens.weights.sum() == pytest.approx(1.0)
    assert ens.method == "bmc" and ens.details["member_info"]["resnet10t-32-uncrop"] == {
        "model": "resnet10t", "size": SIZE, "crop": "uncrop",
        "checkpoint": "members/resnet10t-32-uncrop/model.pt"}
    val = pd.read_csv(out / "val_predictions.csv")
    assert {"sample_id", "truth", "probability", "p_resnet10t-32-crop"} <= set(val.columns)
    assert val["probability"].between(0, 1).all() and len(val) > 0
    table = pd.read_csv(out / "members.csv")
    assert table["weight"].sum() == pytest.approx(1.0) and len(table) == 3


def test_other_weight_methods_and_the_lung_model(stores, tmp_path, fake_fit):
    lung = tmp_path / "lung.pt"
    lung.write_bytes(b"u-net weights")
    run = train_ensemble(_recipe(), stores, tmp_path / "ens", method="logloss", lung_model=lung)
    assert run.weights.method == "logloss"
    assert run.weights.details["lung_model"] == "lung/model.pt"
    assert (tmp_path / "ens" / "lung" / "model.pt").read_bytes() == b"u-net weights"
    assert run.weights.details["threshold"] is None or 0 <= run.weights.details["threshold"] <= 1


def fake_worker(args):
    """Runs in a spawned process: marks the member finished and says which process it was."""
    member = args[0]
    member.out_dir.mkdir(parents=True)
    (member.out_dir / "model.pt").write_text(str(os.getpid()))
    (member.out_dir / "metrics.json").write_text("{}")
    return member.name, True


def test_members_train_in_separate_processes(stores, tmp_path):
    plan = plan_members(_recipe(), stores, tmp_path)
    fake_worker((plan[0], None, None, 1))  # finished before: never handed to a worker
    # fork keeps the test fast; the real runner spawns (same pool, pickled members)
    trained, skipped = train_members(plan, processes=2, worker=fake_worker,
                                     start_method="fork")
    assert skipped == [plan[0].name] and sorted(trained) == sorted(m.name for m in plan[1:])
    pids = {(m.out_dir / "model.pt").read_text() for m in plan[1:]}
    assert str(os.getpid()) not in pids
