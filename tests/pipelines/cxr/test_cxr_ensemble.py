"""Ensemble matrix runner: member plan, real one-epoch members that resume without
retraining, weights and threshold recomputed from the members' validation predictions."""

import os

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.evaluate.metrics import roc_auc, youden_threshold
from cinelab.infer.ensemble import load_ensemble_weights
from cinelab.pipelines.cxr.ensemble import (
    is_finished,
    member_dir,
    plan_members,
    store_name,
    train_ensemble,
    train_members,
)
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.train.recipe import load_recipe
from cinelab.utils import mark_done

SIZE = 32
MEMBERS = ("ensemble.members=[{model: resnet10t, size: 32, crop: crop}, "
           "{model: resnet10t, size: 32, crop: uncrop}]")
TINY = [MEMBERS, "trainer.max_epochs=1", "data.batch_size=8", "data.augment={}"]
NAMES = ["resnet10t-32-crop", "resnet10t-32-uncrop"]
THREE = ("ensemble.members=[{model: resnet10t, size: 32, crop: crop}, "
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


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    """One member first (weights wait for the other), then the rest; both runs kept."""
    out = tmp_path_factory.mktemp("ens") / "ens"
    first = train_ensemble(_recipe(), stores, out, members=[NAMES[0]])
    model_pt = member_dir(out, NAMES[0]) / "model.pt"
    stamp = (model_pt.stat().st_mtime_ns, model_pt.read_bytes())
    second = train_ensemble(_recipe(), stores, out)
    return out, first, stamp, second


def _recipe(*extra):
    return load_recipe("cxr-ensemble-cpu", [*TINY, *extra])


def test_plan_names_members_and_checks_stores(stores, tmp_path):
    plan = plan_members(load_recipe("cxr-ensemble-cpu", [THREE]), stores, tmp_path)
    assert [m.name for m in plan] == [*NAMES, "mobilenetv3_small-32-crop"]
    assert plan[1].store == stores / store_name("uncrop", SIZE)
    assert plan[0].recipe.data.crop == "crop" and plan[0].recipe.data.size == SIZE
    with pytest.raises(InputError, match="member"):
        plan_members(_recipe(), stores, tmp_path, only=["nope"])
    with pytest.raises(InputError, match="prepared store"):
        plan_members(load_recipe("cxr-ensemble-cpu"), stores, tmp_path)  # 96 px: none
    with pytest.raises(InputError, match="crop"):
        store_name("lungs", SIZE)


@pytest.mark.slow
def test_resume_never_retrains_a_finished_member(trained):
    out, first, stamp, second = trained
    assert first.trained == [NAMES[0]] and first.weights is None
    assert second.skipped == [NAMES[0]] and second.trained == [NAMES[1]]
    model_pt = member_dir(out, NAMES[0]) / "model.pt"
    assert (model_pt.stat().st_mtime_ns, model_pt.read_bytes()) == stamp
    assert all(is_finished(member_dir(out, n)) for n in NAMES)
    (member_dir(out, NAMES[1]) / "metrics.json").write_text("{}")  # changed after done.json
    assert not is_finished(member_dir(out, NAMES[1]))
    mark_done(member_dir(out, NAMES[1]), ["model.pt", "metrics.json"])


def test_weights_and_threshold_follow_the_validation_predictions(trained):
    out, _, _, run = trained
    ens = load_ensemble_weights(out / "ensemble.json")
    assert ens.members == NAMES and ens.weights.sum() == pytest.approx(1.0)
    assert ens.details["member_info"][NAMES[1]] == {
        "model": "resnet10t", "size": SIZE, "crop": "uncrop",
        "checkpoint": f"members/{NAMES[1]}/model.pt"}
    val = pd.read_csv(out / "val_predictions.csv")
    members = val[["p_" + n for n in NAMES]].to_numpy(float)
    np.testing.assert_allclose(val["probability"], members @ ens.weights, rtol=1e-6)
    y = val["truth"].to_numpy(float)
    assert ens.details["val_auc"] == pytest.approx(roc_auc(y, val["probability"]))
    assert ens.details["val_auc_members"] == pytest.approx(
        [roc_auc(y, members[:, j]) for j in range(2)])
    assert ens.details["threshold"] == pytest.approx(youden_threshold(y, val["probability"]))
    table = pd.read_csv(out / "members.csv")
    np.testing.assert_allclose(table["weight"], ens.weights)


def test_mean_weights_and_the_lung_model_copy(stores, trained, tmp_path):
    out = trained[0]
    lung = tmp_path / "lung.pt"
    lung.write_bytes(b"u-net weights")
    run = train_ensemble(_recipe(), stores, out, method="mean", lung_model=lung)
    assert run.trained == [] and run.skipped == NAMES  # nothing retrained
    np.testing.assert_allclose(run.weights.weights, [0.5, 0.5])
    assert run.weights.details["lung_model"] == "lung/model.pt"
    assert (out / "lung" / "model.pt").read_bytes() == b"u-net weights"
    with pytest.raises(InputError, match="lung_model"):
        train_ensemble(_recipe(), stores, out, lung_model=tmp_path / "missing.pt")


def fake_worker(args):
    """Runs in a spawned process: marks the member finished and says which process it was."""
    member = args[0]
    member.out_dir.mkdir(parents=True)
    (member.out_dir / "model.pt").write_text(str(os.getpid()))
    (member.out_dir / "metrics.json").write_text("{}")
    mark_done(member.out_dir, ["model.pt", "metrics.json"])
    return member.name, True


def test_members_train_in_separate_processes(stores, tmp_path):
    plan = plan_members(load_recipe("cxr-ensemble-cpu", [THREE]), stores, tmp_path)
    fake_worker((plan[0], None, None, 1))  # finished before: never handed to a worker
    # fork keeps the test fast; the real runner spawns (same pool, pickled members)
    trained, skipped = train_members(plan, processes=2, worker=fake_worker,
                                     start_method="fork")
    assert skipped == [plan[0].name] and sorted(trained) == sorted(m.name for m in plan[1:])
    pids = {(m.out_dir / "model.pt").read_text() for m in plan[1:]}
    assert str(os.getpid()) not in pids
