"""Know when not to trust an EF: intervals, OOD flags and beat-to-beat spread, wired through
calibrate -> checkpoint -> predict -> evaluate, on a cohort of known truth.

The cohort: phantom echo videos (`synth.echo.echo_phantom_video`, 32 px) and a demo-sized
EF model (tiny_video, fixed random weights). Its EF "truth" is the model's own all-clips EF
plus Gaussian noise of SD `NOISE_SD`, so the residuals are known exactly: the ideal 90 %
interval is ef ± 1.645·SD, and split-conformal calibration on the val split must reach about
90 % coverage on the test split. Training the EF model itself is not needed to test this
wiring (the pipeline's learning is tested in test_echonet_pipeline.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import STORE_FORMAT, channel_stats, combine_stats, write_sample
from cinelab.infer.contract import read_predictions, read_run
from cinelab.infer.engines import export_checkpoint, read_sidecar
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.models.registry import create_model, output_layer
from cinelab.pipelines.cxr.synth import cxr_phantom, draw_anatomy
from cinelab.pipelines.echonet.api import evaluate_echonet_predictions, report_echonet
from cinelab.pipelines.echonet.predict import predict
from cinelab.pipelines.echonet.uncertainty import (
    BEAT_SD_THRESHOLD,
    annotate_predictions,
    beat_sd,
)
from cinelab.pipelines.echonet.video import predict_video
from cinelab.pipelines.registry import Options
from cinelab.synth.echo import echo_phantom_video
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint
from cinelab.utils import write_json
from conftest import real_path

SIZE, CLIP, PERIOD, FRAMES, FPS = 32, 8, 2, 16, 25.0
MEAN, STD = [30.0] * 3, [40.0] * 3
EF_KW = {"in_channels": 3, "channels": [4, 8]}
NOISE_SD = 5.0
N_TRAIN, N_VAL, N_TEST, N_OOD = 40, 300, 300, 40
Z90 = 1.6449


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec() -> InputSpec:
    return InputSpec("video", SIZE, 3, CLIP, PERIOD, MEAN, STD, "EF")


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def _phantom(rng: np.random.Generator) -> np.ndarray:
    return _rgb(echo_phantom_video(rng, size=SIZE, fps=FPS, n_frames=FRAMES)[0])


def _cxr(rng: np.random.Generator) -> np.ndarray:
    """A chest radiograph held still for a whole clip (the wrong kind of input)."""
    image = cxr_phantom(rng, SIZE, draw_anatomy(rng))[0]
    return _rgb(np.repeat(image[None], FRAMES, axis=0))


def _noise(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)


def _write_store(root: Path, videos: list[np.ndarray], efs: list[float],
                 splits: list[str]) -> Path:
    rows, stats = [], []
    for i, (video, ef, split) in enumerate(zip(videos, efs, splits, strict=True)):
        meta = write_sample(root, f"v{i:04d}", video, {"fps": FPS, "stats": channel_stats(video)})
        stats.append(meta["stats"])
        rows.append({"sample_id": f"v{i:04d}", "path": f"v{i:04d}.avi", "split": split,
                     "EF": ef, "modality": "echo"})
    write_manifest(new_manifest(rows), root / "manifest.csv")
    mean, std = combine_stats(stats)
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "spec": {"size": SIZE}, "mean": mean, "std": std})
    return root


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("tiny_video", **EF_KW)
    with torch.no_grad():  # an EF that varies with the video by several points
        output_layer(model).weight.mul_(500.0)
    return model.eval()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model.pt (calibrated by `cinelab calibrate`), the store and an OOD store."""
    root = tmp_path_factory.mktemp("unc")
    model = _model()
    rng = np.random.default_rng(0)
    splits = list(rng.permutation(["train"] * N_TRAIN + ["val"] * N_VAL + ["test"] * N_TEST))
    videos = [_phantom(np.random.default_rng(s)) for s in np.random.SeedSequence(1).spawn(
        len(splits))]
    model_ef = np.asarray([predict_video(model, None, v, FPS, _spec(), None,
                                         batch_size=16).ef_all_clips for v in videos])
    shift = float(model_ef.mean()) - 50.0  # centre the model's EF on 50 (output is linear)
    with torch.no_grad():
        output_layer(model).bias.sub_(shift)
    model_ef = model_ef - shift
    ckpt = save_checkpoint(root / "run" / "ef" / "model.pt", model,
                           {"model": {"name": "tiny_video", "kwargs": EF_KW}}, _spec())
    truth = list(model_ef + rng.normal(0.0, NOISE_SD, len(videos)))
    store = _write_store(root / "store", videos, truth, splits)
    ood = [_cxr(rng) for _ in range(N_OOD)] + [_noise(rng) for _ in range(N_OOD)]
    ood_store = _write_store(root / "ood", ood, [50.0] * len(ood), ["test"] * len(ood))
    result = CliRunner().invoke(app, ["calibrate", str(root / "run"), "--data", str(store),
                                      "--out", str(root / "cal"), "--pipeline", "echonet"])
    assert result.exit_code == 0, result.output
    return {"ckpt": ckpt, "run": root / "run", "store": store, "ood": ood_store,
            "cal": root / "cal", "model_sd": float(np.std(model_ef))}


