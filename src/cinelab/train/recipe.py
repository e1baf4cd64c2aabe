"""Typed recipes: YAML files (package data or a path) + CLI-style overrides -> `Recipe`.

A recipe names everything a run needs (model, data, optimiser, schedule, trainer, loss); the
packaged ones live in ``cinelab/recipes/<name>.yaml``. A recipe may start from another with
``base: <name or path>`` (deep merge). Overrides look like ``optim.lr=3e-4``; the value is
YAML (YAML 1.2 floats: ``1e-4`` is a number). Every key and value is checked: unknown keys
list the valid ones, wrong types name the key, the expected type and the value found.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cinelab.errors import InputError

RECIPE_PACKAGE = "cinelab"
RECIPE_FOLDER = "recipes"
RECIPE_SUFFIXES = (".yaml", ".yml")
BASE_KEY = "base"
MAX_BASE_DEPTH = 8

RECIPE_TASKS = ("segmentation", "video_regression", "video_classification",
                "classification", "regression", "image_segmentation", "image_classification",
                "cine_regression")  # cine_regression: cinelab.train.tasks.cine
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "none", "plateau")  # plateau: image_classification
BALANCE_MODES = ("none", "pos_weight", "sampler")
CROP_VARIANTS = ("crop", "uncrop")


class RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads YAML 1.2 floats (``1e-4``, not only ``1.0e-4``)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


@dataclass
class ModelSpec:
    """Which registered model, its builder keywords and an optional local weights file."""

    name: str = ""
    pretrained: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    freeze_encoder_epochs: int = 0  # image_segmentation: train the decoder alone first
    freeze_epochs: int = 0  # train only the head for this many epochs, then everything


@dataclass
class DataSpec:
    """Input sampling and loading: size (px), clip frames/period, target, padding, batches."""

    size: int | list[int] = 112
    frames: int | None = None
    period: int = 1
    target: str | list[str] | None = None
    pad: int | None = None
    batch_size: int = 16
    num_workers: int = 0
    clips: int | str = 1
    normalize: str = "dataset"  # "dataset" (training-split mean/std) or "none"
    augment: dict[str, Any] = field(default_factory=dict)
    classes: dict[str, Any] = field(default_factory=dict)  # class name -> store label(s)
    subset: dict[str, Any] = field(default_factory=dict)  # patients/fraction/phases/images
    empty_slices: bool = False  # image_segmentation: also train on slices without labels
    crop: str | None = None  # CXR store variant: "crop" (lung crop) or "uncrop"
    balance: str = "none"  # class imbalance: none | pos_weight | sampler


@dataclass
class OptimSpec:
    """Optimiser: name (sgd | adam | adamw), learning rate, momentum, weight decay."""

    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScheduleSpec:
    """Learning-rate schedule: name (step | cosine | none), step size (epochs), gamma."""

    name: str = "none"
    step_size: int = 1
    gamma: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerSpec:
    """Lightning Trainer settings."""

    max_epochs: int = 1
    precision: str | int = "32-true"
    seed: int = 0
    devices: int | str | list[int] = "auto"
    accelerator: str = "auto"
    strategy: str = "auto"
    limit_train_batches: int | float | None = None
    val_every: int = 1
    deterministic: bool = False
    channels_last: bool = False


@dataclass
class LossSpec:
    """Loss name (resolved by cinelab.train.losses) and keywords."""

    name: str = "mse"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnsembleSpec:
    """Ensemble matrix: archs x sizes x crops, or an explicit `members` list (see
    recipes/cxr-ensemble.yaml and `ensemble_members`)."""

    archs: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    crops: list[str] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    #: start weights per architecture ({densenet121: <nih run>/model.pt, ...}): member
    #: <arch>-* trains with model.pretrained=<file> (a member's own `pretrained` or
    #: overrides win); `--set ensemble.pretrained.<arch>=<file>` on the command line
    pretrained: dict[str, str] = field(default_factory=dict)


@dataclass
class Recipe:
    """A complete, typed training recipe."""

    name: str
    task: str
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    ensemble: EnsembleSpec = field(default_factory=EnsembleSpec)


# -- public API --------------------------------------------------------------------------------


def ensemble_members(recipe: Recipe) -> list[tuple[str, Recipe]]:
    """(member id "<model>-<size>-<crop>", member recipe) for the recipe's ensemble: its
    `members` list, else every archs x sizes x crops combination; [] when none. A member's
    start weights: its own ``pretrained``, else ``ensemble.pretrained[<model>]``."""
    spec = recipe.ensemble
    members = spec.members or [{"model": a, "size": s, "crop": c}
                               for a in spec.archs for s in spec.sizes for c in spec.crops]
    out = []
    for i, member in enumerate(members):
        missing = [k for k in ("model", "size", "crop") if k not in member]
        if missing:
            raise InputError(None, f"ensemble.members[{i}].{missing[0]}", "a value", "nothing")
        weights = member.get("pretrained") or spec.pretrained.get(str(member["model"]))
        start = [f"model.pretrained={weights}"] if weights else []
        overrides = [f"model.name={member['model']}", f"data.size={member['size']}",
                     f"data.crop={member['crop']}", *start, *member.get("overrides", [])]
        out.append((f"{member['model']}-{member['size']}-{member['crop']}",
                    apply_overrides(recipe, overrides)))
    return out


def list_recipes() -> list[str]:
    """Names of the recipes shipped with cinelab."""
    folder = resources.files(RECIPE_PACKAGE) / RECIPE_FOLDER
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir()
                  if p.name.endswith(RECIPE_SUFFIXES))


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """A packaged recipe by name, or a YAML file by path, with ``key.sub=value`` overrides."""
    raw, source = _load_raw(name_or_path, depth=0)
    for override in overrides:
        _apply_override(raw, override, source)
    return recipe_from_dict(raw, source=source)


def apply_overrides(recipe: Recipe, overrides: Iterable[str]) -> Recipe:
    """A copy of `recipe` with ``key.sub=value`` overrides applied (and checked)."""
    raw = recipe_to_dict(recipe)
    for override in overrides:
        _apply_override(raw, override, None)
    return recipe_from_dict(raw)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON/torch.save friendly)."""
    return dataclasses.asdict(recipe)


