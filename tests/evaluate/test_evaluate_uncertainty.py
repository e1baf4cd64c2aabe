"""Interval coverage, ECE / reliability data and flag rates against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.evaluate.uncertainty import (
    RELIABILITY_COLUMNS,
    expected_calibration_error,
    flag_rates,
    interval_coverage,
    reliability_diagram,
    reliability_table,
    uncertainty_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_interval_coverage_hand_values():
    cov = interval_coverage([1.0, 5.0, 3.0, np.nan], [0.0, 0.0, 3.5, 0.0], [2.0, 4.0, 4.5, 1.0])
    assert cov == {"coverage": pytest.approx(1 / 3), "mean_width": pytest.approx(7 / 3), "n": 3}
    empty = interval_coverage([], [], [])
    assert empty["n"] == 0 and math.isnan(empty["coverage"])
    with pytest.raises(InputError) as err:
        interval_coverage([1.0], [0.0, 1.0], [2.0])
    assert err.value.field == "y_true/lo/hi"


def test_ece_and_reliability_hand_values():
    p, y = [0.1, 0.1, 0.9, 0.9, 0.0, 1.0], [0, 1, 1, 1, 0, 1]
    table = reliability_table(p, y, bins=10)
    assert tuple(table.columns) == RELIABILITY_COLUMNS and len(table) == 10
    assert table["n"].tolist() == [3, 0, 0, 0, 0, 0, 0, 0, 2, 1]
    assert table.loc[0, "mean_probability"] == pytest.approx(0.2 / 3)
    assert table.loc[0, "fraction_positive"] == pytest.approx(1 / 3)
    assert math.isnan(table.loc[1, "mean_probability"])
    # bin 0: |0.0667 - 0.3333| * 3; bin 8: |0.9 - 1| * 2; bin 9: 0
    expected = (abs(0.2 / 3 - 1 / 3) * 3 + 0.1 * 2) / 6
    assert expected_calibration_error(p, y, bins=10) == pytest.approx(expected)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
    assert math.isnan(expected_calibration_error([np.nan], [1]))


def test_ece_rejects_bad_inputs():
    with pytest.raises(InputError) as err:
        expected_calibration_error([0.2, 0.5], [0, 2])
    assert err.value.field == "label"
    with pytest.raises(InputError) as err:
        expected_calibration_error([1.2, 0.5], [0, 1])
    assert (err.value.field, err.value.found) == ("probability", "range 0.5 to 1.2")


def test_reliability_diagram_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    path = reliability_diagram(y, {"raw": np.where(y, 0.99, 0.01) * 0.5 + 0.25,
                                   "calibrated": rng.random(200)}, tmp_path / "rel.png",
                               title="calibration")
    assert path.read_bytes()[:8] == PNG_MAGIC
    empty = reliability_diagram([], {"raw": []}, tmp_path / "empty.png")
    assert empty.read_bytes()[:8] == PNG_MAGIC


def test_flag_rates_hand_values():
    assert flag_rates([True, False, False, False]) == {"in_distribution_flagged": 0.25,
                                                       "n_in": 4}
    rates = flag_rates(np.array([0, 0, 1.0, np.nan]), [True, True, False])
    assert rates == {"in_distribution_flagged": pytest.approx(1 / 3), "n_in": 3,
                     "ood_caught": pytest.approx(2 / 3), "n_ood": 3}


def test_uncertainty_metrics_from_contract_columns():
    table = pd.DataFrame({"ef": [50.0, 60.0], "ef_lo": [45.0, 55.0], "ef_hi": [55.0, 58.0],
                          "ef_true": [52.0, 59.0], "probability": [0.9, 0.1],
                          "probability_raw": [1.0, 0.0], "label": [1, 1],
                          "ood_flag": [False, True]})
    m = uncertainty_metrics(table, {"ef": "ef_true", "age": "age_true"}, label_column="label")
    assert m == {"coverage/ef": 0.5, "width/ef": 6.5, "n/ef": 2,
                 "ece": pytest.approx(0.5), "ece_raw": pytest.approx(0.5), "flagged": 0.5}