@pytest.mark.slow
def test_intervals_cover_known_truth(cohort: dict[str, Path], tmp_path: Path) -> None:
    assert cohort["model_sd"] > 2.0  # the EF model's output does vary between videos
    out = predict(cohort["run"], cohort["store"], tmp_path / "pred", split="test")
    preds = read_predictions(out)
    assert {"ef_lo", "ef_hi", "ood_score", "ood_flag", "ef_beat_sd"} <= set(preds.columns)
    truth = pd.read_csv(cohort["store"] / "manifest.csv", dtype={"sample_id": str})
    joined = preds.merge(truth[["sample_id", "EF"]], on="sample_id")
    assert len(joined) == N_TEST and (joined["sample_id"].isin(truth.loc[
        truth["split"] == "test", "sample_id"])).all()
    inside = (joined["EF"] >= joined["ef_lo"]) & (joined["EF"] <= joined["ef_hi"])
    assert 0.85 <= inside.mean() <= 0.95
    half = (joined["ef_hi"] - joined["ef_lo"]).mean() / 2
    assert half == pytest.approx(Z90 * NOISE_SD, rel=0.2)  # the known residual SD
    run = read_run(out)["uncertainty"]
    assert run["intervals"] == ["ef"] and run["ood"] == "mahalanobis"
    # evaluate reads the columns back through the contract
    metrics = evaluate_echonet_predictions(out, tmp_path / "eval", Options(extra={"n_boot": 10}))
    assert metrics["ef_coverage"] == pytest.approx(inside.mean())
    assert metrics["ood_flagged"] <= 0.10
    assert metrics["ef_coverage_nominal"] == 0.9 and metrics["ef_interval_n"] == N_TEST
    html = report_echonet(tmp_path / "eval").read_text()
    assert "When not to trust it" in html and "ef_coverage" in html


@pytest.mark.slow
def test_wrong_kind_of_input_is_flagged(cohort: dict[str, Path], tmp_path: Path) -> None:
    ood = read_predictions(predict(cohort["run"], cohort["ood"], tmp_path / "ood"))
    assert ood["ood_flag"].astype(bool).mean() >= 0.95  # radiographs and noise
    for kind, ids in (("cxr", ood["sample_id"] < f"v{N_OOD:04d}"),
                      ("noise", ood["sample_id"] >= f"v{N_OOD:04d}")):
        assert ood.loc[ids, "ood_flag"].astype(bool).mean() >= 0.95, kind
    inside = read_predictions(predict(cohort["run"], cohort["store"], tmp_path / "in",
                                      split="test"))
    assert inside["ood_flag"].astype(bool).mean() <= 0.10


@pytest.mark.slow
def test_state_survives_reload_and_export(cohort: dict[str, Path], tmp_path: Path) -> None:
    state = UncertaintyState.from_extra(load_checkpoint(cohort["ckpt"]).info["extra"])
    assert state.intervals["ef"].n == N_VAL and np.isfinite(state.ood.threshold)
    side = read_sidecar(export_checkpoint(cohort["ckpt"], tmp_path / "ef.onnx"))
    exported = UncertaintyState.from_dict(side["uncertainty"])
    assert exported.intervals["ef"].half_width() == state.intervals["ef"].half_width()
    assert exported.ood.threshold == state.ood.threshold
    store = cohort["store"]
    eager = read_predictions(predict(cohort["run"], store, tmp_path / "eager", split="val"))
    onnx = read_predictions(predict(cohort["run"], store, tmp_path / "onnx", split="val",
                                    engine="onnx"))
    np.testing.assert_allclose(onnx["ef_lo"], eager["ef_lo"], atol=1e-3)
    np.testing.assert_allclose(onnx["ood_score"], eager["ood_score"], rtol=1e-4, atol=1e-4)
    away = (eager["ood_score"] - state.ood.threshold).abs() > 1e-3  # not at the threshold
    assert (onnx["ood_flag"] == eager["ood_flag"])[away].all()
    assert read_run(tmp_path / "onnx")["uncertainty"]["ood"] == "mahalanobis"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*SequenceOfUltrasoundRegions")
@pytest.mark.parametrize("source", ["echonet-mini", "echo-dicom"])
def test_real_inputs_get_the_columns(cohort: dict[str, Path], tmp_path: Path,
                                     source: str) -> None:
    if source == "echonet-mini":
        path = sorted((real_path("echonet-mini") / "Videos").glob("*.avi"))[0]
    else:
        path = real_path("echo-dicom", "examples_ybr_color.dcm")
    result = CliRunner().invoke(app, ["predict", str(cohort["ckpt"]), str(path), "--out",
                                      str(tmp_path), "--pipeline", "echonet", "--option",
                                      "coverage=0.8", "--option", "stride=4"])
    assert result.exit_code == 0, result.output
    preds = read_predictions(tmp_path)
    assert len(preds) == 1
    row = preds.iloc[0]
    assert row["ef_lo"] <= row["ef"] <= row["ef_hi"]
    assert np.isfinite(row["ood_score"]) and str(row["ood_flag"]) in ("True", "False")
    assert read_run(tmp_path)["uncertainty"]["coverage"] == 0.8


def test_beat_sd_and_its_flag() -> None:
    beats = pd.DataFrame({"sample_id": ["a", "a", "a", "b", "b", "c"],
                          "ef": [50.0, 60.0, 70.0, 55.0, np.nan, 40.0],
                          "used": [1, 1, 1, 1, 1, 1]})
    sd = beat_sd(beats)
    assert sd["a"] == pytest.approx(10.0) and np.isnan(sd["b"])  # one finite beat: no SD
    table = pd.DataFrame({"sample_id": ["a", "b", "c"], "ef": [60.0, 55.0, 40.0]})
    out = annotate_predictions(table, beats, UncertaintyState())
    assert out["ef_beat_sd_flag"].tolist() == [True, False, False]
    assert np.isnan(out["ef_beat_sd"].iloc[1]) and BEAT_SD_THRESHOLD < 10.0
    strict = annotate_predictions(table, beats, UncertaintyState(), beat_sd_threshold=20.0)
    assert not strict["ef_beat_sd_flag"].any()
    assert {"ef_lo", "ood_flag"}.isdisjoint(out.columns)  # nothing calibrated: no columns
