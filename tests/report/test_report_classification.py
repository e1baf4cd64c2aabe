"""Classification report lines: the lung-crop fallback rate."""

from cinelab.report.classification import crop_lines, summary_lines


def test_crop_fallback_rate_is_reported():
    metrics = {"n": 8, "n_pos": 3, "threshold": 0.5, "n_crop_fallback": 2,
               "crop_fallback_rate": 0.25}
    assert crop_lines(metrics) == ["lung crop fell back to the whole image for 2 image(s) "
                                   "(25.0 %): no plausible lung mask"]
    assert crop_lines(metrics)[0] in summary_lines(metrics)
    assert crop_lines({"n": 8}) == []
