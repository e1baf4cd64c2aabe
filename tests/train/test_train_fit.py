"""Training on a tiny prepared store: outputs, EF bias init, resume (also after SIGKILL),
DDP on CPU, determinism, bf16; losses and module helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import (
    STORE_FORMAT,
    PreparedStore,
    channel_stats,
    combine_stats,
    write_sample,
)
from cinelab.errors import InputError
from cinelab.models.registry import output_layer
from cinelab.train.checkpoint import load_checkpoint
from cinelab.train.fit import build_task, fit
from cinelab.train.losses import LOSSES, create_loss, register_loss
from cinelab.train.modules import (
    VideoRegressionModule,
    binary_dice,
    build_optimizer,
    build_scheduler,
)
from cinelab.train.recipe import Recipe, load_recipe
from cinelab.utils import read_json, write_json

SIZE, FRAMES = 32, 16
EF = [40.0, 50.0, 60.0, 70.0]
SPLITS = ["train", "train", "val", "train"]
SUBPROCESS_TIMEOUT = 120
EF_OVERRIDES = ["model.name=tiny_video", "model.kwargs={num_outputs: 1}", "optim.lr=1e-3",
                "data.size=32", "data.frames=4", "data.period=2", "data.batch_size=2",
                "data.num_workers=0", "data.pad=2", "trainer.max_epochs=1"]
SEG_OVERRIDES = ["data.size=32", "data.batch_size=4", "data.num_workers=0", "data.pad=2",
                 "trainer.max_epochs=1", "loss.name=bce"]


def lv_lines(cy: float, cx: float, r: float, n: int = 6) -> np.ndarray:
    ys = np.linspace(cy - r, cy + r, n + 2)[1:-1]
    half = np.sqrt(np.maximum(r**2 - (ys - cy) ** 2, 0))
    return np.vstack([[cx, cy - r, cx, cy + r], np.stack([cx - half, ys, cx + half, ys], 1)])


def make_store(root: Path) -> Path:
    """4 tiny videos (3 train, 1 val) of a beating bright disc, with ED/ES tracings."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = 6 + 3 * np.cos(np.linspace(0, 4 * np.pi, FRAMES))
    rows, stats, lines = [], [], []
    for i, (ef, split) in enumerate(zip(EF, SPLITS, strict=True)):
        video = rng.integers(0, 60, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
        video[(yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < radius[:, None, None] ** 2] = 200
        stats.append(write_sample(root, f"v{i}", video, {"fps": 50.0,
                                                         "stats": channel_stats(video)})["stats"])
        rows.append({"sample_id": f"v{i}", "path": f"v{i}.avi", "split": split, "EF": ef})
        lines += [{"sample_id": f"v{i}", "frame": f, "X1": a, "Y1": b, "X2": c, "Y2": d}
                  for f in (0, 4) for a, b, c, d in lv_lines(SIZE / 2, SIZE / 2, radius[f])]
    write_manifest(new_manifest(rows), root / "manifest.csv")
    pd.DataFrame(lines).to_csv(root / "tracings.csv", index=False)
    mean, std = combine_stats(stats)
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "spec": {"size": SIZE}, "mean": mean, "std": std})
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))


def ef_recipe(*extra: str) -> Recipe:
    return load_recipe("echonet-ef-cpu", [*EF_OVERRIDES, *extra])


