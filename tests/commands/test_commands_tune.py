"""`cinelab tune-overrides`: a best_params.yaml as --set lines that `load_recipe` applies;
`cinelab tune` and `tune-overrides` on unusable input exit 2 with a one-line reason."""

from __future__ import annotations

from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.train.recipe import load_recipe
from cinelab.train.tune import write_best_params

runner = CliRunner()


def test_tune_overrides_round_trip_into_the_recipe(tmp_path):
    path = write_best_params(tmp_path / "best_params.yaml", {"optim.lr": 0.0007,
                                                            "optim.weight_decay": 0.25})
    result = runner.invoke(app, ["tune-overrides", str(path)])
    assert result.exit_code == 0
    lines = result.output.split()
    assert lines == ["optim.lr=0.0007", "optim.weight_decay=0.25"]
    recipe = load_recipe("cmr-age-cpu", lines)
    assert recipe.optim.lr == 0.0007 and recipe.optim.weight_decay == 0.25
    plain = load_recipe("cmr-age-cpu")  # the recipe file itself is unchanged
    assert plain.optim.lr == 3.0e-3 and plain.optim.weight_decay == 1.0e-4


def test_unusable_input_exits_2(tmp_path):
    missing = runner.invoke(app, ["tune-overrides", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "best_params" in missing.output
    no_store = runner.invoke(app, ["tune", "cmr-age-cpu", "--data", str(tmp_path / "no_store"),
                                   "--out", str(tmp_path / "t"), "--trials", "1"])
    assert no_store.exit_code == 2 and "error:" in no_store.output
    assert "no_store" in no_store.output.replace("\n", "")
    assert not (tmp_path / "t" / "best_params.yaml").exists()
