"""`cinelab train`: fit a recipe on a prepared store with Lightning, resumably.

out_dir layout after a run:
  checkpoints/best.ckpt, checkpoints/last.ckpt   Lightning checkpoints (resume from last)
  logs/csv/version_N/metrics.csv                 CSV logs (one version per run or resume)
  logs/tensorboard/version_N/                    TensorBoard logs
  model.pt                                       the best weights as a cinelab checkpoint
  metrics.json                                   final and best validation metrics
  recipe.yaml                                    the recipe that ran (overrides applied)
Under DDP every rank trains; only rank 0 writes model.pt, metrics.json and recipe.yaml.

Every checkpoint is loaded weights-only (tensors, numbers, strings; no pickled objects), and the
best checkpoint a run's state names must lie in its checkpoints/ folder. Checkpoints hold the
global RNG states (torch, CUDA, numpy, random), so a resumed run draws the same data order,
clips, augmentations and dropout as an uninterrupted one. `--resume` from a damaged last.ckpt
goes on from the newest loadable checkpoint in checkpoints/ (or says none is usable).
"""

from __future__ import annotations

import logging
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from cinelab.cliutil import console
from cinelab.data.datasets import train_val_ids
from cinelab.data.store import PreparedStore
from cinelab.errors import CinelabError, InputError, UnreadableFileError
from cinelab.train.checkpoint import save_checkpoint
from cinelab.train.recipe import Recipe, load_recipe, recipe_to_dict, recipe_to_yaml
from cinelab.train.setup import TASK_SETUPS, TaskSetup
from cinelab.train.tasks import BUILTIN_TASKS  # noqa: F401  (importing registers them)
from cinelab.utils import atomic_path, inside, write_json

log = logging.getLogger(__name__)

#: An epoch of at most this many optimiser steps is a small cohort: warned and noted.
SMALL_COHORT_STEPS = 1

CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best"
LAST_NAME = "last"
CKPT_SUFFIX = ".ckpt"
LOG_DIR = "logs"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
RECIPE_FILE = "recipe.yaml"
MAX_LOG_EVERY = 50

#: Non-tensor globals allowed when loading a Lightning checkpoint weights-only: none. cinelab's
#: checkpoints hold only dicts, lists, tuples, numbers, strings, None and tensors (loops,
#: callback states, optimiser and scheduler state_dicts, RNG states stored as tensors); add a
#: class here only when a checkpoint really needs it.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()
#: Keys a checkpoint must have to resume training from it
RESUME_KEYS = ("state_dict", "loops", "optimizer_states", "epoch", "global_step")


@dataclass
class FitResult:
    """What a fit produced: the exported cinelab checkpoint, Lightning's last, metrics."""

    best_checkpoint: Path
    last_ckpt: Path
    metrics: dict[str, Any] = field(default_factory=dict)


class StoreDataModule(L.LightningDataModule):
    """Train/val loaders over store datasets; the train set learns the epoch it serves."""

    def __init__(self, train: Dataset, val: Dataset, batch_size: int, num_workers: int,
                 pin_memory: bool) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.loader_args = {"batch_size": batch_size, "num_workers": num_workers,
                            "pin": pin_memory}

    def train_dataloader(self) -> DataLoader:
        # called after a resumed run restored its loops, before the first epoch's iterator
        _set_epoch(self.train, self.trainer)
        return _loader(self.train, train=True, **self.loader_args)

    def val_dataloader(self) -> DataLoader:
        return _loader(self.val, train=False, **self.loader_args)