def recipe_from_dict(d: Mapping[str, Any], source: str | Path | None = None) -> Recipe:
    """A checked `Recipe` from a nested dict (e.g. one stored in a checkpoint)."""
    if not isinstance(d, Mapping):
        raise InputError(source, "recipe", "a mapping of sections", type(d).__name__)
    d = {k: v for k, v in d.items() if k != BASE_KEY}
    recipe = _build(Recipe, d, "", source)
    _check_choices(recipe, source)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text (loads back with `load_recipe`)."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


# -- files -------------------------------------------------------------------------------------


def _is_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or text.endswith(RECIPE_SUFFIXES) or "/" in text


def _read_text(name_or_path: str | Path) -> tuple[str, str]:
    """(YAML text, source description) of a recipe name or path."""
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise InputError(path, "recipe", "a recipe YAML file", "nothing at that path")
        try:
            return path.read_text(), str(path)
        except UnicodeDecodeError as exc:
            raise InputError(path, "recipe", "a UTF-8 YAML text file",
                             f"undecodable bytes at offset {exc.start}") from exc
    resource = resources.files(RECIPE_PACKAGE) / RECIPE_FOLDER / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise InputError(None, "recipe", f"a recipe name (one of {list_recipes()}) or a "
                         "path to a .yaml file", repr(str(name_or_path)))
    return resource.read_text(), f"recipe {name_or_path!r}"


def _load_raw(name_or_path: str | Path, depth: int) -> tuple[dict[str, Any], str]:
    """The recipe's raw mapping with its ``base`` chain merged in."""
    if depth > MAX_BASE_DEPTH:
        raise InputError(name_or_path, BASE_KEY, f"at most {MAX_BASE_DEPTH} levels of base",
                         "a longer (circular?) chain")
    text, source = _read_text(name_or_path)
    try:
        raw = yaml.load(text, Loader=RecipeLoader) or {}
    except yaml.YAMLError as exc:
        raise InputError(source, "yaml", "valid YAML", str(exc).splitlines()[0]) from exc
    if not isinstance(raw, dict):
        raise InputError(source, "recipe", "a mapping of sections", type(raw).__name__)
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw, source
    if _is_path(base) and not Path(base).is_absolute() and Path(source).is_file():
        base = Path(source).parent / base
    base_raw, _ = _load_raw(base, depth + 1)
    return _deep_merge(base_raw, raw), source


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, merging nested mappings."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


# -- overrides ---------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise InputError(None, "override", "key.sub=value (e.g. optim.lr=3e-4)", repr(text))
    try:
        parsed = yaml.load(value, Loader=RecipeLoader) if value.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(None, key, "a YAML value", repr(value)) from exc
    return key.strip().split("."), parsed


