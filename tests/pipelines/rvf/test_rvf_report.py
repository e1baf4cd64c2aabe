"""The RV-failure report's confusion table: the generic 2x2 counts per level."""

from __future__ import annotations

from cinelab.pipelines.rvf.report import confusion_by_level


def test_confusion_by_level_stacks_the_generic_counts_of_each_labelled_level():
    metrics = {"video": {"tp": 5, "tn": 7, "fp": 2, "fn": 1},
               "patient": {"tp": 3, "tn": 4, "fp": 0, "fn": 1}}
    table = confusion_by_level(metrics)
    assert table.columns.tolist() == ["level", "truth", "predicted_negative",
                                      "predicted_positive"]
    assert table["level"].tolist() == ["video", "video", "patient", "patient"]
    assert table["truth"].tolist() == ["negative", "positive"] * 2
    assert table["predicted_negative"].tolist() == [7, 1, 4, 1]
    assert table["predicted_positive"].tolist() == [2, 5, 0, 3]


def test_confusion_by_level_skips_unlabelled_levels():
    only_video = confusion_by_level({"video": {"tp": 1, "tn": 1, "fp": 0, "fn": 0},
                                     "patient": {"note": "no labels"}})
    assert only_video["level"].tolist() == ["video", "video"]
    assert confusion_by_level({"video": {"note": "no labels"}}).empty
