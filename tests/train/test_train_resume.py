"""Resume: a seeded CPU training killed (SIGKILL) after a checkpoint and resumed ends
bit-identical to an uninterrupted run; a damaged last.ckpt falls back to the newest loadable
checkpoint; checkpoints are loaded weights-only (a malicious best checkpoint never runs)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import STORE_FORMAT, channel_stats, combine_stats, write_sample
from cinelab.errors import InputError, UnreadableFileError
from cinelab.train.fit import (
    CHECKPOINT_DIR,
    load_lightning_checkpoint,
    resume_checkpoint,
    rng_states,
    set_rng_states,
)
from cinelab.train.recipe import Recipe, load_recipe
from cinelab.utils import write_json

SIZE, FRAMES = 32, 16
EPOCHS = 3
TIMEOUT = 120
#: pad (random translation), random clips and a shuffled order: every RNG the loop draws from
OVERRIDES = ["model.name=tiny_video", "model.kwargs={num_outputs: 1}", "optim.lr=1e-3",
             "data.size=32", "data.frames=4", "data.period=2", "data.batch_size=2",
             "data.num_workers=0", "data.pad=2", "data.clips=1", f"trainer.max_epochs={EPOCHS}"]


def make_store(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    rows, stats = [], []
    for i in range(n):
        video = rng.integers(0, 255, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
        stats.append(write_sample(root, f"v{i}", video, {"fps": 50.0,
                                                         "stats": channel_stats(video)})["stats"])
        rows.append({"sample_id": f"v{i}", "path": f"v{i}.avi",
                     "split": "val" if i == 0 else "train", "EF": 40.0 + 5 * i})
    write_manifest(new_manifest(rows), root / "manifest.csv")
    mean, std = combine_stats(stats)
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "spec": {"size": SIZE}, "mean": mean, "std": std})
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"))


def recipe() -> Recipe:
    return load_recipe("echonet-ef-cpu", OVERRIDES)


def run_fit(store: Path, out: Path, **kwargs: object) -> None:
    from cinelab.train.fit import fit

    fit(recipe(), store, out, progress=False, **kwargs)


def final_state(out: Path) -> dict:
    return load_lightning_checkpoint(out / CHECKPOINT_DIR / "last.ckpt")


def flat_tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint structure, by its path."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.update(flat_tensors(v, f"{prefix}[{i}]"))
    return out


def max_diff(a: dict, b: dict) -> float:
    ta, tb = flat_tensors(a), flat_tensors(b)
    assert ta.keys() == tb.keys()
    return max(float((x.double() - tb[k].double()).abs().max()) if x.numel() else 0.0
               for k, x in ta.items())


def training_state(ckpt: dict) -> dict:
    return {"state_dict": ckpt["state_dict"], "optimizer_states": ckpt["optimizer_states"],
            "lr_schedulers": ckpt["lr_schedulers"]}


# -- RNG states --------------------------------------------------------------------------------


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian
    path = tmp_path / "rng.pt"
    torch.save(rng_states(), path)
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    set_rng_states(torch.load(path, weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.standard_normal(3), expected[1])
    assert random.random() == expected[2]


# -- SIGKILL and resume ------------------------------------------------------------------------


KILLED_SCRIPT = """
import sys, time
from lightning.pytorch.callbacks import Callback
from cinelab.train.fit import fit
from cinelab.train.recipe import load_recipe

class Pause(Callback):  # wait after the first checkpoint so the kill lands mid-run
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            print("PAUSED", flush=True)
            time.sleep(60)

if __name__ == "__main__":
    fit(load_recipe("echonet-ef-cpu", {overrides!r}), {store!r}, {out!r}, progress=False,
        callbacks=[Pause()])
