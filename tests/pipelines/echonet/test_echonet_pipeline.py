"""The echonet Pipeline: predict -> evaluate -> report through the prediction contract, the
generic CLI verbs on echonet outputs, the resumable chain, and (slow) the learning test on the
demo-size synthetic cohort."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_echonet_evaluate import BEATS_OFFSET, TRUE_EF, make_echonet_fixture
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import STORE_FORMAT
from cinelab.errors import InputError
from cinelab.infer.contract import read_predictions, read_run
from cinelab.io.video import write_video
from cinelab.models.registry import create_model
from cinelab.pipelines.registry import Options, get_pipeline, pipeline_for_model
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.synth.echo import synth_echo_cohort
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from cinelab.utils import read_json, write_json

ECHONET = get_pipeline("echonet")
TRAIN_EF = [30.0, 40.0, 50.0, 60.0]  # the predict-the-mean baseline predicts 45
SIZE, CLIP, PERIOD = 32, 8, 2
runner = CliRunner()


def _invoke(*args: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _baseline_mae(truth: np.ndarray, mean: float = float(np.mean(TRAIN_EF))) -> float:
    return float(np.abs(truth - mean).mean())


# -- evaluate over the contract, labels found three ways ---------------------------------------


@pytest.fixture
def evaluated(tmp_path: Path) -> tuple[Path, Path]:
    """A prediction folder (masks = the traced LV, EF = truth + 4) of 12 test videos and a
    store holding them with their tracings, plus 4 training videos; run.json names the
    store and the test split as `predict` records them."""
    pred, labels, tracings, _ = make_echonet_fixture(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    rows = [{"sample_id": s, "path": f"{s}.avi", "split": "test", "EF": ef}
            for s, ef in zip(labels["sample_id"][:-1], labels["EF"][:-1], strict=True)]
    rows += [{"sample_id": f"T{i}", "path": f"T{i}.avi", "split": "train", "EF": ef}
             for i, ef in enumerate(TRAIN_EF)]
    write_manifest(new_manifest(rows), store / "manifest.csv")
    tracings.to_csv(store / "tracings.csv", index=False)
    write_json(store / "store.json", {"format": STORE_FORMAT, "status": "complete"})
    write_json(pred / "run.json", {"pipeline": "echonet", "input": str(store), "split": "test"})
    return pred, store


@pytest.mark.slow
def test_evaluate_finds_the_store_in_run_json(evaluated: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    pred, _ = evaluated
    metrics = ECHONET.evaluate(pred, tmp_path / "eval", Options(extra={"n_boot": 20}))
    assert metrics["n_evaluated"] == len(TRUE_EF)  # the 4 training rows are not evaluated
    assert metrics["dice"] == pytest.approx(1.0)  # masks drawn from the tracings themselves
    assert metrics["dice_ed"] == pytest.approx(1.0) and metrics["dice_es"] == pytest.approx(1.0)
    assert metrics["ef_mae"] == pytest.approx(BEATS_OFFSET)
    assert metrics["ef_bias"] == pytest.approx(BEATS_OFFSET)
    ss_tot = float(((TRUE_EF - TRUE_EF.mean()) ** 2).sum())
    assert metrics["ef_r2"] == pytest.approx(1 - len(TRUE_EF) * BEATS_OFFSET**2 / ss_tot)
    assert metrics["ef_mae_baseline"] == pytest.approx(_baseline_mae(TRUE_EF))
    assert metrics["ef_mae_ratio"] == pytest.approx(BEATS_OFFSET / _baseline_mae(TRUE_EF))
    expected_r2 = 1 - float(((TRUE_EF - 45.0) ** 2).sum()) / ss_tot
    assert metrics["ef_r2_baseline"] == pytest.approx(expected_r2)
    saved = read_json(tmp_path / "eval" / "metrics.json")
    assert saved["pipeline"] == "echonet" and saved["headline"] == metrics
    assert saved["baseline"]["ef"] == pytest.approx(45.0)


@pytest.mark.slow
def test_cli_evaluate_with_a_filelist_then_report(evaluated: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    """`cinelab evaluate PRED --labels FileList.csv` (it used to crash on the label dict)."""
    pred, _ = evaluated
    filelist = tmp_path / "FileList.csv"
    ids = [f"S{i:02d}" for i in range(len(TRUE_EF))]
    pd.DataFrame({"FileName": [f"{s}.avi" for s in ids] + ["T0.avi", "T1.avi"],
                  "EF": [*TRUE_EF, 40.0, 50.0], "Split": ["TEST"] * len(ids) + ["TRAIN"] * 2}
                 ).to_csv(filelist, index=False)
    output = _invoke("evaluate", pred, "--labels", filelist, "--out", tmp_path / "ev",
                     "--option", "n_boot=20")
    assert "ef_mae: 4 " in output or "ef_mae: 4\n" in output
    saved = read_json(tmp_path / "ev" / "metrics.json")
    assert saved["headline"]["ef_mae"] == pytest.approx(BEATS_OFFSET)
    assert saved["headline"]["ef_mae_baseline"] == pytest.approx(_baseline_mae(TRUE_EF))
    assert "dice" not in saved["headline"]  # a label CSV carries no tracings in the mask grid
    assert saved["labels"] == str(filelist)
    _invoke("report", tmp_path / "ev")
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "Headline metrics" in html and "Predict-the-mean baseline" in html
    assert "S00" in html  # the worst cases are listed by id


def test_evaluate_errors_name_the_fix(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    pred, _ = evaluated
    (pred / "run.json").unlink()
    with pytest.raises(InputError, match="--labels FileList.csv"):
        ECHONET.evaluate(pred, tmp_path / "e", Options())
    with pytest.raises(InputError, match="n_boot"):
        ECHONET.evaluate(pred, tmp_path / "e", Options(extra={"nboot": 5}))
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"FileName": ["S00.avi"], "LVEF": [50.0]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match="EF column"):
        ECHONET.evaluate(pred, tmp_path / "e", Options(labels=bad))


# -- predict with checkpoints made here, then evaluate -----------------------------------------


def _save(path: Path, name: str, kwargs: dict, spec: InputSpec) -> Path:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    return save_checkpoint(path, model, {"model": {"name": name, "kwargs": kwargs}}, spec)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("model")
    mean, std = [30.0] * 3, [40.0] * 3
    _save(run / "ef" / "model.pt", "tiny_video", {"in_channels": 3, "channels": [4, 8]},
          InputSpec("video_regression", SIZE, 3, CLIP, PERIOD, mean, std, "EF"))
    _save(run / "seg" / "model.pt", "unet_small",
          {"in_channels": 3, "out_channels": 1, "channels": [4, 8, 16, 32]},
          InputSpec("segmentation", SIZE, 3, None, None, mean, std))
    return run


def _store(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i, (split, ef) in enumerate([("train", 40.0), ("train", 60.0), ("test", 35.0),
                                     ("test", 65.0), ("test", 55.0)]):
        video = root / "videos" / f"v{i}.avi"
        write_video(video, rng.integers(0, 256, (20 + 4 * i, 40, 40, 3), dtype=np.uint8), 30)
        rows.append({"sample_id": f"v{i}", "path": str(video), "modality": "echo",
                     "split": split, "EF": ef})
    assert prepare(new_manifest(rows), root / "store", PrepSpec(size=SIZE), workers=1).usable == 5
    return root / "store"


@pytest.mark.slow
def test_predict_then_evaluate_through_the_contract(model_dir: Path, tmp_path: Path) -> None:
    assert pipeline_for_model(model_dir) is ECHONET  # a folder with ef/ and seg/ model.pt
    assert pipeline_for_model(model_dir / "ef" / "model.pt") is ECHONET  # by its task
    store = _store(tmp_path)
    out = ECHONET.predict(model_dir, store, tmp_path / "pred",
                          Options(split="test", batch_size=4,
                                  extra={"stride": 2, "max_beats": 2, "overlays": True}))
    preds = read_predictions(out)
    assert preds["sample_id"].tolist() == ["v2", "v3", "v4"]
    assert preds["patient_id"].tolist() == preds["sample_id"].tolist()
    assert preds["n_frames"].tolist() == [28, 32, 36]
    assert np.isfinite(preds[["ef", "ef_all_clips", "ef_one_clip"]].to_numpy()).all()
    fell_back = preds["fallback"].isin(["no_beats", "short_video", "no_segmentation",
                                        "beats_past_end"])
    assert (preds.loc[fell_back, "ef"] == preds.loc[fell_back, "ef_all_clips"]).all()
    beats = pd.read_csv(out / "beats.csv", dtype={"sample_id": str})
    by_beat = beats[beats["used"] == 1].groupby("sample_id")["ef"].mean()  # mean over beats
    for row in preds[~fell_back].itertuples():
        assert row.ef == pytest.approx(by_beat[row.sample_id])
    run = read_run(out)
    assert (run["pipeline"], run["split"], run["input"]) == ("echonet", "test", str(store))
    assert run["settings"]["all_clips_stride"] == 2 and run["settings"]["max_beats"] == 2
    for sid in preds["sample_id"]:
        assert (out / "masks" / f"{sid}.npz").is_file()
        assert (out / "overlays" / f"{sid}.avi").stat().st_size > 0
    metrics = ECHONET.evaluate(out, tmp_path / "eval", Options(extra={"n_boot": 10}))
    truth = np.array([35.0, 65.0, 55.0])
    assert metrics["n_evaluated"] == 3
    assert metrics["ef_mae"] == pytest.approx(np.abs(preds["ef"].to_numpy() - truth).mean())
    assert metrics["ef_mae_baseline"] == pytest.approx(_baseline_mae(truth, 50.0))


def test_predict_rejects_unknown_and_bad_options(model_dir: Path, tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(InputError, match="max_beats"):
        ECHONET.predict(model_dir, store, tmp_path / "p", Options(extra={"beats": 3}))
    with pytest.raises(InputError, match="stride"):
        ECHONET.predict(model_dir, store, tmp_path / "p", Options(extra={"stride": 0}))
    with pytest.raises(InputError, match="overlays"):
        ECHONET.predict(model_dir, store, tmp_path / "p", Options(extra={"overlays": "yes"}))


# -- the chain ---------------------------------------------------------------------------------


@pytest.mark.slow  # about 15 s alone, up to a minute on busy shared cores
def test_run_is_resumable_step_by_step(tmp_path: Path) -> None:
    data = synth_echo_cohort(tmp_path / "data", n=8, seed=1, size=48, frames_range=(40, 50))
    options = Options(max_epochs=1, extra={"size": 32, "n_boot": 10, "overlays": False,
                                           "workers": 1})
    out = tmp_path / "run"
    first = ECHONET.run(data, out, options)
    assert first["videos"] == 8 and first["prepared"] == 8
    assert first["tracing_ef_max_abs_diff"] < 1e-6  # the phantom's EF is its traced EF
    test_ids = pd.read_csv(out / "store" / "manifest.csv").query("split == 'test'")["sample_id"]
    assert sorted(read_predictions(out / "predictions")["sample_id"]) == sorted(test_ids)
    assert pipeline_for_model(out) is ECHONET and (out / "report.html").is_file()
    # one epoch on 8 videos: the EF model learned nothing, and every layer says so
    assert first["ef_not_better_than_baseline"] is True and first["ef_collapse_warning"]
    assert "WARNING: " in (out / "report.html").read_text()
    notes = read_json(out / "ef" / "metrics.json")["notes"]
    assert notes[0].startswith("small cohort: ") and "give 1 optimiser step(s)" in notes[0]
    frame_rate = read_run(out / "predictions")["frame_rate"]
    assert frame_rate["source"] == "checkpoint" and frame_rate["target_fps"] > 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")
              if p.is_file() and p != out / "metrics.json"}  # the summary is rewritten
    started = time.perf_counter()
    assert ECHONET.run(data, out, options) == first
    assert time.perf_counter() - started < 5.0  # nothing retrained or repredicted
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    (out / "evaluation" / "done.json").unlink()  # as if killed while evaluating
    assert ECHONET.run(data, out, options)["ef_mae"] == pytest.approx(first["ef_mae"])
    assert (out / "predictions" / "run.json").stat().st_mtime_ns == \
        stamps[out / "predictions" / "run.json"]
    assert (out / "ef" / "model.pt").stat().st_mtime_ns == stamps[out / "ef" / "model.pt"]
    assert (out / "evaluation" / "metrics.json").stat().st_mtime_ns > \
        stamps[out / "evaluation" / "metrics.json"]


@pytest.mark.slow
def test_demo_learns_ef_and_lv_segmentation(tmp_path: Path) -> None:
    """The demo-size synthetic cohort: LV Dice >= 0.85, EF MAE <= 6 and below 0.7x the
    predict-the-mean MAE (about 2 min on 2 quiet cores)."""
    options = ECHONET.demo_options
    data = ECHONET.synth(tmp_path / "data", int(options.n or 0), options.seed)
    metrics = ECHONET.run(data, tmp_path, options)
    assert metrics["dice"] >= 0.85
    assert metrics["ef_mae"] <= 6.0
    assert metrics["ef_mae"] < 0.7 * metrics["ef_mae_baseline"]
    assert all(target.met(metrics) for target in ECHONET.targets)
    # a model that learned: better than the predict-the-mean baseline beyond its CI
    assert metrics["ef_not_better_than_baseline"] is False
    assert metrics["ef_collapse_warning"] is None and metrics["ef_mae_gain_ci_low"] > 0


def test_synth_keeps_a_complete_cohort(tmp_path: Path) -> None:
    root = ECHONET.synth(tmp_path / "data", 3, 0)
    filelist = pd.read_csv(root / "FileList.csv")
    assert len(filelist) == 3 and len(list((root / "Videos").glob("*.avi"))) == 3
    stamp = (root / "FileList.csv").stat().st_mtime_ns
    assert ECHONET.synth(root, 3, 0) == root
    assert (root / "FileList.csv").stat().st_mtime_ns == stamp  # kept, not redrawn
    ECHONET.synth(root, 3, 1)
    assert not pd.read_csv(root / "FileList.csv")["EF"].equals(filelist["EF"])  # new seed