def _ef_on_val(model: torch.nn.Module, store: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, true) EF of every validation clip, normalised as in training."""
    setup = build_task(ef_recipe(), PreparedStore(store))
    module = setup.module.eval()
    module.model.load_state_dict(model.state_dict())
    clips, target = module.prepare_batch(default_collate([setup.val[i]
                                                          for i in range(len(setup.val))]))
    with torch.no_grad():
        return module(clips).float().reshape(target.shape), target.float()


def lightning_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_run_outputs(out: Path) -> None:
    for name in ("model.pt", "metrics.json", "recipe.yaml", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "logs/csv/version_0/metrics.csv"):
        assert (out / name).is_file(), name
    assert list((out / "logs" / "tensorboard").glob("version_0/events.out.tfevents.*"))
    assert load_recipe(out / "recipe.yaml").task in ("video_regression", "segmentation")


# -- fit ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_ef_regression_exports_a_loadable_checkpoint(store: Path, tmp_path: Path) -> None:
    result = fit(ef_recipe(), store, tmp_path / "run")
    out = tmp_path / "run"
    assert result.best_checkpoint == out / "model.pt" and result.last_ckpt.is_file()
    assert_run_outputs(out)
    metrics = read_json(out / "metrics.json")
    assert metrics == result.metrics
    loaded = load_checkpoint(result.best_checkpoint)
    # the exported model, run on the validation clips, gives the logged validation MAE
    val_pred, val_target = _ef_on_val(loaded.model, store)
    assert val_target.unique().tolist() == [60.0]  # v2, the one val video
    assert metrics["val/mae"] == pytest.approx(float((val_pred - val_target).abs().mean()),
                                               rel=1e-4)
    assert metrics["best_score"] == pytest.approx(metrics["val/loss"])
    spec, stored = loaded.input_spec, PreparedStore(store)
    assert (spec.task, spec.size, spec.channels, spec.frames, spec.period, spec.target) == \
        ("video_regression", SIZE, 3, 4, 2, "EF")
    assert np.allclose(spec.mean, stored.mean) and np.allclose(spec.std, stored.std)
    best = lightning_state(out / "checkpoints" / "best.ckpt")["state_dict"]
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, best[f"model.{key}"])
    assert loaded.model(torch.zeros(1, 3, 4, SIZE, SIZE)).shape == (1, 1)
    assert load_recipe(out / "recipe.yaml").data.frames == 4


@pytest.mark.slow
def test_fit_segmentation_learns_the_traced_cavity(store: Path, tmp_path: Path) -> None:
    recipe = load_recipe("echonet-seg-cpu", [*SEG_OVERRIDES, "trainer.max_epochs=8",
                                             "optim.lr=1e-2", "data.batch_size=2"])
    result = fit(recipe, store, tmp_path / "seg")
    assert_run_outputs(tmp_path / "seg")
    loaded = load_checkpoint(result.best_checkpoint)
    assert (loaded.input_spec.task, loaded.input_spec.frames) == ("segmentation", None)
    # the exported model segments the bright disc of the val video at its traced frames
    setup = build_task(recipe, PreparedStore(store))
    module = setup.module.eval()
    module.model.load_state_dict(loaded.model.state_dict())
    frames, masks = module.prepare_batch(default_collate([setup.val[i]
                                                          for i in range(len(setup.val))]))
    with torch.no_grad():
        dice = binary_dice(module(frames), masks)
    assert len(dice) == 2  # the traced ED and ES frames of v2
    assert result.metrics["val/dice"] == pytest.approx(float(dice.mean()), abs=1e-4)
    log = pd.read_csv(tmp_path / "seg" / "logs" / "csv" / "version_0" / "metrics.csv")
    val = log[["val/dice", "val/loss"]].dropna()
    assert len(val) == 8  # one validation per epoch
    # it learns: 8 short epochs take the val Dice from ~0.5 to ~0.7 (0.87 at ED) on 2 cores
    assert val["val/dice"].iloc[-1] >= val["val/dice"].iloc[0] + 0.1
    assert val["val/loss"].is_monotonic_decreasing


def test_ef_output_bias_starts_at_the_training_mean(store: Path) -> None:
    setup = build_task(ef_recipe(), PreparedStore(store))
    train_mean = np.mean([ef for ef, s in zip(EF, SPLITS, strict=True) if s == "train"])
    assert float(output_layer(setup.module.model).bias) == pytest.approx(train_mean)
    assert setup.extra["target_mean"] == pytest.approx(train_mean)
    assert len(setup.train) == 3 and len(setup.val) == 1


def test_resume_continues_from_the_last_checkpoint(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    fit(ef_recipe(), store, out)
    first = lightning_state(out / "checkpoints" / "last.ckpt")
    result = fit(ef_recipe(), store, out, resume=True, max_epochs=2)
    second = lightning_state(result.last_ckpt)
    assert (first["epoch"], second["epoch"]) == (0, 1)
    assert second["global_step"] == 2 * first["global_step"] > 0
    resumed_log = pd.read_csv(out / "logs" / "csv" / "version_1" / "metrics.csv")
    assert set(resumed_log["epoch"].dropna().astype(int)) == {1}  # epoch 0 not re-trained
    assert result.metrics["epochs"] == 2


@pytest.mark.slow
def test_same_seed_gives_identical_weights(store: Path, tmp_path: Path) -> None:
    states = [load_checkpoint(fit(ef_recipe(), store, tmp_path / f"r{i}",
                                  max_epochs=2).best_checkpoint).model.state_dict()
              for i in range(2)]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = load_checkpoint(fit(ef_recipe("trainer.seed=7"), store, tmp_path / "r7",
                                max_epochs=2).best_checkpoint).model.state_dict()
    assert any(not torch.equal(states[0][k], other[k]) for k in other)


def test_bf16_mixed_precision_passes_through(store: Path, tmp_path: Path) -> None:
    result = fit(ef_recipe("trainer.limit_train_batches=1"), store, tmp_path / "bf16",
                 precision="bf16-mixed")
    assert np.isfinite(result.metrics["val/loss"])
    assert load_checkpoint(result.best_checkpoint).model.fc.weight.dtype == torch.float32


def test_size_mismatch_and_reused_out_dir_are_input_errors(store: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data.size"):
        fit(ef_recipe("data.size=64"), store, tmp_path / "bad")
    fit(ef_recipe(), store, tmp_path / "once")
    with pytest.raises(InputError, match="resume"):
        fit(ef_recipe(), store, tmp_path / "once")


def test_channels_last_3d_module(store: Path) -> None:
    setup = build_task(ef_recipe(), PreparedStore(store))
    module = VideoRegressionModule(setup.module.model, [0.0] * 3, [1.0] * 3, channels_last=True)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(setup.train, batch_size=2))
    conv = module.model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)
    assert trainer.global_step == 1


# -- subprocess runs (SIGKILL + resume, DDP) ---------------------------------------------------


def _script(tmp_path: Path, store: Path, out: Path, **kwargs: object) -> Path:
    script = tmp_path / "run_fit.py"
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    script.write_text(
        "from cinelab.train.fit import fit\n"
        "from cinelab.train.recipe import load_recipe\n"
        "if __name__ == '__main__':\n"
        f"    recipe = load_recipe('echonet-ef-cpu', {EF_OVERRIDES!r})\n"
        f"    fit(recipe, {str(store)!r}, {str(out)!r}, {args})\n")
    return script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(script: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, str(script)], stdout=f,
                                stderr=subprocess.STDOUT, env=env, cwd=script.parent)


@pytest.mark.slow
def test_resume_after_sigkill(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    last = out / "checkpoints" / "last.ckpt"
    proc = _start(_script(tmp_path, store, out, max_epochs=1000), tmp_path / "log.txt")
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), (tmp_path / "log.txt").read_text()[-3000:]
    before = lightning_state(last)  # written atomically: loadable despite the kill
    assert not (out / "model.pt").exists()
    result = fit(ef_recipe(), store, out, resume=True, max_epochs=before["epoch"] + 2)
    after = lightning_state(result.last_ckpt)
    assert after["epoch"] == before["epoch"] + 1
    assert after["global_step"] > before["global_step"]
    assert load_checkpoint(result.best_checkpoint).input_spec.frames == 4


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    script = _script(tmp_path, store, out, strategy="ddp", devices=2, accelerator="cpu")
    proc = _start(script, tmp_path / "log.txt")
    try:
        code = proc.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        proc.kill()
    log = (tmp_path / "log.txt").read_text()
    assert code == 0, log[-3000:]
    assert "Starting with 2 processes" in log
    loaded = load_checkpoint(out / "model.pt")
    assert loaded.input_spec.task == "video_regression"
    assert read_json(out / "metrics.json")["global_step"] == 1  # 3 train clips / 2 ranks / batch 2


# -- losses and module helpers -----------------------------------------------------------------


def test_losses_by_name() -> None:
    logits, mask = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    for name in ("bce", "dice", "bce+dice", "focal"):
        value = create_loss(name)(logits, mask)
        assert value.ndim == 0 and torch.isfinite(value), name
    assert float(create_loss("mse")(torch.ones(3), torch.zeros(3))) == 1.0
    assert float(create_loss("l1", reduction="sum")(torch.ones(3), torch.zeros(3))) == 3.0
    ce = create_loss("cross_entropy")(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)))
    assert torch.isfinite(ce)
    perfect = torch.where(mask > 0, 20.0, -20.0)
    assert float(create_loss("dice")(perfect, mask)) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="loss"):
        create_loss("nope")
    with pytest.raises(ValueError, match="keyword"):
        create_loss("mse", bogus=1)


def test_register_loss() -> None:
    @register_loss("test_zero")
    def zero(**kwargs: object) -> torch.nn.Module:
        return torch.nn.L1Loss(**kwargs)

    try:
        assert isinstance(create_loss("test_zero"), torch.nn.L1Loss)
        with pytest.raises(ValueError, match="already"):
            register_loss("test_zero")(zero)
    finally:
        LOSSES.pop("test_zero")


def test_optimizer_and_schedule_from_recipe_sections() -> None:
    recipe = load_recipe("echonet-ef")
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, recipe.optim)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    sched = build_scheduler(opt, recipe.schedule, 45)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and sched.step_size == 15
    adam = build_optimizer(params, {"name": "adamw", "lr": 0.01})
    cosine = build_scheduler(adam, {"name": "cosine"}, 5)
    assert isinstance(cosine, torch.optim.lr_scheduler.CosineAnnealingLR) and cosine.T_max == 5
    assert build_scheduler(adam, {"name": "none"}, 5) is None
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(params, {"name": "lbfgs"})


def test_binary_dice_per_sample() -> None:
    mask = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    mask[0, 0, :2] = 1
    mask[1, 0, :2] = 1
    logits = torch.full((3, 1, 4, 4), -1.0)
    logits[0, 0, :2] = 1.0  # perfect
    logits[1, 0, :1] = 1.0  # half of the mask: 2*4 / (4 + 8)
    assert binary_dice(logits, mask).tolist() == pytest.approx([1.0, 2 / 3, 1.0])
