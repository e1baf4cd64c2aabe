"""evaluate_echonet on a prediction directory built in tmp_path with known errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.measure.ef import tracing_mask
from cinelab.pipelines.echonet.evaluate import evaluate_echonet, read_prediction_dir
from cinelab.utils import read_json

SIZE, FRAMES, N = 32, 16, 12
PERIOD = 12  # frames per synthetic beat; ES is half a period after ED
TRUE_EF = np.linspace(20.0, 75.0, N)  # 5 points apart: offsets below never reorder samples
ALL_CLIPS_OFFSET = np.where(np.arange(N) % 2 == 0, 2.0, -2.0)  # MAE 2, bias 0
BEATS_OFFSET = 4.0  # MAE 4, bias 4
ED_SHIFT = np.arange(N) % 3  # predicted ED flag this many frames after the traced ED
N_BOOT = 50


def _lines(half_width: int, n_chords: int = 6) -> np.ndarray:
    """A rectangle cavity as EchoNet lines: long axis, then horizontal chords."""
    c, y0, y1 = SIZE // 2, 6, 26
    rows = [(c, y0, c, y1)] + [(c - half_width, y, c + half_width, y)
                               for y in np.linspace(y0, y1, n_chords)]
    return np.array(rows, dtype=float)


def _half_widths(ed: int) -> np.ndarray:
    phase = np.cos(2 * np.pi * (np.arange(FRAMES) - ed) / PERIOD)
    return np.rint(6 + 3 * phase).astype(int)  # 9 at ED, 3 at ES


def make_echonet_fixture(root, with_masks=True, with_frames=True):
    """Prediction dir, labels, tracings and truth masks of a small synthetic cohort."""
    pred = root / "pred"
    (pred / "masks").mkdir(parents=True)
    (root / "truth").mkdir()
    ids = [f"S{i:02d}" for i in range(N)]
    preds, frames, tracings, truth = [], [], [], []
    for i, sid in enumerate(ids):
        ed = 1 + i % 3
        es = ed + PERIOD // 2
        widths = _half_widths(ed)
        mask = np.stack([tracing_mask(_lines(w), (SIZE, SIZE)) for w in widths]).astype(np.uint8)
        if with_masks:
            np.savez_compressed(pred / "masks" / f"{sid}.npz", mask=mask)
        np.savez_compressed(root / "truth" / f"{sid}.npz", mask=mask)
        truth.append({"sample_id": sid, "mask_path": str(root / "truth" / f"{sid}.npz")})
        for frame in (ed, es):
            for x1, y1, x2, y2 in _lines(widths[frame]):
                tracings.append({"sample_id": sid, "frame": frame, "X1": x1, "Y1": y1,
                                 "X2": x2, "Y2": y2})
        for t in range(FRAMES):
            frames.append({"sample_id": sid, "frame": t, "lv_area": int(mask[t].sum()),
                           "is_ed": int(t == ed + ED_SHIFT[i]), "is_es": int(t == es)})
        preds.append({"sample_id": sid, "ef_one_clip": TRUE_EF[i] - 1.0,
                      "ef_all_clips": TRUE_EF[i] + ALL_CLIPS_OFFSET[i],
                      "ef": TRUE_EF[i] + BEATS_OFFSET, "n_beats": 1,
                      "fallback": "too few beats" if i == 0 else "",
                      "n_frames": FRAMES, "fps": 50.0})
    pd.DataFrame(preds).to_csv(pred / "predictions.csv", index=False)
    if with_frames:
        pd.DataFrame(frames).to_csv(pred / "frames.csv", index=False)
    labels = pd.DataFrame({"sample_id": ids + ["UNPREDICTED"], "EF": [*TRUE_EF, 50.0],
                           "split": "TEST"})
    return pred, labels, pd.DataFrame(tracings), pd.DataFrame(truth)


@pytest.fixture
def cohort(tmp_path):
    return make_echonet_fixture(tmp_path)


@pytest.mark.slow
def test_known_errors_dice_and_phase(cohort, tmp_path):
    pred, labels, tracings, truth = cohort
    out = tmp_path / "eval"
    m = evaluate_echonet(pred, labels, tracings, truth, out_dir=out, n_boot=N_BOOT, seed=0)
    assert m["summary"]["n_evaluated"] == N
    assert m["summary"]["n_labels_without_prediction"] == 1
    assert m["summary"]["n_fallback"] == 1 and m["summary"]["n_masks"] == N
    ef = m["ef"]
    assert ef["ef_all_clips"]["mae"]["value"] == pytest.approx(2.0)
    assert ef["ef_all_clips"]["rmse"]["value"] == pytest.approx(2.0)
    assert ef["ef_all_clips"]["bias"]["value"] == pytest.approx(0.0)
    assert ef["ef"]["mae"]["value"] == pytest.approx(BEATS_OFFSET)
    assert ef["ef"]["bias"]["value"] == pytest.approx(BEATS_OFFSET)
    assert ef["ef_one_clip"]["bias"]["value"] == pytest.approx(-1.0)
    assert ef["ef"]["n"] == N
    for col in ("ef_one_clip", "ef_all_clips", "ef"):
        for thr in (35, 40, 45, 50):
            assert m["classification"][col][f"ef_lt_{thr}"]["auc"]["value"] == 1.0
    seg = m["segmentation"]
    for key in ("dice_ed", "dice_es", "dice_overall", "dice_ed_pooled", "dice_all_frames"):
        assert seg[key]["value"] == pytest.approx(1.0), key
    phase = m["phase"]
    assert phase["ed_frame_error_mean"]["value"] == pytest.approx(ED_SHIFT.mean())
    assert phase["ed_frame_error_median"]["value"] == pytest.approx(np.median(ED_SHIFT))
    assert phase["es_frame_error_mean"]["value"] == 0.0
    assert m["problems"] == []
    assert "segmentation.traced_frames" not in m["omitted"]


@pytest.mark.slow
def test_files_written(cohort, tmp_path):
    pred, labels, tracings, truth = cohort
    out = tmp_path / "eval"
    m = evaluate_echonet(pred, labels, tracings, out_dir=out, n_boot=N_BOOT)
    assert read_json(out / "metrics.json") == m
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.columns) == ["metric", "value", "ci_low", "ci_high"]
    row = table.set_index("metric").loc["ef.ef_all_clips.mae"]
    assert row["value"] == pytest.approx(2.0) and row["ci_low"] <= 2.0 <= row["ci_high"]
    per = pd.read_csv(out / "per_sample.csv", dtype={"sample_id": str})
    assert per["sample_id"].tolist() == [f"S{i:02d}" for i in range(N)]
    np.testing.assert_allclose(per["abs_error_ef_all_clips"], 2.0)
    np.testing.assert_allclose(per["ed_frame_error"], ED_SHIFT)
    np.testing.assert_allclose(per[["dice_ed", "dice_es"]], 1.0)
    for col in ("ef_true", "ef", "ed_frame", "es_frame", "es_frame_error", "split"):
        assert col in per.columns
    assert not any(c.startswith(("inter_", "size_")) for c in per.columns)
    for name in ("scatter_ef_all_clips", "scatter_ef", "roc_ef_all_clips",
                 "bland_altman_ef"):
        assert (out / m["plots"][name]).read_bytes()[:4] == b"\x89PNG"
    assert "segmentation.dice_all_frames" in m["omitted"]


def test_wrong_masks_lower_dice(cohort):
    pred, labels, tracings, _ = cohort
    np.savez_compressed(pred / "masks" / "S00.npz",
                        mask=np.zeros((FRAMES, SIZE, SIZE), np.uint8))
    m = evaluate_echonet(pred, labels, tracings, n_boot=N_BOOT)
    assert m["segmentation"]["dice_ed"]["value"] == pytest.approx((N - 1) / N)


def test_missing_pieces_are_omitted_not_crashes(tmp_path):
    pred, labels, tracings, _ = make_echonet_fixture(tmp_path, with_masks=False,
                                                     with_frames=False)
    (pred / "masks").rmdir()
    m = evaluate_echonet(pred, labels, tracings, n_boot=N_BOOT)
    assert m["segmentation"] == {} and m["phase"] == {}
    assert "masks" in m["omitted"]["segmentation.traced_frames"]
    assert "frames.csv" in m["omitted"]["phase"]
    assert m["ef"]["ef"]["mae"]["value"] == pytest.approx(BEATS_OFFSET)
    bare = evaluate_echonet(pred, labels, n_boot=N_BOOT)
    assert bare["omitted"]["phase"] == "no tracings given"


def test_bad_files_become_problems(cohort):
    pred, labels, tracings, truth = cohort
    (pred / "masks" / "S03.npz").write_bytes(b"not a zip")
    np.savez_compressed(truth.loc[5, "mask_path"], mask=np.zeros((2, 4, 4), np.uint8))
    m = evaluate_echonet(pred, labels, tracings, truth, n_boot=N_BOOT)
    files = " ".join(p["file"] for p in m["problems"])
    assert "S03.npz" in files and "S05" in files
    assert m["segmentation"]["n"] == N - 1
    assert m["segmentation"]["n_all_frames"] == N - 2


def test_empty_ef_column_and_single_class(cohort):
    pred, labels, tracings, _ = cohort
    df = pd.read_csv(pred / "predictions.csv")
    df["ef_one_clip"] = math.nan
    df.to_csv(pred / "predictions.csv", index=False)
    m = evaluate_echonet(pred, labels, n_boot=N_BOOT, thresholds=(10, 40))
    assert "ef_one_clip" not in m["ef"] and "ef.ef_one_clip" in m["omitted"]
    assert "ef_lt_10" not in m["classification"]["ef"]
    assert "one class" in m["omitted"]["classification.ef.ef_lt_10"]


def test_input_errors(cohort, tmp_path):
    pred, labels, _, _ = cohort
    with pytest.raises(InputError, match="EF"):
        evaluate_echonet(pred, labels.rename(columns={"EF": "ef"}))
    with pytest.raises(InputError, match="no overlap"):
        evaluate_echonet(pred, labels.assign(sample_id=labels.sample_id + ".avi"))
    with pytest.raises(InputError, match="predictions.csv"):
        read_prediction_dir(tmp_path / "nowhere")
