"""Prediction: EF one clip / all clips / beat by beat, outputs, memory, inputs, resume."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cinelab.data.manifest import new_manifest
from cinelab.data.sampling import all_clip_starts, clip_indices
from cinelab.errors import InputError
from cinelab.infer.contract import read_run
from cinelab.io.video import write_video
from cinelab.models.registry import create_model
from cinelab.pipelines.echonet.predict import PROBLEM_COLUMNS, predict
from cinelab.pipelines.echonet.segment import logits_to_mask, lv_area, segment_video
from cinelab.pipelines.echonet.sources import list_items, load_item, resolve_checkpoints
from cinelab.pipelines.echonet.tables import BEAT_COLUMNS, FRAME_COLUMNS, PREDICTION_COLUMNS
from cinelab.pipelines.echonet.video import predict_ef_clips, predict_video
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.synth.dicom import write_ultrasound_dicom
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint
from cinelab.utils import file_hash

SIZE, CLIP, PERIOD = 32, 8, 2
SPAN = (CLIP - 1) * PERIOD + 1
MEAN, STD = [30.0] * 3, [40.0] * 3
EF_KW = {"in_channels": 3, "channels": [4, 8]}
SEG_KW = {"in_channels": 3, "out_channels": 1, "channels": [4, 8, 16, 32]}


def _ef_spec(size: int = SIZE) -> InputSpec:
    return InputSpec("video", size, 3, CLIP, PERIOD, MEAN, STD, "EF")


def _seg_spec(size: int = SIZE) -> InputSpec:
    return InputSpec("segmentation", size, 3, None, None, MEAN, STD)


def _save(path: Path, name: str, kwargs: dict, spec: InputSpec) -> Path:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    return save_checkpoint(path, model, {"model": {"name": name, "kwargs": kwargs}}, spec)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {"ef": _save(root / "run" / "ef" / "model.pt", "tiny_video", EF_KW, _ef_spec()),
            "seg": _save(root / "run" / "seg" / "model.pt", "unet_small", SEG_KW, _seg_spec()),
            "run": root / "run"}


def _noise(seed: int, frames: int, height: int = 40, width: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.avi", _noise(1, 24), 30)
    write_video(root / "nested" / "deeper" / "b.avi", _noise(2, 36), 25)
    (root / "nested" / "broken.avi").write_bytes(b"not a video" * 20)
    pd.DataFrame({"FileName": ["a.avi", "b.avi"], "EF": [55.0, 40.0]}).to_csv(
        root.parent / "labels.csv", index=False)
    return root


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, dtype={"sample_id": str})


@pytest.mark.slow
def test_outputs_complete(ckpts: dict[str, Path], folder: Path, tmp_path: Path) -> None:
    out = predict(ckpts["ef"], folder, tmp_path, seg_checkpoint=ckpts["seg"], batch_size=4,
                  overlays=True, labels=folder.parent / "labels.csv")
    preds = _read(out, "predictions.csv")
    assert list(preds.columns) == ["sample_id", "patient_id", *PREDICTION_COLUMNS[1:],
                                   "ef_beat_sd", "ef_beat_sd_flag"]
    assert sorted(preds["sample_id"]) == ["a", "b"]
    assert np.isfinite(preds[["ef_one_clip", "ef_all_clips", "ef"]].to_numpy()).all()
    assert dict(zip(preds["sample_id"], preds["n_frames"], strict=True)) == {"a": 24, "b": 36}
    run = read_run(out)
    assert run["pipeline"] == "echonet" and run["task"] == "video"
    assert run["labels"] == str((folder.parent / "labels.csv").resolve())
    assert run["checkpoint_hash"] == file_hash(ckpts["ef"])
    assert run["checkpoints"]["seg"] == str(ckpts["seg"].resolve())
    beats, frames = _read(out, "beats.csv"), _read(out, "frames.csv")
    assert list(beats.columns) == BEAT_COLUMNS and list(frames.columns) == FRAME_COLUMNS
    assert beats.groupby("sample_id").size().reindex(["a", "b"], fill_value=0).tolist() == \
        preds.set_index("sample_id").loc[["a", "b"], "n_beats"].tolist()
    assert frames.groupby("sample_id").size().to_dict() == {"a": 24, "b": 36}
    for sid, n in (("a", 24), ("b", 36)):
        with np.load(out / "masks" / f"{sid}.npz") as data:
            assert data["mask"].shape == (n, SIZE, SIZE) and data["mask"].dtype == np.uint8
            area = frames.loc[frames["sample_id"] == sid, "lv_area"].to_numpy()
            np.testing.assert_array_equal(lv_area(data["mask"]), area)
        assert (out / "overlays" / f"{sid}.avi").stat().st_size > 0
    problems = pd.read_csv(out / "problems.csv")
    assert list(problems.columns) == PROBLEM_COLUMNS
    assert problems["file"].str.endswith("broken.avi").tolist() == [True]
    assert problems["stage"].tolist() == ["load"]


def _manual_clip_ef(model: nn.Module, frames: np.ndarray, start: int) -> float:
    idx = clip_indices(start, CLIP, PERIOD, len(frames))
    x = (torch.from_numpy(frames[idx]).float() - torch.tensor(MEAN)) / torch.tensor(STD)
    with torch.no_grad():
        return float(model(x.permute(3, 0, 1, 2)[None])[0, 0])


def test_all_clips_is_mean_of_single_clips(ckpts: dict[str, Path]) -> None:
    model = load_checkpoint(ckpts["ef"]).model
    frames = _noise(3, 30, SIZE, SIZE)
    pred = predict_video(model, None, frames, 30.0, _ef_spec(), None, batch_size=4)
    singles = [_manual_clip_ef(model, frames, s) for s in range(30 - SPAN + 1)]
    np.testing.assert_array_equal(pred.clip_starts, np.arange(30 - SPAN + 1))
    np.testing.assert_allclose(pred.clip_ef, singles, rtol=1e-5, atol=1e-6)
    assert pred.ef_all_clips == pytest.approx(np.mean(singles), rel=1e-5)
    assert pred.ef_one_clip == pytest.approx(singles[0], rel=1e-5)
    assert pred.fallback == "no_segmentation" and pred.ef_beats == pred.ef_all_clips
    assert pred.summary()["ef"] == pred.ef_all_clips  # the headline falls back to all clips
    assert pred.masks is None and pred.n_beats == 0


class _BatchSpy(nn.Module):
    """Wraps a model and records the largest batch it was given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.largest = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, x.shape[0])
        return self.model(x)


