"""Hyperparameter search with optuna: every trial is an ordinary `fit` with overrides.

The search space maps recipe override keys to ranges (`DEFAULT_SPACE`: learning rate on a log
scale, SGD momentum, dropout before the classifier head, as DeepCOVID-XR tuned them; only the
parameters the recipe's optimiser uses are searched, see `space_for_recipe`)::

    {"optim.lr": {"low": 1e-4, "high": 1e-1, "log": true}, "optim.momentum": {...}, ...}

(an entry with ``choices: [...]`` is categorical). A TPE sampler seeded by the recipe draws
each trial's values; `PruneOnPlateau`, a small Lightning callback, reports the task's monitored
validation metric (val/auc, val/dice, val/loss ...) to optuna after every validation and
raises `optuna.TrialPruned` when the pruner (median rule by default) says the trial is worse
than the others at that epoch. Output under `out_dir`::

    trials/<number>/        each trial's fit (model.pt, metrics.json, logs)
    trials.csv              number, state, value, one column per parameter, seconds
    best_params.yaml        the best trial's values as ``key: value`` recipe overrides
    study.db                the optuna study (SQLite): a rerun continues it

Training with the result: ``load_recipe(name, overrides_from_best(path) + overrides)`` or
`recipe_with_best` (later overrides win).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import pandas as pd
import yaml

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.train.fit import build_task, fit
from cinelab.train.modules import MOMENTUM_OPTIMIZERS
from cinelab.train.recipe import Recipe, apply_overrides, load_recipe, parse_override
from cinelab.utils import atomic_path, write_csv

log = logging.getLogger(__name__)

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "optim.lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "optim.momentum": {"low": 0.5, "high": 0.99},
    "model.kwargs.drop_rate": {"low": 0.0, "high": 0.6},
}
MOMENTUM_KEY = "optim.momentum"
BEST_FILE = "best_params.yaml"
TRIALS_FILE = "trials.csv"
STUDY_FILE = "study.db"
TRIALS_DIR = "trials"
STUDY_NAME = "cinelab"
PRUNER_STARTUP_TRIALS = 3
PRUNER_WARMUP_EPOCHS = 1
DIRECTIONS = {"max": "maximize", "min": "minimize"}


@dataclass
class TuneResult:
    """The best trial's overrides and score, and where the search wrote its files."""

    best_params: dict[str, Any]
    best_value: float
    monitor: str
    trials: pd.DataFrame
    best_file: Path
    trials_file: Path


class PruneOnPlateau(L.Callback):
    """Report the monitored validation metric to an optuna trial each epoch; prune when told."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epoch = int(trainer.current_epoch)
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: {self.monitor} = {value:.4g}")


def check_space(space: Mapping[str, Mapping[str, Any]], recipe: Recipe) -> dict[str, dict]:
    """The space with every key checked as a recipe override and every range as valid."""
    checked = {}
    for key, spec in space.items():
        spec = dict(spec)
        if "choices" not in spec and not ("low" in spec and "high" in spec):
            raise InputError(None, f"space.{key}", "{low, high[, log]} or {choices: [...]}",
                             repr(spec))
        if "choices" not in spec and not float(spec["low"]) < float(spec["high"]):
            raise InputError(None, f"space.{key}", "low < high", repr(spec))
        probe = spec["choices"][0] if "choices" in spec else spec["low"]
        apply_overrides(recipe, [f"{key}={_yaml_value(probe)}"])  # unknown keys raise here
        checked[key] = spec
    return checked


def space_for_recipe(space: Mapping[str, Mapping[str, Any]] | None,
                     recipe: Recipe) -> dict[str, Mapping[str, Any]]:
    """The space limited to parameters the recipe's optimiser uses: the default space drops
    ``optim.momentum`` for an optimiser without momentum (Adam, AdamW); an explicit space that
    names it there is an InputError (trials would differ only in an ignored value)."""
    uses_momentum = str(recipe.optim.name) in MOMENTUM_OPTIMIZERS
    if space is None:
        return {k: v for k, v in DEFAULT_SPACE.items()
                if uses_momentum or k != MOMENTUM_KEY}
    if MOMENTUM_KEY in space and not uses_momentum:
        raise InputError(None, f"space.{MOMENTUM_KEY}",
                         f"a parameter the optimiser uses (momentum only for "
                         f"{list(MOMENTUM_OPTIMIZERS)})", f"optim.name={recipe.optim.name}",
                         f"drop {MOMENTUM_KEY} from the space or tune with optim.name=sgd")
    return dict(space)


def suggest(trial: optuna.Trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One value per space entry from the trial's sampler."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and \
                not isinstance(spec["low"], bool):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"],
                                            log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                              log=bool(spec.get("log")))
    return values


def overrides_for(params: Mapping[str, Any]) -> list[str]:
    """``{"optim.lr": 0.003}`` -> ``["optim.lr=0.003"]`` (values in YAML)."""
    return [f"{key}={_yaml_value(value)}" for key, value in params.items()]


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def task_monitor(recipe: Recipe, store: PreparedStore) -> tuple[str, str]:
    """(metric, "max"|"min") that the recipe's task selects checkpoints by."""
    return tuple(build_task(recipe, store).module.monitor)  # type: ignore[return-value]


