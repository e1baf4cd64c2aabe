"""The age OOD flag on a synthetic long-axis cohort of known kind: per-model Mahalanobis
detectors (fitted on training cines, threshold from validation cines) flag few held-out
cines of the same kind and nearly every wrong-kind input given as the 4-chamber view (echo
clips, pure noise, a blank cine, a chest radiograph repeated in time), survive a reload of
their JSON sidecar, and reach predictions.csv through the pipeline's predict.

The cines are rendered by the age synth (`render_view`) and prepared by the pipeline's own
`preprocess_cine` (no DICOM round trip: fast); the models are tiny_video networks trained
for a few plain Adam steps (no Lightning)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import (
    STORE_FORMAT,
    PreparedStore,
    channel_stats,
    combine_stats,
    write_sample,
)
from cinelab.errors import InputError
from cinelab.infer.contract import read_predictions, read_run, write_contract
from cinelab.infer.ood import MahalanobisDetector
from cinelab.models.registry import create_model
from cinelab.pipelines.age.ood import (
    OOD_FILE,
    OOD_QUANTILE,
    cine_features,
    ensemble_ood_scores,
    fit_unit_ood,
    ood_flag_metrics,
    read_unit_ood,
    write_unit_ood,
)
from cinelab.pipelines.age.prepare import preprocess_cine
from cinelab.pipelines.age.synth import AGE_RANGE, NOISE, random_lax_heart, render_view
from cinelab.pipelines.age.wrong_kind import WRONG_KINDS, wrong_kind_cine
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.synth.cmr_phantom import add_rician_noise
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint
from cinelab.utils import write_json

SIZE, FRAMES, RENDER, PIXEL_MM = 16, 25, 48, 3.6
N = {"train": 40, "val": 24, "test": 30}
N_WRONG = 20
KW = {"in_channels": 1, "num_outputs": 1, "channels": [4, 8]}


def _lax_cine(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    age = float(rng.uniform(*AGE_RANGE))
    frames = render_view(random_lax_heart(rng, age), "4ch", RENDER, PIXEL_MM,
                         np.arange(FRAMES) / FRAMES)
    noisy = add_rician_noise(frames, NOISE, rng)
    return preprocess_cine(noisy, None, SIZE, spacing_mm=(PIXEL_MM, PIXEL_MM))[0], age


def _write_store(root: Path, cines: list[np.ndarray], rows: list[dict]) -> PreparedStore:
    stats = []
    for cine, row in zip(cines, rows, strict=True):
        stats.append(write_sample(root, row["sample_id"], cine,
                                  {"stats": channel_stats(cine)})["stats"])
    write_manifest(new_manifest(rows), root / "manifest.csv")
    mean, std = combine_stats(stats)
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "spec": {"size": SIZE, "channels": 1}, "mean": mean,
                                     "std": std})
    return PreparedStore(root)


def _cohort(root: Path) -> PreparedStore:
    """Train/val/test subjects of one view, each split from its own seed."""
    cines, rows = [], []
    for seed, (split, n) in enumerate(N.items(), start=1):
        for i in range(n):
            cine, age = _lax_cine(np.random.default_rng([seed, i]))
            sid = f"{split[:2]}{i:03d}"
            cines.append(cine)
            rows.append({"sample_id": f"{sid}_4ch", "patient_id": sid, "path": f"{sid}.dcm",
                         "modality": "cine", "view": "4ch", "split": split, "age": age})
    return _write_store(root, cines, rows)


def _wrong_store(root: Path) -> PreparedStore:
    cines, rows = [], []
    for k, kind in enumerate(WRONG_KINDS):
        for i in range(N_WRONG):
            cines.append(wrong_kind_cine(np.random.default_rng([10 + k, i]), kind, FRAMES,
                                         RENDER, SIZE))
            rows.append({"sample_id": f"{kind}{i:02d}_4ch", "patient_id": f"{kind}{i:02d}",
                         "path": "x", "modality": "cine", "view": "4ch", "split": "test"})
    return _write_store(root, cines, rows)


def _train(store: PreparedStore, path: Path, seed: int) -> Path:
    """A tiny_video age model: a few Adam steps on the training cines (BN statistics too)."""
    torch.manual_seed(seed)
    model = create_model("tiny_video", **KW)
    m = store.manifest[store.manifest["split"] == "train"]
    mean, std = float(store.info["mean"][0]), float(store.info["std"][0])
    x = torch.stack([torch.from_numpy(store.frames(s).astype(np.float32)) for s in
                     m["sample_id"]]).permute(0, 4, 1, 2, 3)
    x = (x - mean) / std
    y = torch.tensor(((m["age"] - 60.0) / 20.0).to_numpy(), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(12):
        batch = torch.arange(len(x))[step % 4::4]
        loss = torch.nn.functional.mse_loss(model(x[batch])[:, 0], y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
        model.fc.bias.mul_(20.0).add_(60.0)
    spec = InputSpec("cine_regression", SIZE, 1, FRAMES, 1, [mean], [std], "age")
    return save_checkpoint(path, model.eval(), {"name": "test-age", "task": "cine_regression",
                                                "model": {"name": "tiny_video", "kwargs": KW}},
                           spec)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("age_ood")
    store = _cohort(root / "store")
    models = []
    for seed in (0, 1):
        model = _train(store, root / f"m{seed}" / "model.pt", seed)
        detector, scores = fit_unit_ood(model, store)
        write_unit_ood(model, detector)
        models.append(model)
    return {"root": root, "store": store, "wrong": _wrong_store(root / "wrong"),
            "models": models, "scores": scores}


def _samples(store: PreparedStore, split: str | None = None) -> pd.DataFrame:
    m = store.manifest if split is None else store.manifest[store.manifest["split"] == split]
    return pd.DataFrame({"sample_id": m["sample_id"].astype(str),
                         "subject": m["patient_id"].astype(str)})


@pytest.mark.slow
def test_ensemble_flags_few_held_out_cines_and_nearly_every_wrong_kind(fitted: dict) -> None:
    models = fitted["models"]
    test = _samples(fitted["store"], "test")
    scores, record = ensemble_ood_scores([(m, test) for m in models], fitted["store"])
    assert len(scores) == N["test"]
    assert (scores > 1.0).mean() <= 0.10
    assert record["n_models"] == 2 and record["threshold_quantile"] == OOD_QUANTILE
    assert record["feature_layer"] == "input of fc" and record["threshold"] == 1.0
    wrong = _samples(fitted["wrong"])
    caught, _ = ensemble_ood_scores([(m, wrong) for m in models], fitted["wrong"])
    for kind in WRONG_KINDS:
        part = caught[[s for s in caught.index if s.startswith(kind)]]
        assert len(part) == N_WRONG and (part > 1.0).mean() >= 0.95, (kind, part.min())
    # the combined score is the mean over the models of score / threshold
    one = [read_unit_ood(m) for m in models]
    feats = [cine_features(load_checkpoint(m), fitted["store"], test["sample_id"].tolist())
             for m in models]
    expected = np.mean([d.score(f) / d.threshold for d, f in zip(one, feats, strict=True)],
                       axis=0)
    assert np.allclose(scores.reindex(test["subject"]).to_numpy(), expected)


@pytest.mark.slow
def test_detector_threshold_is_validation_quantile_and_survives_reload(fitted: dict) -> None:
    model, scores = fitted["models"][1], fitted["scores"]
    assert set(scores["role"]) == set(N) and len(scores) == sum(N.values())
    val = scores.loc[scores["role"] == "val", "score"].to_numpy()
    reloaded = read_unit_ood(model)
    assert isinstance(reloaded, MahalanobisDetector)
    assert reloaded.threshold == float(np.quantile(val, OOD_QUANTILE, method="higher"))
    assert reloaded.info["n_train"] == N["train"] and reloaded.info["n_validation"] == N["val"]
    assert np.allclose(scores["ratio"], scores["score"] / reloaded.threshold)
    feats = cine_features(load_checkpoint(model), fitted["store"],
                          scores["sample_id"].tolist())
    assert np.array_equal(reloaded.score(feats), scores["score"].to_numpy())
    (model.parent / OOD_FILE).rename(model.parent / "kept.json")
    try:
        assert read_unit_ood(model) is None  # no sidecar: no detector
    finally:
        (model.parent / "kept.json").rename(model.parent / OOD_FILE)


@pytest.mark.slow
def test_predict_writes_ood_columns_and_a_retrained_model_drops_its_detector(
        fitted: dict, tmp_path: Path) -> None:
    model = fitted["models"][0]
    pipeline = get_pipeline("age")
    out = pipeline.predict(model, fitted["wrong"].root, tmp_path / "wrong", Options())
    table = read_predictions(out)
    assert list(table.columns)[-2:] == ["ood_score", "ood_flag"]
    assert table["ood_flag"].astype(bool).mean() >= 0.95
    assert ood_flag_metrics(table)["ood_n"] == len(WRONG_KINDS) * N_WRONG
    assert read_run(out)["ood"]["n_models"] == 1
    copy = tmp_path / "copy" / "model.pt"
    copy.parent.mkdir()
    copy.write_bytes(model.read_bytes())
    (copy.parent / OOD_FILE).write_bytes((model.parent / OOD_FILE).read_bytes())
    assert read_unit_ood(copy) is not None
    save_checkpoint(copy, create_model("tiny_video", **KW), load_checkpoint(model).recipe,
                    load_checkpoint(model).input_spec)  # "retrained": another model
    assert read_unit_ood(copy) is None
    plain = read_predictions(pipeline.predict(copy, fitted["wrong"].root, tmp_path / "p",
                                              Options()))
    assert "ood_score" not in plain.columns


@pytest.mark.slow
def test_calibrate_fits_a_single_checkpoint_from_store_splits(fitted: dict,
                                                              tmp_path: Path) -> None:
    copy = tmp_path / "m" / "model.pt"
    copy.parent.mkdir()
    copy.write_bytes(fitted["models"][1].read_bytes())
    pipeline = get_pipeline("age")
    summary = pipeline.calibrate(copy, fitted["store"].root, tmp_path / "cal",
                                 Options(split="val"))
    assert summary["n_models"] == 1 and summary["fitted"] == 1
    assert read_unit_ood(copy).threshold == read_unit_ood(fitted["models"][1]).threshold
    stored = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert stored["thresholds"] == [read_unit_ood(copy).threshold]
    assert stored["ood"]["threshold_quantile"] == OOD_QUANTILE
    with pytest.raises(InputError, match="too few"):
        pipeline.calibrate(copy, fitted["store"].root, tmp_path / "c2", Options(split="dev"))
    with pytest.raises(InputError, match="store.json"):
        pipeline.calibrate(copy, tmp_path, tmp_path / "c3", Options())


def test_evaluate_and_report_show_the_flag_rate(tmp_path: Path) -> None:
    subjects = [f"S{i}" for i in range(8)]
    ages = np.linspace(40, 75, 8)
    pd.DataFrame({"subject": subjects, "age": ages}).to_csv(tmp_path / "ages.csv",
                                                            index=False)
    score = np.array([0.5, 0.9, 1.2, 0.7, 3.0, 0.95, 0.2, 0.99])
    table = pd.DataFrame({"sample_id": subjects, "age": ages + 2.0, "ood_score": score,
                          "ood_flag": score > 1})
    write_contract(tmp_path / "p", table, run={"labels": str(tmp_path / "ages.csv"),
                                               "ood": {"threshold_quantile": 0.95}})
    pipeline = get_pipeline("age")
    metrics = pipeline.evaluate(tmp_path / "p", tmp_path / "e", Options(extra={"n_boot": 5}))
    assert metrics["ood_flagged"] == 0.25 and metrics["ood_n"] == 8
    assert metrics["ood_threshold_quantile"] == 0.95
    page = pipeline.report(tmp_path / "e", None).read_text()
    assert "25.0% of 8 subjects flagged" in page