@pytest.mark.slow
def test_all_clips_memory_is_bounded(ckpts: dict[str, Path], tmp_path: Path) -> None:
    n = 400
    video = np.lib.format.open_memmap(tmp_path / "long.npy", mode="w+", dtype=np.uint8,
                                      shape=(n, SIZE, SIZE, 3))
    video[:] = _noise(4, n, SIZE, SIZE)
    video.flush()
    video = np.load(tmp_path / "long.npy", mmap_mode="r")
    starts = all_clip_starts(n, CLIP, PERIOD)
    all_clips_bytes = len(starts) * 3 * CLIP * SIZE * SIZE * 4  # float32, all stacked
    spy = _BatchSpy(load_checkpoint(ckpts["ef"]).model)
    tracemalloc.start()
    try:
        ef = predict_ef_clips(spy, video, _ef_spec(), starts, batch_size=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ef.shape == (len(starts),) and np.isfinite(ef).all()
    assert peak < all_clips_bytes / 16  # stacking all clips even as uint8 would be 1/4
    assert spy.largest == 4


# -- beat by beat with a known LV area curve -------------------------------------------------

N_BEAT_FRAMES = 90
ED_KNOTS = [8, 27, 44, 56, 70, 88]
ES_KNOTS = [20, 33, 52, 61, 78]  # irregular RR: 13, 19, 9, 17 frames
ED_AREAS = [800, 760, 850, 700, 820, 790]
ES_AREAS = [400, 450, 380, 420, 430]


def _known_curve() -> np.ndarray:
    knots = [0] + sorted(ED_KNOTS + ES_KNOTS) + [N_BEAT_FRAMES - 1]
    values = dict(zip(ED_KNOTS + ES_KNOTS, ED_AREAS + ES_AREAS, strict=True))
    values.update({0: 450, N_BEAT_FRAMES - 1: 780})
    return np.rint(np.interp(np.arange(N_BEAT_FRAMES), knots,
                             [values[k] for k in knots])).astype(int)


class _FakeSeg(nn.Module):
    """Reads the frame index from pixel (0, 0) and returns a mask of area curve[index]."""

    def __init__(self, curve: np.ndarray) -> None:
        super().__init__()
        self.curve = torch.as_tensor(curve)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x[:, 0, 0, 0].round().long()
        flat = torch.arange(x.shape[-2] * x.shape[-1])[None] < self.curve[index][:, None]
        return (flat.float() * 20 - 10).reshape(x.shape[0], 1, *x.shape[-2:])


class _LastFrameIndex(nn.Module):
    """An "EF model" that outputs the frame index of the clip's last frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, -1, 0, 0][:, None]


def _indexed_video() -> np.ndarray:
    frames = np.zeros((N_BEAT_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    frames[:, 0, 0, :] = np.arange(N_BEAT_FRAMES)[:, None]
    return frames


def _identity_spec(task: str, clip: int | None) -> InputSpec:
    return InputSpec(task, SIZE, 3, clip, PERIOD if clip else None, [0.0] * 3, [1.0] * 3)


@pytest.mark.parametrize("max_beats,chosen", [(5, ES_KNOTS), (3, ES_KNOTS[::2])])
def test_beats_follow_an_irregular_area_curve(max_beats: int, chosen: list[int]) -> None:
    curve = _known_curve()
    pred = predict_video(_LastFrameIndex(), _FakeSeg(curve), _indexed_video(), 30.0,
                         _identity_spec("video", CLIP), _identity_spec("segmentation", None),
                         batch_size=7, max_beats=max_beats)
    np.testing.assert_array_equal(pred.area, curve)
    np.testing.assert_array_equal(pred.es, ES_KNOTS)
    assert set(ED_KNOTS[:-1]) <= set(pred.ed.tolist())
    beats = pd.DataFrame(pred.beats)
    assert beats["es_frame"].tolist() == chosen and pred.fallback == ""
    assert beats["ed_frame"].tolist() == [ED_KNOTS[ES_KNOTS.index(e)] for e in chosen]
    assert beats["es_area"].tolist() == curve[chosen].tolist()
    # EchoNet-Dynamic: the clip starts CLIP * PERIOD // 2 = 8 frames before ES (centred on
    # it); the fake EF model returns the clip's last frame, start + SPAN - 1 = ES + 6
    assert beats["clip_start"].tolist() == [e - 8 for e in chosen]
    assert beats["ef"].tolist() == [e + 6 for e in chosen]
    assert beats["flag"].tolist() == [""] * len(chosen) and beats["used"].tolist() == [1] * len(
        chosen)
    assert pred.ef_beats == pytest.approx(np.mean(chosen) + 6)
    assert pred.ef_all_clips == pytest.approx(np.mean(np.arange(N_BEAT_FRAMES - SPAN + 1)
                                                      + SPAN - 1))
    table = pred.frames_table("x")
    assert table["is_es"].sum() == len(ES_KNOTS) and len(table) == N_BEAT_FRAMES


def test_beats_with_strided_all_clips_and_fallbacks() -> None:
    curve = _known_curve()
    seg, ef = _identity_spec("segmentation", None), _identity_spec("video", CLIP)
    pred = predict_video(_LastFrameIndex(), _FakeSeg(curve), _indexed_video(), 30.0, ef, seg,
                         all_clips_stride=7)
    assert pd.DataFrame(pred.beats)["ef"].tolist() == [e + 6 for e in ES_KNOTS]
    flat = predict_video(_LastFrameIndex(), _FakeSeg(np.full(N_BEAT_FRAMES, 300)),
                         _indexed_video(), 30.0, ef, seg)
    assert flat.fallback == "no_beats" and flat.ef_beats == flat.ef_all_clips
    short = predict_video(_LastFrameIndex(), _FakeSeg(curve), _indexed_video()[:SPAN - 3],
                          30.0, ef, seg)
    assert short.fallback == "short_video" and short.n_beats == 0
    assert short.ef_one_clip == short.ef_all_clips


def test_segmentation_masks(ckpts: dict[str, Path]) -> None:
    logits = torch.tensor([[[[0.1, 2.0]], [[0.5, 1.0]], [[0.0, 3.0]]]])  # (1, 3, 1, 2)
    assert logits_to_mask(logits, lv_class=1).tolist() == [[[1, 0]]]
    assert logits_to_mask(logits, lv_class=2).tolist() == [[[0, 1]]]
    assert logits_to_mask(logits[:, :1]).tolist() == [[[1, 1]]]
    seg = load_checkpoint(ckpts["seg"])
    masks = segment_video(seg.model, _noise(5, 5, SIZE, SIZE), seg.input_spec, batch_size=2)
    assert masks.shape == (5, SIZE, SIZE) and set(np.unique(masks)) <= {0, 1}
    with pytest.raises(ValueError, match="input spec"):
        segment_video(seg.model, _noise(5, 5, 40, 40), seg.input_spec)


# -- inputs, checkpoints, resume -------------------------------------------------------------


def _store(root: Path, folder: Path, size: int) -> Path:
    rows = [{"sample_id": "a", "path": str(folder / "a.avi"), "modality": "echo", "EF": 61.5},
            {"sample_id": "b", "path": str(folder / "nested" / "deeper" / "b.avi"),
             "modality": "echo", "EF": 33.0}]
    summary = prepare(new_manifest(rows), root, PrepSpec(size=size), workers=1)
    assert summary.usable == 2
    return root


@pytest.mark.slow
def test_input_kinds(ckpts: dict[str, Path], folder: Path, tmp_path: Path) -> None:
    for size in (SIZE, 40):  # same size: memory maps as they are; else resized on the fly
        store = _store(tmp_path / f"store{size}", folder, size)
        item = list_items(store)[0]
        sample = load_item(item, SIZE, 3)
        assert sample.frames.shape == (24, SIZE, SIZE, 3) and sample.fps == 30.0
        assert isinstance(sample.frames, np.memmap) == (size == SIZE)
        out = predict(ckpts["run"], store, tmp_path / f"out{size}", batch_size=8)
        preds = _read(out, "predictions.csv")
        assert preds["sample_id"].tolist() == ["a", "b"]
        assert read_run(out)["input"] == str(store.resolve())
    out = predict(ckpts["ef"], folder / "a.avi", tmp_path / "avi")
    assert _read(out, "predictions.csv")["sample_id"].tolist() == ["a"]
    dcm = write_ultrasound_dicom(tmp_path / "echo.dcm", _noise(6, 20, 60, 80), 25.0, "P1",
                                 pixel_spacing_mm=(0.3, 0.3), region=(5, 10, 55, 70))
    out = predict(ckpts["ef"], dcm, tmp_path / "dcm", seg_checkpoint=ckpts["seg"])
    preds = _read(out, "predictions.csv")
    assert preds[["sample_id", "n_frames", "fps"]].values.tolist() == [["echo", 20, 25.0]]
    assert np.isfinite(preds["ef_all_clips"]).all()


def test_checkpoint_resolution(ckpts: dict[str, Path], folder: Path, tmp_path: Path) -> None:
    assert resolve_checkpoints(ckpts["run"]) == (ckpts["ef"], ckpts["seg"])
    assert resolve_checkpoints(ckpts["seg"].parent) == (None, ckpts["seg"])
    assert resolve_checkpoints(ckpts["ef"]) == (ckpts["ef"], None)
    out = predict(ckpts["seg"], folder / "a.avi", tmp_path / "seg_only")  # seg-only
    preds = _read(out, "predictions.csv")
    assert preds["ef_all_clips"].isna().all() and preds["fallback"].tolist() == ["no_ef_model"]
    assert len(_read(out, "frames.csv")) == 24 and (out / "masks" / "a.npz").is_file()
    with pytest.raises(InputError, match="task"):
        predict(ckpts["seg"], folder, tmp_path / "swapped", seg_checkpoint=ckpts["ef"])
    with pytest.raises(InputError, match="nothing at that path"):
        predict(ckpts["ef"], tmp_path / "missing.avi", tmp_path / "none")
    with pytest.raises(InputError, match="folder without any"):
        predict(tmp_path, folder, tmp_path / "none")


@pytest.mark.slow
def test_resume_skips_done_samples(ckpts: dict[str, Path], folder: Path, tmp_path: Path) -> None:
    statuses: dict[str, str] = {}

    def run(**kw: object) -> pd.DataFrame:
        statuses.clear()
        predict(ckpts["run"], folder, tmp_path, batch_size=8,
                progress=lambda sid, status: statuses.__setitem__(sid, status), **kw)
        return _read(tmp_path, "predictions.csv")

    first = run()
    assert statuses == {"a": "done", "b": "done", "broken": "failed"}
    (tmp_path / "parts" / "b.json").unlink()
    second = run()
    assert statuses == {"a": "skipped", "b": "done", "broken": "failed"}
    pd.testing.assert_frame_equal(first, second)
    assert len(pd.read_csv(tmp_path / "problems.csv")) == 1
    run(max_beats=2)  # other settings: everything is predicted again
    assert statuses == {"a": "done", "b": "done", "broken": "failed"}


@pytest.mark.slow
def test_folder_lists_dicoms_and_rejects_bad_settings(
        ckpts: dict[str, Path], folder: Path, tmp_path: Path) -> None:
    write_video(tmp_path / "x.avi", _noise(7, 5), 30)
    write_video(tmp_path / "sub" / "x.avi", _noise(8, 5), 30)
    write_ultrasound_dicom(tmp_path / "sub" / "IM0001", _noise(9, 4, 30, 30), 20.0, "P2")
    items = {i.sample_id: i.kind for i in list_items(tmp_path)}
    assert items == {"x": "video", "sub__x": "video", "IM0001": "dicom"}
    predict(ckpts["run"], tmp_path, tmp_path / "pred", overlays=True)  # output inside input
    out = predict(ckpts["run"], tmp_path, tmp_path / "pred", overlays=True)
    assert sorted(_read(out, "predictions.csv")["sample_id"]) == ["IM0001", "sub__x", "x"]
    with pytest.raises(InputError, match="all_clips_stride"):
        predict(ckpts["ef"], folder, tmp_path / "out", all_clips_stride=0)


@pytest.mark.slow
def test_overlays_requested_later_are_made(ckpts: dict[str, Path], folder: Path,
                                          tmp_path: Path) -> None:
    statuses: list[str] = []
    for overlays in (False, True):
        statuses.clear()
        predict(ckpts["run"], folder / "a.avi", tmp_path, overlays=overlays,
                progress=lambda sid, status: statuses.append(status))
        assert statuses == ["done"]
    assert (tmp_path / "overlays" / "a.avi").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(ckpts: dict[str, Path]) -> None:
    ef, seg = load_checkpoint(ckpts["ef"]), load_checkpoint(ckpts["seg"])
    frames = _noise(10, 40, SIZE, SIZE)
    cpu = predict_video(ef.model, seg.model, frames, 30.0, ef.input_spec, seg.input_spec)
    gpu = predict_video(ef.model, seg.model, frames, 30.0, ef.input_spec, seg.input_spec,
                        device="cuda")
    np.testing.assert_allclose(gpu.clip_ef, cpu.clip_ef, rtol=1e-3, atol=1e-4)
    assert (gpu.masks != cpu.masks).mean() < 0.01
