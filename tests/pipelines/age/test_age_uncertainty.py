"""Age intervals on a synthetic regression of known truth (a cheap stand-in for the nested
cross-validation, whose training is too slow for this many subjects): out-of-fold
predictions whose residuals are N(0, SD²), so the ideal 90 % interval is ± 1.645 SD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.pipelines.age.uncertainty import (
    UNCERTAINTY_FILE,
    annotate_age,
    cross_conformal,
    fit_age_intervals,
    interval_metrics,
    read_age_state,
    write_age_state,
)

SD, N, FOLDS = 6.0, 3000, 5


def _oof(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pred = rng.uniform(30, 80, N)
    return pd.DataFrame({"subject": [f"s{i}" for i in range(N)], "pred": pred,
                         "age": pred + rng.normal(0, SD, N), "outer": np.arange(N) % FOLDS})


def test_cross_conformal_out_of_fold_coverage() -> None:
    table = _oof(0)
    lo, hi = cross_conformal(table, 0.9)
    found = interval_metrics(table["age"], lo, hi)
    assert 0.85 <= found["age_coverage"] <= 0.95 and found["age_interval_n"] == N
    assert found["age_interval_width"] / 2 == pytest.approx(1.645 * SD, rel=0.1)


def test_stored_state_covers_new_subjects(tmp_path: Path) -> None:
    cal, new = _oof(1), _oof(2)
    path = write_age_state(tmp_path, fit_age_intervals(cal["age"], cal["pred"]))
    assert path.name == UNCERTAINTY_FILE
    state = read_age_state(tmp_path)  # JSON round trip
    table = annotate_age(new.rename(columns={"pred": "age_pred"}).assign(age=new["pred"]),
                         state)
    found = interval_metrics(new["age"], table["age_lo"], table["age_hi"])
    assert 0.85 <= found["age_coverage"] <= 0.95
    narrow = annotate_age(new[["subject"]].assign(age=new["pred"]), state, coverage=0.5)
    assert ((narrow["age_hi"] - narrow["age_lo"]) < (table["age_hi"] - table["age_lo"])).all()
    assert read_age_state(tmp_path / "none").empty  # no file, no extra: no intervals
    assert "age_lo" not in annotate_age(new, read_age_state(None)).columns
