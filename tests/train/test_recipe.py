"""Typed recipes: packaged recipes load with the paper values; overrides; clear key errors."""

from __future__ import annotations

import pytest
import yaml

from cinelab.errors import InputError
from cinelab.train.recipe import (
    Recipe,
    apply_overrides,
    list_recipes,
    load_recipe,
    parse_override,
    recipe_from_dict,
    recipe_to_dict,
    recipe_to_yaml,
)

ECHONET = ("echonet-ef", "echonet-seg", "echonet-ef-cpu", "echonet-seg-cpu")


@pytest.mark.parametrize("name", ECHONET)
def test_packaged_recipes_load(name):
    assert name in list_recipes()
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe) and recipe.name == name
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe


def test_echonet_ef_has_the_paper_values():
    r = load_recipe("echonet-ef")
    assert r.task == "video_regression"
    assert r.model.name == "r2plus1d_18" and r.model.kwargs["num_outputs"] == 1
    assert (r.data.frames, r.data.period, r.data.size) == (32, 2, 112)
    assert (r.data.batch_size, r.data.pad, r.data.target) == (20, 12, "EF")
    assert (r.optim.name, r.optim.lr, r.optim.momentum, r.optim.weight_decay) == \
        ("sgd", 1e-4, 0.9, 1e-4)
    assert (r.schedule.name, r.schedule.step_size, r.schedule.gamma) == ("step", 15, 0.1)
    assert r.trainer.max_epochs == 45 and r.loss.name == "mse"
    assert isinstance(r.optim.lr, float)


def test_echonet_seg_has_the_paper_values():
    r = load_recipe("echonet-seg")
    assert r.task == "segmentation"
    assert r.model.name == "deeplabv3_resnet50" and r.model.pretrained is None
    assert r.model.kwargs["out_channels"] == 1
    assert (r.data.size, r.data.batch_size, r.data.pad, r.data.frames) == (112, 20, 0, None)
    assert (r.optim.name, r.optim.lr, r.optim.momentum, r.optim.weight_decay) == \
        ("sgd", 1e-5, 0.9, 0.0)
    assert r.schedule.name == "none"
    assert r.trainer.max_epochs == 50 and r.loss.name == "bce_with_logits"
    assert r.loss.kwargs == {"reduction": "sum"}


def test_cpu_variants_are_small_and_inherit_the_rest():
    ef = load_recipe("echonet-ef-cpu")
    assert (ef.model.name, ef.data.frames, ef.data.period, ef.data.size) == \
        ("seg_video", 16, 4, 64)
    assert (ef.optim.name, ef.task, ef.data.target, ef.loss.name) == \
        ("adam", "video_regression", "EF", "mse")
    seg = load_recipe("echonet-seg-cpu")
    assert (seg.model.name, seg.data.size, seg.data.batch_size, seg.optim.name) == \
        ("unet_small", 64, 16, "adam")
    assert seg.loss.name == "bce+dice" and seg.loss.kwargs == {"reduction": "mean"}
    assert ef.trainer.max_epochs <= 30 and seg.trainer.max_epochs <= 15


def test_overrides_are_parsed_and_typed():
    r = load_recipe("echonet-ef", ["optim.lr=3e-4", "trainer.max_epochs=2", "data.frames=8",
                                   "model.pretrained=null", "model.kwargs.dropout=0.25",
                                   "trainer.devices=[0, 1]", "data.augment.flip=true"])
    assert r.optim.lr == pytest.approx(3e-4) and isinstance(r.optim.lr, float)
    assert (r.trainer.max_epochs, r.data.frames, r.model.pretrained) == (2, 8, None)
    assert r.model.kwargs == {"num_outputs": 1, "dropout": 0.25}
    assert r.trainer.devices == [0, 1] and r.data.augment == {"flip": True}
    again = apply_overrides(r, ["optim.momentum=0"])
    assert again.optim.momentum == 0.0 and r.optim.momentum == 0.9


def test_parse_override_reads_yaml_1_2_floats():
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    assert parse_override("data.target=EF") == (["data", "target"], "EF")
    assert parse_override("model.pretrained=") == (["model", "pretrained"], None)


@pytest.mark.parametrize(("override", "field", "lists"), [
    ("optim.lrr=1", "optim.lrr", "'lr'"),
    ("nonsense=1", "nonsense", "'trainer'"),
    ("data.framez=8", "data.framez", "'frames'"),
])
def test_unknown_override_key_lists_valid_keys(override, field, lists):
    with pytest.raises(InputError) as err:
        load_recipe("echonet-ef", [override])
    assert err.value.field == field and lists in str(err.value)


@pytest.mark.parametrize("override", ["optim.lr=fast", "trainer.max_epochs=1.5",
                                      "optim.name=rmsprop", "data.batch_size=0",
                                      "task=dance", "optim.lr.x=1", "no_equals_sign",
                                      "trainer.deterministic=3"])
def test_bad_override_values_raise(override):
    with pytest.raises(InputError):
        load_recipe("echonet-ef", [override])


def test_recipe_from_a_path_with_base_and_bad_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"base": "echonet-ef-cpu", "name": "mine",
                                    "optim": {"lr": 5e-4}}))
    r = load_recipe(path, ["trainer.max_epochs=1"])
    assert (r.name, r.optim.lr, r.optim.name, r.model.name, r.trainer.max_epochs) == \
        ("mine", 5e-4, "adam", "seg_video", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntask: segmentation\nmodel: {name: unet_small, colour: red}\n")
    with pytest.raises(InputError, match="model.colour") as err:
        load_recipe(bad)
    assert "kwargs" in str(err.value)
    with pytest.raises(InputError, match="echonet-ef"):
        load_recipe("no-such-recipe")
    with pytest.raises(InputError, match="nothing at that path"):
        load_recipe(tmp_path / "absent.yaml")


def test_yaml_round_trip(tmp_path):
    r = load_recipe("echonet-seg", ["data.size=96"])
    path = tmp_path / "run.yaml"
    path.write_text(recipe_to_yaml(r))
    assert load_recipe(path) == r
