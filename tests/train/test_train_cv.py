"""The cross-validation runner on a tiny two-view store: folds by subject, per-unit store
views and predictions (with and without TTA), resume that skips finished units, MRI
augmentation and the cine_regression task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.mri_augment import CineTransform, RandomCineAugment, cine_tta_views
from cinelab.data.store import (
    STORE_FORMAT,
    PreparedStore,
    channel_stats,
    combine_stats,
    write_sample,
)
from cinelab.errors import InputError
from cinelab.infer.video_regress import predict_store
from cinelab.train import cv as cv_module
from cinelab.train.cv import is_finished, read_cv_predictions, run_cv
from cinelab.train.fit import build_task
from cinelab.train.recipe import load_recipe
from cinelab.train.tasks.cine import CineRegressionModule
from cinelab.utils import write_json

N_SUBJECTS, SIZE, FRAMES = 10, 16, 25
OVERRIDES = ["data.size=16", "data.batch_size=4", "trainer.max_epochs=1",
             "model.kwargs={in_channels: 1, num_outputs: 1, channels: [4, 8]}"]


def make_store(root: Path) -> Path:
    """N_SUBJECTS subjects x (3ch, 4ch), S1 without 3ch; brightness grows with age."""
    rng = np.random.default_rng(0)
    rows, stats = [], []
    for i in range(N_SUBJECTS):
        age = 40.0 + 4 * i
        for view in ("3ch", "4ch"):
            if i == 1 and view == "3ch":
                continue
            video = rng.integers(0, 40, (FRAMES, SIZE, SIZE, 1)).astype(np.uint8) + int(age)
            sid = f"S{i}_{view}"
            stats.append(write_sample(root, sid, video, {"fps": 25.0,
                                                         "stats": channel_stats(video)})["stats"])
            rows.append({"sample_id": sid, "patient_id": f"S{i}", "path": f"{sid}.csv",
                         "modality": "cine", "view": view, "age": age})
    write_manifest(new_manifest(rows), root / "manifest.csv")
    mean, std = combine_stats(stats)
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "spec": {"size": SIZE}, "mean": mean, "std": std})
    return root


@pytest.fixture(scope="module")
def done_cv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cv")
    store = make_store(root / "store")
    recipe = load_recipe("cmr-age-cpu", OVERRIDES)
    run_cv(recipe, store, root / "cv", outer=2, inner=2, by="view", tta=2)
    return store, root / "cv"


@pytest.mark.slow
def test_units_predict_every_role_without_leaks(done_cv: tuple[Path, Path]) -> None:
    _, out = done_cv
    folds = pd.read_csv(out / "folds.csv", dtype={"subject": str}).set_index("subject")
    preds = read_cv_predictions(out)
    assert set(preds["arm"]) == {"3ch", "4ch"}
    assert len(preds.groupby(["arm", "outer", "inner"])) == 8
    for (_arm, k, j), unit in preds.groupby(["arm", "outer", "inner"]):
        roles = unit.groupby("role")["subject"].agg(set)
        assert set(roles.index) == {"train", "val", "test"}
        assert roles["test"] == set(folds.index[folds["outer"] == k]) & set(unit["subject"])
        assert not roles["test"] & (roles["train"] | roles["val"])
        assert not roles["train"] & roles["val"]
        inner = folds.loc[list(roles["val"]), f"inner_{k}"]
        assert (inner == j).all()
    # the saved predictions are the unit's own model on its own store view, with and
    # without test-time augmentation
    unit_dir = out / "4ch" / "outer_1" / "inner_1"
    saved = pd.read_csv(unit_dir / "predictions.csv", dtype={"sample_id": str})
    again = predict_store(unit_dir / "run" / "model.pt", unit_dir / "store",
                          saved["sample_id"].tolist(), tta=2)
    assert np.allclose(saved["pred"], again["pred"], atol=1e-5)
    assert np.allclose(saved["pred_aug"], again["pred_aug"], atol=1e-5)
    assert np.allclose(saved["target"], [40.0 + 4 * int(s[1:].split("_")[0])
                                         for s in saved["sample_id"]])
    assert "S1_3ch" not in set(preds["sample_id"])  # S1 has only its 4ch view
    assert "S1_4ch" in set(preds["sample_id"])


def test_store_view_normalises_with_training_samples(done_cv: tuple[Path, Path]) -> None:
    store, out = done_cv
    view = PreparedStore(out / "4ch" / "outer_0" / "inner_0" / "store")
    train = view.split_ids("train")
    stats = [channel_stats(np.asarray(view.frames(s))) for s in train]
    np.testing.assert_allclose(view.mean, combine_stats(stats)[0], rtol=1e-5)
    assert set(view.manifest["view"]) == {"4ch"}
    assert (view.root / "samples").resolve() == (store / "samples").resolve()


def test_resume_skips_finished_units(done_cv: tuple[Path, Path], monkeypatch) -> None:
    store, out = done_cv
    work = out.parent / "resume"
    shutil.copytree(out, work, symlinks=True)
    calls: list[Path] = []
    real_fit = cv_module.fit
    monkeypatch.setattr(cv_module, "fit", lambda *a, **k: calls.append(a[2]) or real_fit(*a, **k))
    unit = work / "3ch" / "outer_1" / "inner_0"
    (unit / "done.json").unlink()
    shutil.rmtree(unit / "run")  # killed while training: nothing of its fit is left
    mtimes = {p: p.stat().st_mtime_ns for p in work.glob("*/outer_*/inner_*/predictions.csv")
              if p.parent != unit}
    recipe = load_recipe("cmr-age-cpu", OVERRIDES)
    result = run_cv(recipe, store, work, outer=2, inner=2, by="view", tta=2)
    assert result.trained == ["3ch/outer_1/inner_0"] and len(result.skipped) == 7
    assert calls == [unit / "run"]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert is_finished(unit)
    (unit / "predictions.csv").write_text("truncated")
    assert not is_finished(unit)  # a changed output means the unit is not finished


def test_resume_refuses_other_settings(done_cv: tuple[Path, Path]) -> None:
    store, out = done_cv
    with pytest.raises(InputError, match="inner"):
        run_cv(load_recipe("cmr-age-cpu", OVERRIDES), store, out, outer=2, inner=3, by="view",
               tta=2)
    settings = json.loads((out / "cv.json").read_text())
    assert settings["outer"] == 2 and settings["by"] == "view"


def test_cine_augment_is_per_sample_and_tta_is_deterministic() -> None:
    x = torch.arange(2 * 1 * 5 * 8 * 8, dtype=torch.float32).reshape(2, 1, 5, 8, 8) % 200
    twin = RandomCineAugment(rotate=0, scale=0, shift=0, gain=0, gamma=0,
                             time_shift=2).draw(2, generator=torch.Generator().manual_seed(3))
    out = twin(x)
    for b, shift in enumerate(twin.roll.tolist()):
        assert torch.equal(out[b], torch.roll(x[b], shift, dims=1))
    assert torch.allclose(CineTransform()(x), x, atol=1e-4)
    rotated = CineTransform(angle=90.0)(x)
    assert torch.allclose(rotated[0, 0, 0, 1:-1, 1:-1],
                          torch.rot90(x[0, 0, 0], 1, (0, 1))[1:-1, 1:-1], atol=1e-3)
    views = cine_tta_views(3)
    assert cine_tta_views(1) == [CineTransform()] and views[0] == CineTransform()
    outs = [view(x) for view in views]
    assert torch.allclose(outs[0], x, atol=1e-4)  # the first view is the identity
    assert not torch.allclose(outs[1], x, atol=1e-2) and not torch.allclose(outs[2], outs[1],
                                                                           atol=1e-2)
    with pytest.raises(InputError, match="augment"):
        RandomCineAugment.from_dict({"flip": True})


def test_cine_task_trains_with_augmentation(done_cv: tuple[Path, Path]) -> None:
    _, out = done_cv
    view = PreparedStore(out / "3ch" / "outer_0" / "inner_0" / "store")
    recipe = load_recipe("cmr-age-cpu", OVERRIDES)
    setup = build_task(recipe, view)
    assert isinstance(setup.module, CineRegressionModule)
    assert setup.module.augment == RandomCineAugment.from_dict(recipe.data.augment)
    assert setup.input_spec.task == "cine_regression" and setup.input_spec.frames == 25
    bias = setup.module.model.fc.bias.item()
    train_ages = view.manifest.loc[view.manifest["split"] == "train", "age"]
    assert bias == pytest.approx(train_ages.mean(), rel=1e-5)
