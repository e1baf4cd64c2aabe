"""optuna search: two tiny trials (the second pruned), best_params.yaml, training with it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.train.recipe import load_recipe
from cinelab.train.tune import (
    BEST_FILE,
    check_space,
    overrides_from_best,
    recipe_with_best,
    space_for_recipe,
    tune,
    write_best_params,
)

TINY = ["data.size=32", "data.batch_size=8", "trainer.max_epochs=2", "data.augment={}",
        "optim.name=sgd"]
SPACE = {"optim.lr": {"low": 1e-3, "high": 1e-1, "log": True},
         "optim.momentum": {"low": 0.5, "high": 0.95},
         "model.kwargs.drop_rate": {"low": 0.0, "high": 0.5}}


class PruneSecondTrial(optuna.pruners.BasePruner):
    """Deterministic: trial 1 is pruned at its first report, every other trial runs."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tune")
    cohort = synth_cxr_cohort(tmp / "cohort", n=20, seed=5, size=64)
    prepare(read_cxr_folders(cohort).manifest, tmp / "store",
            PrepSpec(size=32, channels=1, crop="uncrop"), workers=1)
    return tmp / "store"


@pytest.mark.slow
def test_two_trials_one_pruned_write_best_params(store, tmp_path):
    recipe = load_recipe("cxr-ensemble-cpu", TINY)
    result = tune(recipe, store, tmp_path / "tune", n_trials=2, space=SPACE,
                  pruner=PruneSecondTrial())
    trials = pd.read_csv(result.trials_file)
    assert trials["state"].tolist() == ["COMPLETE", "PRUNED"]
    assert trials.loc[1, "last_epoch"] == 0  # stopped after its first validation
    assert set(SPACE) <= set(trials.columns)
    assert result.monitor == "val/auc" and result.best_file == tmp_path / "tune" / BEST_FILE
    overrides = overrides_from_best(result.best_file)
    assert sorted(o.split("=")[0] for o in overrides) == sorted(SPACE)
    tuned = recipe_with_best("cxr-ensemble-cpu", result.best_file, ["optim.momentum=0.1"])
    assert tuned.optim.lr == pytest.approx(result.best_params["optim.lr"])
    assert tuned.model.kwargs["drop_rate"] == pytest.approx(
        result.best_params["model.kwargs.drop_rate"])
    assert tuned.optim.momentum == 0.1  # later overrides win
    assert (tmp_path / "tune" / "trials" / "0" / "model.pt").is_file()


def test_best_params_round_trip_and_errors(tmp_path):
    path = write_best_params(tmp_path / BEST_FILE, {"optim.lr": 1e-5, "optim.name": "sgd"},
                             "by hand")
    assert overrides_from_best(path) == ["optim.lr=1.0e-05", "optim.name=sgd"]
    recipe = load_recipe("cxr-ensemble-cpu", overrides_from_best(path))
    assert recipe.optim.lr == pytest.approx(1e-5) and recipe.optim.name == "sgd"
    with pytest.raises(InputError, match="best_params"):
        overrides_from_best(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="optim.nope"):
        check_space({"optim.nope": {"low": 0, "high": 1}}, recipe)
    with pytest.raises(InputError, match="low < high"):
        check_space({"optim.lr": {"low": 1.0, "high": 0.1}}, recipe)


def test_space_follows_the_optimiser():
    sgd = load_recipe("cxr-ensemble-cpu", ["optim.name=sgd"])
    adam = load_recipe("cxr-ensemble-cpu", ["optim.name=adam"])
    assert "optim.momentum" in space_for_recipe(None, sgd)
    default_adam = space_for_recipe(None, adam)
    assert "optim.momentum" not in default_adam and "optim.lr" in default_adam
    with pytest.raises(InputError, match="momentum"):
        space_for_recipe(SPACE, adam)
    assert space_for_recipe(SPACE, sgd) == SPACE
