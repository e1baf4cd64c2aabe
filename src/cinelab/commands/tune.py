"""`cinelab tune`: optuna hyperparameter search over a recipe on a prepared store.

    cinelab tune cxr-ensemble-cpu --data stores/crop-96 --out tune/ --trials 20
    cinelab train cxr-ensemble-cpu --data stores/crop-96 --out run/ \
        $(cinelab tune-overrides tune/best_params.yaml | sed 's/^/--set /')

(in Python: ``load_recipe(name, overrides_from_best(path) + overrides)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cinelab.cliutil import console, friendly
from cinelab.train.recipe import load_recipe
from cinelab.train.tune import overrides_from_best, tune


@friendly
def tune_cmd(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    data: Annotated[Path, typer.Option(help="Prepared store to tune on (its train/val).")],
    out: Annotated[Path, typer.Option(help="Folder: trials/, trials.csv, best_params.yaml.")],
    trials: Annotated[int, typer.Option(help="Number of trials.")] = 10,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: trainer.max_"
                                                   "epochs=10")] = None,
) -> None:
    """Search learning rate, momentum (SGD only: the parameters the recipe's optimiser uses)
    and dropout (pruning bad trials); save the best."""

    result = tune(load_recipe(recipe, set_ or []), data, out, n_trials=trials, timeout=timeout)
    counts = result.trials["state"].value_counts().to_dict()
    console.print(f"trials: {counts}; best {result.monitor} = {result.best_value:.4f}")
    for key, value in result.best_params.items():
        console.print(f"  {key} = {value}")
    console.print(f"best parameters -> {result.best_file} (train with them: "
                  f"--set for each line of `cinelab tune-overrides {result.best_file}`)")


@friendly
def overrides_cmd(
    best: Annotated[Path, typer.Argument(help="best_params.yaml written by `cinelab tune`.")],
) -> None:
    """Print a best_params.yaml as --set overrides, one per line."""
    for text in overrides_from_best(best):
        typer.echo(text)


def register(apps: dict[str, typer.Typer]) -> None:
    """Add `cinelab tune` and `cinelab tune-overrides` to the main app."""
    apps["main"].command("tune")(tune_cmd)
    apps["main"].command("tune-overrides")(overrides_cmd)