def tune(recipe: Recipe | str | Path, store: PreparedStore | str | Path, out_dir: str | Path,
         n_trials: int = 10, timeout: float | None = None,
         space: Mapping[str, Mapping[str, Any]] | None = None,
         pruner: optuna.pruners.BasePruner | None = None,
         **fit_kwargs: Any) -> TuneResult:
    """Search `space` with `n_trials` fits (stopping after `timeout` seconds) and write the
    best parameters to out_dir/best_params.yaml and every trial to out_dir/trials.csv."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    space = check_space(space_for_recipe(space, recipe), recipe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    monitor, mode = task_monitor(recipe, store)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{out / STUDY_FILE}", load_if_exists=True,
        direction=DIRECTIONS[mode], sampler=optuna.samplers.TPESampler(seed=recipe.trainer.seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                                     n_warmup_steps=PRUNER_WARMUP_EPOCHS))

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        run = out / TRIALS_DIR / str(trial.number)
        result = fit(apply_overrides(recipe, overrides_for(params)), store, run, resume=True,
                     callbacks=[PruneOnPlateau(trial, monitor)],
                     **{"progress": False, **fit_kwargs})
        value = result.metrics.get("best_score")
        if value is None:
            raise InputError(run, monitor, "a finite validation score", "none was logged")
        return float(value)

    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=())
    return _write_results(study, space, out, monitor)


def _write_results(study: optuna.Study, space: Mapping[str, Any], out: Path,
                   monitor: str) -> TuneResult:
    trials = trials_table(study, list(space))
    write_csv(trials, out / TRIALS_FILE)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise InputError(out, "trials", "at least one completed trial",
                         f"{len(study.trials)} trial(s), none completed (all pruned or failed)",
                         "run more trials or relax the pruner")
    best = study.best_trial
    params = {k: best.params[k] for k in space if k in best.params}
    write_best_params(out / BEST_FILE, params,
                      f"best of {len(study.trials)} trials: trial {best.number}, "
                      f"{monitor} = {best.value:.6g}")
    return TuneResult(params, float(best.value), monitor, trials, out / BEST_FILE,
                      out / TRIALS_FILE)


def trials_table(study: optuna.Study, keys: Sequence[str]) -> pd.DataFrame:
    """One row per trial: number, state, value, parameters, last reported epoch, seconds."""
    rows = []
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     **{k: t.params.get(k) for k in keys},
                     "last_epoch": t.last_step, "seconds": seconds})
    return pd.DataFrame(rows, columns=["number", "state", "value", *keys, "last_epoch",
                                       "seconds"])


def write_best_params(path: str | Path, params: Mapping[str, Any], note: str = "") -> Path:
    """Write ``key: value`` recipe overrides as YAML (a comment line says where they came from)."""
    text = (f"# {note}\n" if note else "") + \
        f"# generated by cinelab.train.tune at {time.strftime('%Y-%m-%d %H:%M:%S')}\n" + \
        yaml.safe_dump(dict(params), sort_keys=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def overrides_from_best(path: str | Path) -> list[str]:
    """The overrides in a best_params.yaml (["optim.lr=0.003", ...]), checked as overrides."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "best_params", "a best_params.yaml written by `tune`",
                         "nothing at that path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        found = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(path, "best_params", "plain YAML written by `cinelab tune` (no tags)",
                         found, "regenerate it with `cinelab tune`") from exc
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise InputError(path, "best_params", "a mapping of override keys to values",
                         type(data).__name__)
    overrides = overrides_for(data)
    for text in overrides:
        parse_override(text)
    return overrides


def recipe_with_best(recipe: Recipe | str | Path, best_params: str | Path,
                     overrides: Sequence[str] = ()) -> Recipe:
    """The recipe with the tuned values applied, then `overrides` (which win)."""
    tuned = overrides_from_best(best_params) + list(overrides)
    if isinstance(recipe, Recipe):
        return apply_overrides(recipe, tuned)
    return load_recipe(recipe, tuned)
