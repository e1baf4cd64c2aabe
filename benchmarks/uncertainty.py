"""Uncertainty mechanisms on synthetic setups of known truth: interval coverage, ECE before /
after calibration, OOD flag rates.

    python benchmarks/uncertainty.py [--seed 0] [--coverage 0.9] [--reliability out.png]

Prints one table per mechanism (CPU, about 10 s).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cinelab.evaluate.uncertainty import (
    expected_calibration_error,
    flag_rates,
    interval_coverage,
    reliability_diagram,
)
from cinelab.infer.calibration import fit_calibrator
from cinelab.infer.intervals import IntervalModel
from cinelab.infer.ood import (
    EnergyDetector,
    MahalanobisDetector,
    last_feature_map,
    penultimate_features,
)
from cinelab.synth.uncertainty import (
    OOD_KINDS,
    ood_images,
    overconfident_classifier,
    regression_cohort,
    shape_images,
    train_shape_classifier,
)

N_CAL, N_TEST = 1000, 2000


def intervals(seed: int, coverage: float) -> None:
    print(f"\n== conformal intervals, target coverage {coverage:.0%} "
          f"(calibration n={N_CAL}, held-out n={N_TEST})")
    print(f"{'cohort':<16} {'method':<11} {'coverage':>9} {'width':>8}")
    for name, het in (("homoscedastic", False), ("heteroscedastic", True)):
        d = regression_cohort(N_CAL + N_TEST, seed=seed, heteroscedastic=het)
        cal = {k: v[:N_CAL] for k, v in d.items()}
        test = {k: v[N_CAL:] for k, v in d.items()}
        fits = {"absolute": (IntervalModel.fit(cal["truth"], cal["prediction"]), {}),
                "normalized": (IntervalModel.fit(cal["truth"], cal["prediction"], cal["sigma"]),
                               {"sigmas": test["sigma"]})}
        half = 0.5 * cal["sigma"], 0.5 * test["sigma"]
        cqr = IntervalModel.fit_quantiles(cal["truth"], cal["prediction"] - half[0],
                                          cal["prediction"] + half[0])
        fits["cqr"] = (cqr, {"q_lo": test["prediction"] - half[1],
                             "q_hi": test["prediction"] + half[1]})
        for method, (model, kwargs) in fits.items():
            lo, hi = model.apply(test["prediction"], coverage, **kwargs)
            c = interval_coverage(test["truth"], lo, hi)
            print(f"{name:<16} {method:<11} {c['coverage']:>9.3f} {c['mean_width']:>8.2f}")


def calibration(seed: int, path: str | None) -> None:
    print("\n== calibration of an over-confident classifier (logits x 5; val 2000, test 4000)")
    d = overconfident_classifier(6000, seed=seed, overconfidence=5.0)
    val = {k: v[:2000] for k, v in d.items()}
    test = {k: v[2000:] for k, v in d.items()}
    before = expected_calibration_error(test["prob_raw"], test["labels"])
    print(f"{'method':<12} {'ECE before':>10} {'ECE after':>10}  note")
    probs = {"raw": test["prob_raw"]}
    for method in ("temperature", "isotonic"):
        cal = fit_calibrator(val["prob_raw"], val["labels"], method)
        probs[method] = cal.apply(test["prob_raw"])
        after = expected_calibration_error(probs[method], test["labels"])
        note = f"T={cal.temperature:.2f}" if method == "temperature" else ""
        print(f"{method:<12} {before:>10.4f} {after:>10.4f}  {note}")
    if path:
        print(f"reliability diagram: {reliability_diagram(test['labels'], probs, path)}")


def ood(seed: int) -> None:
    print("\n== OOD flags on a tiny CNN (discs vs rings; train 400, val 200, test 200, "
          "threshold = 95th percentile of val)")
    torch.manual_seed(seed)
    x_tr, y_tr = shape_images(400, seed=seed)
    x_va, _ = shape_images(200, seed=seed + 1)
    x_te, y_te = shape_images(200, seed=seed + 2)
    t0 = time.time()
    model = train_shape_classifier(x_tr, y_tr, epochs=10, seed=seed)
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    print(f"classifier accuracy {acc:.3f} (trained in {time.time() - t0:.1f} s)")
    layer = last_feature_map(model, x_tr[:2])
    print(f"{'detector':<34} {'ID flagged':>10} " + " ".join(f"{k:>9}" for k in OOD_KINDS))
    ood_x = {k: ood_images(200, k, seed=seed + 3) for k in OOD_KINDS}
    setups = {"mahalanobis penultimate (mean)": ("", "mean"),
              f"mahalanobis {layer} (meanstd)": (layer, "meanstd")}
    for name, (module, pool) in setups.items():
        det = MahalanobisDetector.fit(penultimate_features(model, x_tr, module, pool=pool)[0],
                                      y_tr, module=module, pool=pool)
        det.set_threshold(det.score(det.features(model, x_va)[0]))
        rates = [flag_rates(det.flag(det.score(det.features(model, ood_x[k])[0])))
                 ["in_distribution_flagged"] for k in OOD_KINDS]
        fin = flag_rates(det.flag(det.score(det.features(model, x_te)[0])))
        print(f"{name:<34} {fin['in_distribution_flagged']:>10.3f} "
              + " ".join(f"{r:>9.3f}" for r in rates))
    energy = EnergyDetector()
    with torch.no_grad():
        energy.set_threshold(energy.score(model(x_va)))
        fin = energy.flag(energy.score(model(x_te))).mean()
        rates = [energy.flag(energy.score(model(ood_x[k]))).mean() for k in OOD_KINDS]
    print(f"{'energy (logits)':<34} {fin:>10.3f} " + " ".join(f"{r:>9.3f}" for r in rates))
    print("(columns after 'ID flagged' are the fraction of each wrong-kind input caught)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--reliability", default=None, help="write a reliability PNG here")
    args = parser.parse_args()
    np.set_printoptions(precision=3)
    intervals(args.seed, args.coverage)
    calibration(args.seed, args.reliability)
    ood(args.seed)


if __name__ == "__main__":
    main()
