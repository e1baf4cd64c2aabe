"""Datasets over a prepared store (uint8 items, lazy stores, seeded clips) and transforms."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from cinelab.data.datasets import (
    ClipDataset,
    TracedFrameDataset,
    labelled_ids,
    train_val_ids,
)
from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.sampling import clip_indices
from cinelab.data.store import (
    STORE_FORMAT,
    PreparedStore,
    channel_stats,
    combine_stats,
    write_sample,
)
from cinelab.data.transforms import Normalize, RandomTranslate, Translate
from cinelab.errors import InputError
from cinelab.measure.ef import tracing_mask
from cinelab.utils import write_json

SIZE, FRAMES = 32, 16
TRACED = (0, 4)  # ED (largest LV) and ES frames of the tiny videos


def lv_lines(cy: float, cx: float, r: float, n: int = 8) -> np.ndarray:
    """EchoNet-style lines of a disc of radius r: vertical long axis + horizontal chords."""
    ys = np.linspace(cy - r, cy + r, n + 2)[1:-1]
    half = np.sqrt(np.maximum(r**2 - (ys - cy) ** 2, 0))
    return np.vstack([[cx, cy - r, cx, cy + r], np.stack([cx - half, ys, cx + half, ys], 1)])


def make_store(root: Path, n: int = 3, splits: list[str] | None = None, masks: bool = False,
               tracings: bool = True, frames: int = FRAMES) -> Path:
    """A tiny prepared store: n videos whose bright disc (the 'LV') beats."""
    rng = np.random.default_rng(0)
    rows, stats, lines = [], [], []
    splits = splits or ["train"] * (n - 1) + ["val"]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = 6 + 3 * np.cos(np.linspace(0, 4 * np.pi, frames))
    for i in range(n):
        sid = f"v{i}"
        video = rng.integers(0, 60, (frames, SIZE, SIZE, 3), dtype=np.uint8)
        video[:, 0, 0, :] = np.arange(frames)[:, None]  # frame number, to check indices
        lv = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < radius[:, None, None] ** 2
        video[lv] = 200
        meta = write_sample(root, sid, video, {"fps": 50.0, "stats": channel_stats(video)},
                            lv.astype(np.uint8) if masks else None)
        stats.append(meta["stats"])
        rows.append({"sample_id": sid, "path": f"{sid}.avi", "split": splits[i],
                     "EF": 40.0 + 10 * i, "patient_id": f"p{i}"})
        for f in (t for t in TRACED if t < frames):
            lines += [{"sample_id": sid, "frame": f, "X1": a, "Y1": b, "X2": c, "Y2": d}
                      for a, b, c, d in lv_lines(SIZE / 2, SIZE / 2, radius[f])]
    manifest = new_manifest(rows)
    manifest["frames"] = frames
    write_manifest(manifest, root / "manifest.csv")
    if tracings:
        pd.DataFrame(lines).to_csv(root / "tracings.csv", index=False)
    mean, std = combine_stats(stats)
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "spec": {"size": SIZE}, "mean": mean, "std": std})
    return root


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "store")


# -- ClipDataset -------------------------------------------------------------------------------


def test_clip_dataset_items_are_uint8_clips_and_targets(store: Path) -> None:
    ds = ClipDataset(store, ["v0", "v2"], frames=4, period=2, seed=3)
    clip, target = ds[1]
    assert clip.dtype == torch.uint8 and clip.shape == (3, 4, SIZE, SIZE)
    assert target.dtype == torch.float32 and float(target) == 60.0
    start = ds.clip_start("v2", FRAMES)
    expected = clip_indices(start, 4, 2, FRAMES)
    assert clip[0, :, 0, 0].tolist() == expected.tolist()  # pixel (0, 0) holds the frame number
    frames = PreparedStore(store).frames("v2")
    assert torch.equal(clip.permute(1, 2, 3, 0), torch.from_numpy(frames[expected]))


def test_clip_starts_are_seeded_per_sample_and_epoch(store: Path) -> None:
    a = ClipDataset(store, ["v0", "v1", "v2"], frames=2, period=1, seed=5)
    b = ClipDataset(store, ["v2", "v1", "v0"], frames=2, period=1, seed=5)
    starts = {}
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for sid in a.ids:
            assert a.clip_start(sid, FRAMES) == b.clip_start(sid, FRAMES)  # order-free
            starts[epoch, sid] = a.clip_start(sid, FRAMES)
    assert len(set(starts.values())) > 3  # new clips each epoch and sample
    other = ClipDataset(store, ["v0", "v1", "v2"], frames=2, period=1, seed=6)
    other_starts = {}
    for epoch in range(4):
        other.set_epoch(epoch)
        other_starts.update({(epoch, s): other.clip_start(s, FRAMES) for s in other.ids})
    assert other_starts != starts
    fixed = ClipDataset(store, ["v0"], frames=4, period=2, random_clip=False)
    assert fixed.clip_start("v0", FRAMES) == 4  # middle of starts 0..9


def test_clip_dataset_same_items_with_workers(store: Path) -> None:
    ds = ClipDataset(store, ["v0", "v1", "v2"], frames=4, period=3, seed=1)
    ds.set_epoch(2)
    assert ds._store is not None and pickle.loads(pickle.dumps(ds))._store is None
    assert len(pickle.dumps(ds)) < 10_000  # ids and labels only, no frames or tables
    serial = [c for c, _ in DataLoader(ds, batch_size=1, num_workers=0)]
    parallel = [c for c, _ in DataLoader(ds, batch_size=1, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(serial, parallel, strict=True))


def test_short_videos_are_padded_by_looping(store: Path) -> None:
    clip, _ = ClipDataset(store, ["v0"], frames=6, period=4)[0]  # 21 frames needed, 16 there
    assert clip[0, :, 0, 0].tolist() == [0, 4, 8, 12, 0, 4]


def test_clip_dataset_label_and_id_errors(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s")
    manifest = pd.read_csv(root / "manifest.csv", dtype={"sample_id": str})
    manifest.loc[1, "EF"] = np.nan
    manifest.to_csv(root / "manifest.csv", index=False)
    store = PreparedStore(root)
    assert labelled_ids(store, ["v0", "v1", "v2"], "EF") == ["v0", "v2"]
    with pytest.raises(InputError, match="EF"):
        ClipDataset(root, ["v0", "v1"], frames=2, period=1)
    with pytest.raises(InputError, match="ESV"):
        ClipDataset(root, ["v0"], frames=2, period=1, target="ESV")
    with pytest.raises(InputError, match="unknown id"):
        ClipDataset(root, ["v0", "nope"], frames=2, period=1)
    with pytest.raises(InputError, match="at least one"):
        ClipDataset(root, [], frames=2, period=1)


# -- TracedFrameDataset ------------------------------------------------------------------------


def test_traced_frames_from_tracings(store: Path) -> None:
    ds = TracedFrameDataset(store, ["v0", "v1"])
    assert len(ds) == 4
    assert [(i.sample_id, i.frame, i.phase) for i in ds.items] == [
        ("v0", 0, "ED"), ("v0", 4, "ES"), ("v1", 0, "ED"), ("v1", 4, "ES")]
    frame, mask = ds[1]
    assert frame.dtype == torch.uint8 and frame.shape == (3, SIZE, SIZE)
    assert mask.dtype == torch.uint8 and mask.shape == (1, SIZE, SIZE)
    expected = tracing_mask(ds.items[1].lines, (SIZE, SIZE))
    assert np.array_equal(mask[0].numpy().astype(bool), expected)
    assert frame[0][mask[0] > 0].float().mean() > 150  # the mask covers the bright LV
    assert int(ds[0][1].sum()) > int(mask.sum())  # ED cavity larger than ES


def test_traced_frames_skip_frames_outside_the_video(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s")
    tracings = pd.read_csv(root / "tracings.csv", dtype={"sample_id": str})
    tracings.loc[tracings["sample_id"] == "v1", "frame"] = 99
    tracings.to_csv(root / "tracings.csv", index=False)
    ds = TracedFrameDataset(root, ["v0", "v1", "v2"])
    assert {i.sample_id for i in ds.items} == {"v0", "v2"}
    assert ds.skipped and ds.skipped[0][0] == "v1"


def test_traced_frames_from_masks_at_largest_and_smallest_area(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s", masks=True, tracings=False)
    ds = TracedFrameDataset(root, ["v0"])
    masks = PreparedStore(root).mask("v0")
    areas = masks.reshape(FRAMES, -1).sum(1)
    assert [(i.frame, i.phase) for i in ds.items] == [(int(np.argmax(areas)), "ED"),
                                                      (int(np.argmin(areas)), "ES")]
    assert np.array_equal(ds[0][1][0].numpy(), masks[ds.items[0].frame])


def test_traced_frames_fall_back_to_masks_per_sample(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s", masks=True)
    tracings = pd.read_csv(root / "tracings.csv", dtype={"sample_id": str})
    tracings[tracings["sample_id"] != "v1"].to_csv(root / "tracings.csv", index=False)
    ds = TracedFrameDataset(root, ["v0", "v1"])
    assert [(i.sample_id, i.lines is None) for i in ds.items] == [
        ("v0", False), ("v0", False), ("v1", True), ("v1", True)]
    assert not ds.skipped


def test_traced_frames_need_tracings_or_masks(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s", tracings=False)
    with pytest.raises(InputError, match="tracings"):
        TracedFrameDataset(root, ["v0"])


# -- splits ------------------------------------------------------------------------------------


def test_train_val_ids_from_split_column(store: Path) -> None:
    assert train_val_ids(PreparedStore(store)) == (["v0", "v1"], ["v2"])


def test_train_val_ids_hold_out_patients_when_no_val(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s", n=12, splits=["train"] * 12, frames=2)
    manifest = pd.read_csv(root / "manifest.csv", dtype={"sample_id": str, "patient_id": str})
    manifest["patient_id"] = [f"p{i // 2}" for i in range(12)]  # two videos per patient
    manifest.to_csv(root / "manifest.csv", index=False)
    store = PreparedStore(root)
    train, val = train_val_ids(store, seed=1)
    assert len(val) == 2 and not set(train) & set(val)
    patient = dict(zip(manifest["sample_id"], manifest["patient_id"], strict=True))
    assert len({patient[v] for v in val}) == 1  # one whole patient (10 % of 6, at least 1)
    assert train_val_ids(store, seed=1) == (train, val)


# -- transforms --------------------------------------------------------------------------------


def test_translate_moves_each_sample_and_inverts() -> None:
    x = torch.zeros(2, 1, 3, 8, 8)
    x[..., 4, 4] = 1.0
    shift = Translate([1, -2], [0, 3], fill=-5.0)
    out = shift(x)
    assert out.shape == x.shape
    assert out[0, 0, :, 5, 4].eq(1).all() and out[1, 0, :, 2, 7].eq(1).all()
    assert out[0, 0, 0, 0].eq(-5).all()  # uncovered row filled
    back = shift.inverse()(out)
    assert torch.equal(back[..., 2:6, 3:5], x[..., 2:6, 3:5])


def test_random_translate_draws_within_pad_and_shares_the_draw() -> None:
    rt = RandomTranslate(2)
    gen = torch.Generator().manual_seed(0)
    twin = rt.draw(64, gen)
    assert twin.dy.abs().max() <= 2 and twin.dx.abs().max() <= 2
    assert len(set(twin.dy.tolist())) == 5  # -2..2 all drawn
    image = torch.arange(64 * 36, dtype=torch.float32).reshape(64, 1, 6, 6)
    mask = (image > 1000).to(torch.uint8)
    assert torch.equal(twin(mask, fill=0), (twin(image, fill=0) > 1000).to(torch.uint8))
    assert torch.equal(RandomTranslate(0)(image), image)
    with pytest.raises(ValueError, match="pad"):
        RandomTranslate(-1)


def test_normalize_per_channel_and_inverse() -> None:
    x = torch.tensor([[[[10, 20]], [[30, 40]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    norm = Normalize([10.0, 20.0], [2.0, 5.0])
    out = norm(x)
    assert out.dtype == torch.float32
    assert out.flatten().tolist() == [0.0, 5.0, 2.0, 4.0]
    assert torch.allclose(norm.inverse(out), x.float())
    with pytest.raises(ValueError, match="std"):
        Normalize([0.0], [0.0])
    with pytest.raises(ValueError, match="channels"):
        Normalize([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])(x)
