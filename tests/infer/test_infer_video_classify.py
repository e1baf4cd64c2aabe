"""Clip-averaged classification (generic inference): seeded random clips, video = mean of
its clips, patient = mean of its videos, the tables written (metrics belong to evaluate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cinelab.data.store import PreparedStore
from cinelab.data.streams import stream_normalisation
from cinelab.errors import InputError
from cinelab.infer.video_classify import (
    FILES,
    clip_probabilities,
    clip_starts,
    patient_table,
    predict_classification,
    read_predictions,
)
from cinelab.models import create_model
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint

SIZE, FRAMES, CLIP = 32, 12, 4
KWARGS = {"backbone": "tiny_video", "backbone_kwargs": {"channels": [4, 8]},
          "fusion": "mean_prob"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny store (some patients with two videos) and an untrained two-stream checkpoint."""
    base = tmp_path_factory.mktemp("rvf_infer")
    raw = synth_rvf_cohort(base / "raw", n=8, seed=4, size=48, frames=FRAMES,
                           multi_video_fraction=0.5)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", base / "ingest")
    prepare_rvf(base / "ingest", base / "store", size=SIZE, workers=1)
    store = PreparedStore(base / "store")
    torch.manual_seed(0)
    model = create_model("two_stream", **KWARGS)
    mean, std = stream_normalisation(store, store.ids, ("grey", "flow"), ("grey", "flow"))
    recipe = {"model": {"name": "two_stream", "kwargs": KWARGS}, "data": {"clips": 3}}
    spec = InputSpec(task="video_classification", size=SIZE, channels=3, frames=CLIP,
                     period=2, mean=mean, std=std, target="label")
    save_checkpoint(base / "model.pt", model, recipe, spec)
    return {"store": base / "store", "checkpoint": base / "model.pt", "base": base}


def test_clip_starts_are_seeded_per_video() -> None:
    a = clip_starts("P1_0", 48, 8, 2, 5, seed=0)
    assert len(a) == 5 and a.min() >= 0 and a.max() <= 48 - 15
    np.testing.assert_array_equal(a, clip_starts("P1_0", 48, 8, 2, 5, seed=0))
    assert not np.array_equal(a, clip_starts("P1_0", 48, 8, 2, 5, seed=1))
    assert not np.array_equal(a, clip_starts("P2_0", 48, 8, 2, 5, seed=0))
    np.testing.assert_array_equal(clip_starts("P1_0", 20, 8, 2, "all"), np.arange(6))
    with pytest.raises(InputError, match="clips"):
        clip_starts("P1_0", 48, 8, 2, 0)


def test_video_and_patient_probabilities_are_means(setup: dict[str, Path]) -> None:
    out = setup["base"] / "pred"
    result = predict_classification(setup["checkpoint"], setup["store"], out)
    assert result.info["n_clips"] == 3  # the recipe's data.clips
    videos, clips = result.videos, result.clips
    assert (videos["n_clips"] == 3).all() and len(clips) == 3 * len(videos)
    means = clips.groupby("sample_id")["prob"].mean()
    np.testing.assert_allclose(videos.set_index("sample_id")["prob"], means[videos["sample_id"]])
    loaded = load_checkpoint(setup["checkpoint"])
    store = PreparedStore(setup["store"])
    sid = videos["sample_id"].iloc[0]
    starts = clips.loc[clips["sample_id"] == sid, "start"].to_numpy()
    direct = clip_probabilities(loaded.model, store, sid, loaded.input_spec, starts)
    np.testing.assert_allclose(direct, clips.loc[clips["sample_id"] == sid, "prob"], rtol=1e-5)
    patients = result.patients
    assert (patients["n_videos"] == 2).any()  # some patients have two videos
    expected = videos.groupby("patient_id")["prob"].mean()
    np.testing.assert_allclose(patients.set_index("patient_id")["prob"],
                               expected[patients["patient_id"]])
    assert set(patients["class"]) <= {"RVF", "noRVF"}
    written = read_predictions(out)
    pd.testing.assert_frame_equal(written[["sample_id", "prob"]], videos[["sample_id", "prob"]])
    patients_written = pd.read_csv(out / FILES["patients"], dtype={"patient_id": str})
    np.testing.assert_allclose(patients_written["prob"], patients["prob"])


def test_split_clip_count_and_reproducibility(setup: dict[str, Path]) -> None:
    first = predict_classification(setup["checkpoint"], setup["store"], split="train",
                                   n_clips=2, seed=5)
    again = predict_classification(setup["checkpoint"], setup["store"], split="train",
                                   n_clips=2, seed=5)
    assert (first.videos["split"] == "train").all() and (first.videos["n_clips"] == 2).all()
    pd.testing.assert_frame_equal(first.clips, again.clips)
    with pytest.raises(InputError, match="split"):
        predict_classification(setup["checkpoint"], setup["store"], split="holdout")


def test_patient_table_of_an_empty_and_a_small_table() -> None:
    assert patient_table(pd.DataFrame(columns=["sample_id"])).empty
    videos = pd.DataFrame({"sample_id": ["a_0", "a_1", "b_0"], "patient_id": ["a", "a", "b"],
                           "label": [1.0, 1.0, 0.0], "class": ["RVF", "RVF", "noRVF"],
                           "prob": [0.2, 0.6, 0.1], "n_clips": [2, 2, 2]})
    table = patient_table(videos).set_index("patient_id")
    assert table.loc["a", "prob"] == pytest.approx(0.4) and table.loc["a", "n_videos"] == 2