"""


def kill_after_first_checkpoint(store: Path, out: Path, tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SCRIPT.format(overrides=OVERRIDES, store=str(store), out=str(out)))
    log = tmp_path / "killed.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=f,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + TIMEOUT
    try:
        while "PAUSED" not in log.read_text() and proc.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert "PAUSED" in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def whole_run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of EPOCHS epochs (read only: tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    run_fit(store, out)
    return out


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(
        store: Path, whole_run: Path, tmp_path: Path) -> None:
    whole = final_state(whole_run)
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(store, killed, tmp_path)
    assert final_state(killed)["epoch"] == 0 and not (killed / "model.pt").exists()
    run_fit(store, killed, resume=True)
    resumed = final_state(killed)
    assert (resumed["epoch"], resumed["global_step"]) == (whole["epoch"], whole["global_step"])
    assert max_diff(training_state(resumed), training_state(whole)) == 0.0
    assert resumed["lr_schedulers"] == whole["lr_schedulers"]
    assert resumed["loops"] == whole["loops"]
    assert max_diff(resumed["callbacks"]["RngStateCallback"],
                    whole["callbacks"]["RngStateCallback"]) == 0.0


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.should_stop = True


@pytest.mark.slow
def test_stop_then_resume_in_process_is_bit_identical(store: Path, whole_run: Path,
                                                      tmp_path: Path) -> None:
    run_fit(store, tmp_path / "parts", callbacks=[StopAfterFirstEpoch()])  # same schedule
    assert final_state(tmp_path / "parts")["epoch"] == 0
    torch.manual_seed(12345)  # whatever happened in between must not matter
    run_fit(store, tmp_path / "parts", resume=True)
    parts, whole = final_state(tmp_path / "parts"), final_state(whole_run)
    assert max_diff(training_state(parts), training_state(whole)) == 0.0
    assert parts["lr_schedulers"] == whole["lr_schedulers"]


# -- damaged checkpoints -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(whole_run: Path) -> Path:
    return whole_run


def copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


@pytest.mark.slow
def test_truncated_last_checkpoint_falls_back_to_the_newest_loadable_one(
        finished_run: Path, store: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    out = copy_run(finished_run, tmp_path / "run")
    ckpts = out / CHECKPOINT_DIR
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert resume_checkpoint(out) == ckpts / "best.ckpt"
    assert "resuming from" in capsys.readouterr().err
    run_fit(store, out, resume=True, max_epochs=EPOCHS + 1)
    assert final_state(out)["epoch"] == EPOCHS  # trained on, and last.ckpt is whole again


def test_no_usable_checkpoint_is_one_input_error(finished_run: Path, tmp_path: Path) -> None:
    out = copy_run(finished_run, tmp_path / "run")
    for ckpt in (out / CHECKPOINT_DIR).glob("*.ckpt"):
        ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(InputError) as info:
        resume_checkpoint(out)
    assert info.value.field == "checkpoint"
    assert info.value.found.startswith("none usable (")
    assert "last.ckpt" in info.value.found and "best.ckpt" in info.value.found


def test_resume_without_checkpoints_starts_afresh(tmp_path: Path) -> None:
    assert resume_checkpoint(tmp_path / "new") is None


# -- malicious checkpoints ---------------------------------------------------------------------


class Payload:
    """Pickled, it runs `touch <marker>` when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_named_as_best_by_last_ckpt_never_runs(finished_run: Path, store: Path,
                                                        tmp_path: Path) -> None:
    out = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    for where in (tmp_path / "evil.ckpt", out / CHECKPOINT_DIR / "evil.ckpt"):
        with open(where, "wb") as f:
            pickle.dump({"state_dict": Payload(marker)}, f)
        last = out / CHECKPOINT_DIR / "last.ckpt"
        state = load_lightning_checkpoint(last)  # tensors, numbers and strings only
        key = next(k for k in state["callbacks"] if k.startswith("ModelCheckpoint"))
        state["callbacks"][key]["best_model_path"] = str(where)
        state["callbacks"][key]["best_k_models"] = {str(where): torch.tensor(-1e9)}
        state["callbacks"][key]["best_model_score"] = torch.tensor(-1e9)  # never beaten
        torch.save(state, last)
        (out / "model.pt").unlink(missing_ok=True)
        expected = InputError if where.parent == tmp_path else UnreadableFileError
        with pytest.raises(expected) as info:
            run_fit(store, out, resume=True, max_epochs=state["epoch"] + 1)
        assert str(where) in str(info.value)
        assert not marker.exists()
        assert not (out / "model.pt").exists()


