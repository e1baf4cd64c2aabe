"""Age ensembles from cross-validation predictions: view weights fitted on inner validation
only (test predictions cannot move them), fold averages, one-view subjects, the age-gap
correction, scores, plots and the report page (with the out-of-fold OOD flag rate when the
models carry detectors)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cinelab.data.splits import nested_folds
from cinelab.infer.ood import MahalanobisDetector
from cinelab.pipelines.age.evaluate import choose_variant, ensemble_cv, gap_correction
from cinelab.pipelines.age.ood import SCORES_FILE, write_unit_ood
from cinelab.pipelines.age.report import build_age_report
from cinelab.utils import file_hash, write_csv, write_json

N, OUTER, INNER = 40, 2, 2
ARMS = ("3ch", "4ch")
ONE_VIEW = "s7"  # has no 4ch cine
Pred = Callable[[str, str, int, np.ndarray, np.random.Generator], np.ndarray]


def fake_cv(root: Path, predict: Pred, seed: int = 0) -> Path:
    """A cv folder whose unit predictions come from predict(arm, role, inner, ages, rng)."""
    rng = np.random.default_rng(seed)
    ages = np.random.default_rng(1).uniform(40, 80, N)
    subjects = [f"s{i}" for i in range(N)]
    folds = nested_folds(subjects, ages, OUTER, INNER, seed=0)
    age_of = dict(zip(subjects, ages, strict=True))
    write_json(root / "cv.json", {"outer": OUTER, "inner": INNER, "target": "age",
                                  "group": "patient_id", "store": str(root / "no-store")})
    for arm in ARMS:
        for k in range(OUTER):
            for j in range(INNER):
                rows = []
                for role in ("train", "val", "test"):
                    subs = [s for s in folds.subjects(k, role, j)
                            if not (s == ONE_VIEW and arm == "4ch")]
                    y = np.array([age_of[s] for s in subs])
                    p = predict(arm, role, j, y, rng)
                    rows += [{"sample_id": f"{s}_{arm}", "subject": s, "arm": arm, "outer": k,
                              "inner": j, "role": role, "target": t, "pred": v,
                              "pred_aug": v + 0.5} for s, t, v in zip(subs, y, p, strict=True)]
                unit = root / arm / f"outer_{k}" / f"inner_{j}"
                write_csv(pd.DataFrame(rows), unit / "predictions.csv")
                write_json(unit / "done.json", {"files": {
                    "predictions.csv": (unit / "predictions.csv").stat().st_size}})
    return root


def good_val_bad_test(arm: str, role: str, inner: int, y: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """3ch is accurate on inner validation and poor on test; 4ch the other way round."""
    accurate = (arm == "3ch") == (role != "test")
    return y + rng.normal(0, 1.0 if accurate else 10.0, len(y))


@pytest.mark.slow
def test_view_weights_never_see_test_predictions(tmp_path: Path) -> None:
    a = ensemble_cv(fake_cv(tmp_path / "a", good_val_bad_test), n_boot=50)
    for weights in a["weights"].values():
        assert weights["3ch"] > 0.9  # fitted on test, 4ch would win
    # other test predictions (different noise), same validation predictions: same weights
    def other_test(arm: str, role: str, inner: int, y: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
        p = good_val_bad_test(arm, role, inner, y, rng)
        return y + 25.0 if role == "test" else p

    b = ensemble_cv(fake_cv(tmp_path / "b", other_test), n_boot=50)
    assert a["weights"] == b["weights"] and a["calibration"] == b["calibration"]
    for k in range(OUTER):
        wa = json.loads((tmp_path / "a" / "ensemble" / "weights" / f"outer_{k}.json").read_text())
        wb = json.loads((tmp_path / "b" / "ensemble" / "weights" / f"outer_{k}.json").read_text())
        assert wa["weights"] == wb["weights"] and wa["details"] == wb["details"]


def regression_to_mean(arm: str, role: str, inner: int, y: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """Shrunk predictions (0.5 age + 30) whose fold models differ by +-1 year."""
    return 0.5 * y + 30 + (1.0 if inner else -1.0) + rng.normal(0, 0.5, len(y))


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = fake_cv(tmp_path_factory.mktemp("age"), regression_to_mean)
    return root, ensemble_cv(root, variant="plain", n_boot=100, calibrate=False)


def test_every_subject_once_with_fold_and_view_averages(shrunk: tuple[Path, dict]) -> None:
    root, metrics = shrunk
    table = pd.read_csv(root / "ensemble" / "predictions.csv")
    assert sorted(table["subject"]) == sorted(f"s{i}" for i in range(N))
    preds = pd.read_csv(root / "3ch" / "outer_0" / "inner_0" / "predictions.csv")
    row = table.set_index("subject").loc[table["subject"].iloc[0]]
    units = [pd.read_csv(root / "3ch" / f"outer_{int(row['outer'])}" / f"inner_{j}" /
                         "predictions.csv").set_index("subject") for j in range(INNER)]
    fold_mean = np.mean([u.loc[row.name, "pred"] for u in units])
    assert row["pred_3ch"] == pytest.approx(fold_mean)  # the inner models, equal weights
    one = table.set_index("subject").loc[ONE_VIEW]
    assert np.isnan(one["pred_4ch"]) and one["pred"] == pytest.approx(one["pred_3ch"])
    assert one["n_views"] == 1 and len(preds)
    assert metrics["variant"] == "plain" and metrics["headline"]["n_all_views"] == N - 1


def test_gap_correction_removes_the_age_trend(shrunk: tuple[Path, dict]) -> None:
    root, _ = shrunk
    gap = pd.read_csv(root / "ensemble" / "age_gap.csv")
    assert np.corrcoef(gap["age"], gap["gap"])[0, 1] < -0.9  # regression to the mean
    assert np.polyfit(gap["age"], gap["gap"], 1)[0] == pytest.approx(-0.5, abs=0.05)
    assert abs(np.polyfit(gap["age"], gap["gap_corrected"], 1)[0]) < 0.05
    assert gap["gap_corrected"].abs().mean() < 1.5
    intercept, slope = gap_correction(np.array([35.0, 40, 45]), np.array([10.0, 20, 30]))
    assert slope == pytest.approx(-0.5) and intercept == pytest.approx(30.0)


def test_scores_plots_and_tables(shrunk: tuple[Path, dict]) -> None:
    root, metrics = shrunk
    out = root / "ensemble"
    overall = metrics["overall"]
    assert set(overall) == {"3ch", "4ch", "ensemble", "baseline"}
    for report in overall.values():
        assert report["rmse"]["ci_low"] <= report["rmse"]["value"] <= report["rmse"]["ci_high"]
    head = metrics["headline"]
    assert head["rmse_ratio_to_baseline"] == pytest.approx(
        head["rmse"]["ensemble"] / head["rmse"]["baseline"])
    folds = pd.read_csv(out / "fold_metrics.csv")
    assert set(folds["outer"]) == {0, 1} and set(folds["model"]) == set(overall)
    for name in ("scatter_ensemble", "residual_ensemble", "scatter_3ch", "residual_4ch"):
        assert (out / f"{name}.png").stat().st_size > 1000
    page = build_age_report(root).read_text()
    assert "Age gap" in page and "View weights" in page and page.count("<img") >= 6


def test_auto_variant_follows_inner_validation() -> None:
    preds = pd.DataFrame({"role": ["val", "val", "test"], "target": [50.0, 60, 70],
                          "pred": [50.0, 60, 0], "pred_aug": [55.0, 65, 70]})
    assert choose_variant(preds, "auto") == "plain"  # test rows never decide
    assert choose_variant(preds.assign(pred_aug=np.nan), "auto") == "plain"
    assert choose_variant(preds, "tta") == "tta"


def test_calibration_on_inner_validation_stretches_shrunk_predictions(
        shrunk: tuple[Path, dict], tmp_path: Path) -> None:
    root, raw = shrunk
    metrics = ensemble_cv(root, tmp_path / "calibrated", variant="plain", n_boot=20)
    for lines in metrics["calibration"].values():
        for line in lines.values():  # age = (pred - 30) / 0.5 = 2 pred - 60
            assert line["slope"] == pytest.approx(2.0, abs=0.15)
            assert line["intercept"] == pytest.approx(-60.0, abs=8.0)
    head = metrics["headline"]
    assert head["rmse"]["ensemble"] < 0.3 * raw["headline"]["rmse"]["ensemble"]
    assert head["rmse_uncalibrated"]["3ch"] == pytest.approx(raw["headline"]["rmse"]["3ch"])
    table = pd.read_csv(tmp_path / "calibrated" / "predictions.csv")
    assert {"raw_3ch", "raw_4ch", "pred_3ch", "pred_4ch"} <= set(table.columns)


def test_ensemble_report_shows_the_out_of_fold_flag_rate(shrunk: tuple[Path, dict],
                                                         tmp_path: Path) -> None:
    root = shutil.copytree(shrunk[0], tmp_path / "cv")
    page = build_age_report(root).read_text()
    assert "Out-of-distribution flag" not in page  # no detectors yet
    flagged = {f"s{i}" for i in range(10)}  # ratio 2 under every model; the others 0.5
    for unit in sorted(root.glob("*/outer_*/inner_*")):
        model = unit / "run" / "model.pt"
        model.parent.mkdir()
        model.write_bytes(unit.name.encode() + unit.parent.name.encode())
        write_unit_ood(model, MahalanobisDetector(threshold=3.0, info={
            "model_hash": file_hash(model), "threshold_quantile": 0.9}))
        test = pd.read_csv(unit / "predictions.csv").query("role == 'test'")
        write_csv(test[["sample_id", "subject", "role"]].assign(
            ratio=[2.0 if s in flagged else 0.5 for s in test["subject"]]), unit / SCORES_FILE)
    page = build_age_report(root / "ensemble").read_text()
    assert "25.0% of 40 subjects flagged" in page and "90% quantile" in page
    assert "about 10% expected" in page