def _apply_override(raw: dict[str, Any], text: str, source: str | None) -> None:
    """Set one override in the raw mapping, checking the key path against the schema."""
    path, value = parse_override(text)
    cls: Any = Recipe
    node = raw
    for i, part in enumerate(path):
        dotted = ".".join(path[: i + 1])
        if cls is not None:
            hints = _field_hints(cls)
            if part not in hints:
                raise InputError(source, dotted, f"one of {sorted(hints)}",
                                 repr(part), f"check the override {text!r}")
            cls = hints[part] if dataclasses.is_dataclass(hints[part]) else None
            free = cls is None and i < len(path) - 1 and not _is_dict_hint(hints[part])
            if free:
                raise InputError(source, dotted, "a section or a dict field",
                                 f"a value of type {_hint_name(hints[part])}")
        if i == len(path) - 1:
            node[part] = value
        else:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]


# -- typed construction ------------------------------------------------------------------------


def _field_hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def _build(cls: type, d: Any, prefix: str, source: str | Path | None) -> Any:
    """Instantiate dataclass `cls` from mapping `d`, checking keys and value types."""
    where = prefix.rstrip(".") or "recipe"
    if not isinstance(d, Mapping):
        raise InputError(source, where, "a mapping", f"{type(d).__name__} {d!r}")
    hints = _field_hints(cls)
    unknown = [k for k in d if k not in hints]
    if unknown:
        raise InputError(source, f"{prefix}{unknown[0]}", f"one of {sorted(hints)}",
                         repr(unknown[0]), "remove or rename the key")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in d]
    if missing:
        raise InputError(source, f"{prefix}{missing[0]}", "a value (required)", "nothing")
    values = {k: _check_value(v, hints[k], f"{prefix}{k}", source) for k, v in d.items()}
    return cls(**values)


def _check_value(value: Any, hint: Any, key: str, source: str | Path | None) -> Any:
    """`value` checked (and lightly coerced: int->float, tuple->list) against `hint`."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, f"{key}.", source)
    ok, result = _match(value, hint)
    if not ok:
        raise InputError(source, key, _hint_name(hint), f"{type(value).__name__} {value!r}")
    return result


def _match(value: Any, hint: Any) -> tuple[bool, Any]:
    """(matches, coerced value) for the hint kinds recipes use."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        exact = [a for a in typing.get_args(hint) if _match_exact(value, a)]
        for arg in exact or typing.get_args(hint):
            ok, result = _match(value, arg)
            if ok:
                return True, result
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint in (int, str, bool):
        return isinstance(value, hint) and (hint is bool or not isinstance(value, bool)), value
    if origin is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if origin is list:
        if not isinstance(value, list | tuple):
            return False, value
        (item_hint,) = typing.get_args(hint)
        items = [_match(v, item_hint) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    raise TypeError(f"recipe schema uses an unsupported type hint {hint!r}")


def _match_exact(value: Any, hint: Any) -> bool:
    """Union members whose type the value already has (so 2 stays int in int | float)."""
    return isinstance(hint, type) and type(value) is hint


def _is_dict_hint(hint: Any) -> bool:
    return typing.get_origin(hint) is dict or any(
        typing.get_origin(a) is dict for a in typing.get_args(hint))


def _hint_name(hint: Any) -> str:
    """Readable type names: "int | None", "list[int]"."""
    text = str(hint).replace("typing.", "").replace("NoneType", "None")
    return re.sub(r"<class '(\w+)'>", r"\1", text)


def _check_choices(recipe: Recipe, source: str | Path | None) -> None:
    """Named choices and value ranges that the type check cannot see."""
    choices = {"task": (recipe.task, RECIPE_TASKS), "optim.name": (recipe.optim.name, OPTIMIZERS),
               "schedule.name": (recipe.schedule.name, SCHEDULES),
               "data.balance": (recipe.data.balance, BALANCE_MODES),
               "data.crop": (recipe.data.crop, (None, *CROP_VARIANTS))}
    choices.update({f"ensemble.crops[{i}]": (c, CROP_VARIANTS)
                    for i, c in enumerate(recipe.ensemble.crops)})
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise InputError(source, key, f"one of {list(allowed)}", repr(value))
    positive = {"data.batch_size": recipe.data.batch_size, "data.period": recipe.data.period,
                "data.frames": 1 if recipe.data.frames is None else recipe.data.frames,
                "optim.lr": recipe.optim.lr,
                "schedule.step_size": recipe.schedule.step_size,
                "trainer.val_every": recipe.trainer.val_every,
                "model.freeze_epochs": recipe.model.freeze_epochs + 1}
    for key, value in positive.items():
        if value <= 0:
            raise InputError(source, key, "a positive number", repr(value))
    if not recipe.model.name:
        raise InputError(source, "model.name", "a registered model name", "nothing")