def test_a_pickled_last_ckpt_is_refused_not_run(finished_run: Path, store: Path,
                                                tmp_path: Path) -> None:
    out = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "PWNED"
    for ckpt in (out / CHECKPOINT_DIR).glob("*.ckpt"):
        torch.save({"state_dict": {}, "loops": Payload(marker)}, ckpt)
    with pytest.raises(InputError, match="none usable"):
        run_fit(store, out, resume=True)
    assert not marker.exists()


def test_weights_only_loader_reports_damage(tmp_path: Path) -> None:
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(UnreadableFileError) as info:
        load_lightning_checkpoint(bad)
    assert (info.value.path, info.value.field) == (str(bad), "checkpoint")
    torch.save([1, 2], bad)
    with pytest.raises(UnreadableFileError, match="state_dict"):
        load_lightning_checkpoint(bad)


def test_model_pt_weights_match_the_named_best(finished_run: Path) -> None:
    from cinelab.train.checkpoint import load_checkpoint

    best = load_lightning_checkpoint(finished_run / CHECKPOINT_DIR / "best.ckpt")
    model = load_checkpoint(finished_run / "model.pt").model.state_dict()
    for k, v in model.items():
        assert torch.equal(best["state_dict"][f"model.{k}"], v)
    assert pd.api.types.is_number(best["epoch"])


# -- YAML files: refused cleanly ---------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "optim.lr: !!python/object/apply:os.system ['touch PWNED']\n",
    "!!python/name:os.system\n",
    "optim.lr: !custom 3\n",
])
def test_best_params_with_a_yaml_tag_is_one_input_error(tmp_path: Path, text: str) -> None:
    from cinelab.train.tune import overrides_from_best, recipe_with_best

    path = tmp_path / "best_params.yaml"
    path.write_text(text)
    for call in (lambda: overrides_from_best(path),
                 lambda: recipe_with_best("echonet-ef-cpu", path)):
        with pytest.raises(InputError) as info:
            call()
        assert (info.value.path, info.value.field) == (str(path), "best_params")
        assert info.value.expected == "plain YAML written by `cinelab tune` (no tags)"
        assert "\n" not in str(info.value)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_binary_best_params_and_recipe_are_input_errors(tmp_path: Path) -> None:
    from cinelab.train.tune import overrides_from_best

    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(InputError, match="best_params"):
        overrides_from_best(path)
    with pytest.raises(InputError) as info:
        load_recipe(path)
    assert (info.value.field, info.value.expected) == ("recipe", "a UTF-8 YAML text file")


# -- disk full while training ------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_while_training_is_one_line_and_the_rerun_matches(
        store: Path, whole_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    import errno

    import lightning.fabric.plugins.io.torch_io as torch_io

    from cinelab.cliutil import friendly

    real, saves = torch_io._atomic_save, []

    def save(checkpoint: dict, path: str) -> None:
        saves.append(path)
        if len(saves) > 2:  # epoch 0's best and last fit, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(checkpoint, path)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(torch_io, "_atomic_save", save)
        with pytest.raises(SystemExit) as info:
            friendly(run_fit)(store, out)
    assert info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: {saves[-1]}: cannot write (no space left on the device)" in err
    assert final_state(out)["epoch"] == 0  # the last checkpoint written is whole
    run_fit(store, out, resume=True)
    resumed, whole = final_state(out), final_state(whole_run)
    assert max_diff(training_state(resumed), training_state(whole)) == 0.0