class EpochDataCallback(Callback):
    """Tell datasets with `set_epoch` which epoch is starting (new random clips each epoch)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _set_epoch(self.dataset, trainer)


class RngStateCallback(Callback):
    """Store the global RNG states in every checkpoint and restore them on resume.

    Lightning restores weights, optimiser, scheduler and loop counters, not the RNGs; the
    shuffling sampler, DataLoader worker seeds, augmentations and dropout draw from them. The
    states saved at the end of epoch e are those the uninterrupted run starts epoch e+1 with.
    """

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict)


def rng_states() -> dict[str, Any]:
    """torch, CUDA, numpy and python RNG states as tensors and plain values (weights-only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(gauss)],
        "python": [int(version), torch.tensor(internal, dtype=torch.int64), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what `rng_states` recorded."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _set_epoch(dataset: Dataset, trainer: L.Trainer) -> None:
    """The epoch Lightning gives samplers (right after a resume too, unlike current_epoch)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(trainer.fit_loop.epoch_progress.current.processed)


def build_task(recipe: Recipe, store: PreparedStore, train_ids: list[str] | None = None,
               val_ids: list[str] | None = None) -> TaskSetup:
    """Module, datasets and input spec of `recipe` on `store` (split from the manifest)."""
    setup_fn = TASK_SETUPS.get(recipe.task)
    if train_ids is None or val_ids is None:
        train_ids, val_ids = train_val_ids(store, recipe.trainer.seed)
    return setup_fn(recipe, store, train_ids, val_ids)


# -- trainer -----------------------------------------------------------------------------------


def _as_recipe(recipe: Recipe | str | Path) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def _resolve(value: Any, default: Any) -> Any:
    return default if value is None else value


def _is_cpu(accelerator: str) -> bool:
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def _batching(n_items: int, batch_size: int, train: bool) -> tuple[int, bool, int]:
    """(batch size, drop_last, batches per epoch): training drops a ragged last batch
    (as EchoNet does; BatchNorm needs > 1 sample) unless the set is smaller than a batch."""
    batch = max(1, min(batch_size, n_items))
    drop_last = train and n_items >= batch_size
    return batch, drop_last, n_items // batch if drop_last else math.ceil(n_items / batch)


def small_cohort_note(n_train: int, batch_size: int) -> str | None:
    """The warning for a training set so small that an epoch is `SMALL_COHORT_STEPS`
    optimiser step(s) (the last partial batch is dropped), else None."""
    batch, drop_last, steps = _batching(int(n_train), int(batch_size), True)
    if steps > SMALL_COHORT_STEPS:
        return None
    dropped = int(n_train) - steps * batch if drop_last else 0
    return (f"small cohort: {n_train} training item(s) at batch size {batch} give {steps} "
            f"optimiser step(s) per epoch ({dropped} item(s) of the partial last batch dropped "
            f"each epoch); lower data.batch_size (e.g. --set data.batch_size="
            f"{max(1, int(n_train) // 4)}) or raise trainer.max_epochs")


def training_fps(store: PreparedStore) -> float | None:
    """Median frame rate of the store's training split (all rows without a split column);
    None when the store records none (image stores)."""
    try:
        m = store.manifest
    except Exception:  # noqa: BLE001  (a store without a readable manifest records no rate)
        return None
    if "fps" not in m.columns:
        return None
    if "split" in m.columns and (m["split"].astype(str).str.lower() == "train").any():
        m = m[m["split"].astype(str).str.lower() == "train"]
    values = np.asarray(m["fps"], dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if len(values) else None


def _loader(dataset: Dataset, batch_size: int, num_workers: int, train: bool,
            pin: bool) -> DataLoader:
    batch, drop_last, _ = _batching(len(dataset), batch_size, train)
    return DataLoader(dataset, batch_size=batch, shuffle=train, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin, persistent_workers=False)


def _progress_bar() -> Callback:
    return RichProgressBar() if sys.stderr.isatty() else TQDMProgressBar()


def _trainer(recipe: Recipe, out: Path, ckpt_cb: ModelCheckpoint, callbacks: list[Callback],
             n_batches: int, **settings: Any) -> L.Trainer:
    loggers = [CSVLogger(out / LOG_DIR, name="csv"),
               TensorBoardLogger(out / LOG_DIR, name="tensorboard", default_hp_metric=False)]
    bar = [_progress_bar()] if settings.get("enable_progress_bar", True) else []
    return L.Trainer(default_root_dir=out, callbacks=[ckpt_cb, *bar, *callbacks],
                     logger=loggers, limit_train_batches=recipe.trainer.limit_train_batches,
                     check_val_every_n_epoch=recipe.trainer.val_every,
                     log_every_n_steps=max(1, min(MAX_LOG_EVERY, n_batches)), **settings)


class EpochCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes last.ckpt at every save point, as resume needs.

    Lightning >= 2.6 rewrites last.ckpt only when the monitored score improved, so a run
    killed after epochs that did not improve would redo them on resume. The state key stays
    ModelCheckpoint's, so runs written before resume with their best-model tracking.
    """

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_always(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_always(trainer)

    def _save_last_always(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _checkpoint_callback(out: Path, monitor: tuple[str, str]) -> ModelCheckpoint:
    return EpochCheckpoint(dirpath=out / CHECKPOINT_DIR, filename=BEST_NAME,
                           monitor=monitor[0], mode=monitor[1], save_top_k=1, save_last=True,
                           auto_insert_metric_name=False, enable_version_counter=False)


def load_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint loaded weights-only (no pickled object can run); a damaged,
    truncated or non-tensor file raises UnreadableFileError."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnreadableFileError(
            path, "checkpoint", "a Lightning checkpoint of tensors, numbers and strings",
            f"{type(exc).__name__}: {first}"[:300],
            "it is damaged or holds pickled objects; use another checkpoint") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload:
        found = sorted(map(str, payload))[:6] if isinstance(payload, dict) else \
            type(payload).__name__
        raise UnreadableFileError(path, "checkpoint", "a Lightning checkpoint dict with a "
                                  "state_dict", repr(found))
    return payload


def resume_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: last.ckpt when it loads, else the newest loadable
    checkpoint in checkpoints/ (with a warning); None when there is none at all; InputError
    when there are checkpoints but none is usable."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    last = folder / f"{LAST_NAME}{CKPT_SUFFIX}"
    others = sorted((p for p in folder.glob(f"*{CKPT_SUFFIX}") if p != last and p.is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = ([last] if last.is_file() else []) + others
    if not candidates:
        return None
    failures = []
    for candidate in candidates:
        try:
            payload = load_lightning_checkpoint(candidate)
            missing = [k for k in RESUME_KEYS if k not in payload]
            if missing:
                raise UnreadableFileError(candidate, "checkpoint", f"keys {list(RESUME_KEYS)}",
                                          f"no {missing}")
        except CinelabError as exc:
            failures.append(str(exc))
            continue
        if candidate != last:
            why = "; ".join(failures) or f"{last}: no such file"
            console.print(f"[yellow]warning:[/yellow] {why}; resuming from {candidate} "
                          "instead", highlight=False, soft_wrap=True)
        return candidate
    raise InputError(folder, "checkpoint", "a loadable checkpoint to resume from",
                     f"none usable ({'; '.join(failures)})"[:1000],
                     "start again in a new output folder (or delete the checkpoints folder)")


def fit(recipe: Recipe | str | Path, store: PreparedStore | str | Path, out_dir: str | Path,
        resume: bool = False, precision: str | int | None = None,
        devices: int | str | list[int] | None = None, accelerator: str | None = None,
        strategy: str | None = None, max_epochs: int | None = None,
        num_workers: int | None = None, progress: bool = True,
        callbacks: list[Callback] | None = None) -> FitResult:
    """Train `recipe` on `store`; write checkpoints, logs, model.pt, metrics.json under out_dir.

    Arguments left as None come from the recipe's trainer/data sections. With `resume`,
    training continues from out_dir/checkpoints/last.ckpt when it exists (from the newest
    loadable checkpoint when last.ckpt is damaged; InputError when none is usable; afresh
    when there is none), bit-identical to an uninterrupted run on CPU (weights, optimiser,
    scheduler, loops and RNG states restored); without it, an out_dir holding a previous run
    is refused.
    `progress=False` hides the progress bar and model summary (e.g. inside another display);
    `callbacks` are extra Lightning callbacks (early stopping, timing, ...).
    """
    recipe, out = _as_recipe(recipe), Path(out_dir)
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    last = out / CHECKPOINT_DIR / f"{LAST_NAME}{CKPT_SUFFIX}"
    if last.exists() and not resume:
        raise InputError(out, "out_dir", "a new output folder, or resume=True",
                         f"a previous run ({last} exists)",
                         "resume it (--resume) or choose another output folder")
    start_from = resume_checkpoint(out) if resume else None
    L.seed_everything(recipe.trainer.seed, workers=True, verbose=False)
    setup = build_task(recipe, store)
    note = small_cohort_note(len(setup.train), recipe.data.batch_size)
    if note is not None:
        log.warning("%s", note)
    acc = _resolve(accelerator, recipe.trainer.accelerator)
    data = StoreDataModule(setup.train, setup.val, recipe.data.batch_size,
                           _resolve(num_workers, recipe.data.num_workers), not _is_cpu(acc))
    ckpt_cb = _checkpoint_callback(out, setup.module.monitor)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = _trainer(
        recipe, out, ckpt_cb,
        [EpochDataCallback(setup.train), RngStateCallback(), *(callbacks or [])],
        _batching(len(setup.train), recipe.data.batch_size, True)[2],
        max_epochs=_resolve(max_epochs, recipe.trainer.max_epochs),
        precision=_resolve(precision, recipe.trainer.precision),
        devices=_resolve(devices, recipe.trainer.devices), accelerator=acc,
        strategy=_resolve(strategy, recipe.trainer.strategy),
        deterministic=_is_cpu(acc) or recipe.trainer.deterministic,
        enable_progress_bar=progress, enable_model_summary=progress)
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams(_flat(recipe_to_dict(recipe)))
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            trainer.fit(setup.module, datamodule=data, ckpt_path=start_from,
                        weights_only=True)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    metrics = _metrics(trainer, ckpt_cb)
    metrics["steps_per_epoch"] = _batching(len(setup.train), recipe.data.batch_size, True)[2]
    if note is not None:
        metrics["notes"] = [note]
    if trainer.is_global_zero:
        _export(out, recipe, setup, ckpt_cb, metrics, store)
    return FitResult(out / MODEL_FILE, last, metrics)


# -- results -----------------------------------------------------------------------------------


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) \
                else str(value)
    return out


def _number(value: Any) -> float | None:
    number = float(value.item() if isinstance(value, torch.Tensor) else value)
    return number if math.isfinite(number) else None


def _metrics(trainer: L.Trainer, ckpt_cb: ModelCheckpoint) -> dict[str, Any]:
    """Last epoch's logged epoch metrics plus the best monitored score."""
    metrics: dict[str, Any] = {k: _number(v) for k, v in trainer.callback_metrics.items()
                               if not k.endswith(("_step", "_epoch"))}
    metrics.update(epochs=int(trainer.current_epoch), global_step=int(trainer.global_step),
                   monitor=ckpt_cb.monitor, mode=ckpt_cb.mode,
                   best_score=None if ckpt_cb.best_model_score is None
                   else _number(ckpt_cb.best_model_score))
    return metrics


def _export(out: Path, recipe: Recipe, setup: TaskSetup, ckpt_cb: ModelCheckpoint,
            metrics: dict[str, Any], store: PreparedStore) -> None:
    """Best weights -> model.pt (cinelab checkpoint); metrics.json; recipe.yaml."""
    best = ckpt_cb.best_model_path or ckpt_cb.last_model_path
    if not inside(out / CHECKPOINT_DIR, best):
        raise InputError(best, "best_model_path", f"a checkpoint inside {out / CHECKPOINT_DIR}",
                         f"{best} (named by the resumed checkpoint)",
                         "resume only from checkpoints this run wrote")
    payload = load_lightning_checkpoint(best)
    setup.module.load_state_dict(payload["state_dict"])
    metrics["best_epoch"] = int(payload.get("epoch", -1))
    extra = {"metrics": metrics, "store": str(store.root), "lightning_checkpoint": str(best),
             **setup.extra}
    fps = training_fps(store)
    if fps is not None:
        extra.setdefault("fps", fps)  # the frame rate the model learned (predict resamples)
    save_checkpoint(out / MODEL_FILE, setup.module.model.cpu(), recipe_to_dict(recipe),
                    setup.input_spec, extra)
    write_json(out / METRICS_FILE, metrics)
    with atomic_path(out / RECIPE_FILE) as tmp:
        tmp.write_text(recipe_to_yaml(recipe))
