"""Guided backpropagation on both streams: attribution shapes, per-stream maps, AVI + PNG
outputs named by sample id, most-confident selection."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.data.store import PreparedStore
from cinelab.data.streams import stream_normalisation
from cinelab.explain.guided import (
    DISPLAY_MIN_SIDE,
    explain_videos,
    guided_backprop,
    most_confident,
    stream_saliency,
)
from cinelab.io.video import read_video
from cinelab.models import create_model
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.train.checkpoint import InputSpec, save_checkpoint

SIZE, CLIP = 32, 6
KWARGS = {"backbone": "tiny_video", "backbone_kwargs": {"channels": [4, 8]}}


def test_guided_backprop_splits_into_stream_maps() -> None:
    torch.manual_seed(0)
    model = create_model("two_stream", **KWARGS)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    attr = guided_backprop(model, torch.randn(3, 4, 16, 16))
    assert attr.shape == (3, 4, 16, 16) and np.isfinite(attr).all()
    assert all(m.inplace for m in relus)  # the caller's model is left as it was
    maps = stream_saliency(attr, ("grey", "flow"), ("grey", "flow"))
    assert set(maps) == {"grey", "flow"} and maps["flow"].shape == (4, 16, 16)
    np.testing.assert_allclose(maps["flow"], np.sqrt(attr[1] ** 2 + attr[2] ** 2), rtol=1e-6)
    flow_only = create_model("two_stream", streams=["flow"], **KWARGS)
    attr = guided_backprop(flow_only, torch.randn(1, 3, 4, 16, 16))
    assert not attr[0].any() and attr[1:].any()  # the grey channel does not matter
    assert set(stream_saliency(attr, ("grey", "flow"), ("flow",))) == {"flow"}


def test_most_confident_ranks_by_distance_from_half() -> None:
    table = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "prob": [0.55, 0.02, 0.9, 0.4]})
    assert most_confident(table, 2) == ["b", "c"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rvf_guided")
    raw = synth_rvf_cohort(base / "raw", n=4, seed=6, size=48, frames=10)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", base / "ingest")
    prepare_rvf(base / "ingest", base / "store", size=SIZE, workers=1)
    store = PreparedStore(base / "store")
    torch.manual_seed(0)
    model = create_model("two_stream", **KWARGS)
    mean, std = stream_normalisation(store, store.ids, ("grey", "flow"), ("grey", "flow"))
    spec = InputSpec(task="video_classification", size=SIZE, channels=3, frames=CLIP,
                     period=1, mean=mean, std=std, target="label")
    save_checkpoint(base / "model.pt", model, {"model": {"name": "two_stream",
                                                         "kwargs": KWARGS}}, spec)
    return {"store": base / "store", "checkpoint": base / "model.pt", "base": base}


def test_saliency_videos_and_strips_for_chosen_and_confident_videos(setup: dict[str, Path]
                                                                    ) -> None:
    store = PreparedStore(setup["store"])
    out = setup["base"] / "saliency"
    chosen = store.ids[:1]
    index = explain_videos(setup["checkpoint"], store, out, sample_ids=chosen)
    assert index["sample_id"].unique().tolist() == chosen
    assert sorted(index["stream"]) == ["flow", "grey"]
    side = SIZE * int(np.ceil(DISPLAY_MIN_SIDE / SIZE))
    for row in index.to_dict("records"):
        video = read_video(out / row["video"])
        assert video.frames.shape == (CLIP, side, side, 3)
        strip = cv2.imread(str(out / row["strip"]))
        assert strip.shape == (side, side * CLIP, 3)  # fewer frames than STRIP_FRAMES: all
        assert row["video"].startswith(row["sample_id"])
    assert (out / "saliency.csv").exists()
    top = explain_videos(setup["checkpoint"], store, setup["base"] / "top", top=2)
    assert top["sample_id"].nunique() == 2 and top["prob"].notna().all()
    names = {p.name for p in (setup["base"] / "top").iterdir()}
    assert len(names) == 2 * 2 * 2 + 1  # 2 videos x 2 streams x (avi, png) + index
