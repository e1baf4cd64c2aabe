"""Uncertainty mechanisms on synthetic setups of known truth: interval coverage, ECE before /
after calibration, OOD flag rates.

    python benchmarks/uncertainty.py [--seed 0] [--coverage 0.9] [--reliability out.png]
                                     [--pipelines]

Prints one table per mechanism (CPU, about 10 s); with --pipelines also the figures of each
wired pipeline, through its own calibrate and predict (echonet: about 1 min), and the age
ensemble's OOD flag rates (per-model detectors of `pipelines.age.ood`: about 30 s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import (
    STORE_FORMAT,
    PreparedStore,
    channel_stats,
    combine_stats,
    write_sample,
)
from cinelab.evaluate.uncertainty import (
    expected_calibration_error,
    flag_rates,
    interval_coverage,
    reliability_diagram,
)
from cinelab.infer.calibration import fit_calibrator
from cinelab.infer.contract import read_predictions
from cinelab.infer.intervals import IntervalModel
from cinelab.infer.ood import (
    EnergyDetector,
    MahalanobisDetector,
    last_feature_map,
    penultimate_features,
)
from cinelab.models.registry import create_model, output_layer
from cinelab.pipelines.age.ood import ensemble_ood_scores, fit_unit_ood, write_unit_ood
from cinelab.pipelines.age.prepare import preprocess_cine
from cinelab.pipelines.age.synth import AGE_RANGE, NOISE, random_lax_heart, render_view
from cinelab.pipelines.age.wrong_kind import WRONG_KINDS, wrong_kind_cine
from cinelab.pipelines.cxr.synth import cxr_phantom, draw_anatomy
from cinelab.pipelines.echonet.calibrate import calibrate_echonet
from cinelab.pipelines.echonet.predict import predict
from cinelab.pipelines.echonet.video import predict_video
from cinelab.pipelines.registry import Options
from cinelab.synth.cmr_phantom import add_rician_noise
from cinelab.synth.echo import echo_phantom_video
from cinelab.synth.uncertainty import (
    OOD_KINDS,
    ood_images,
    overconfident_classifier,
    regression_cohort,
    shape_images,
    train_shape_classifier,
)
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from cinelab.utils import write_json

AGE = {"size": 16, "frames": 25, "render": 48, "pixel_mm": 3.6, "models": 3, "steps": 12,
       "n": {"train": 60, "val": 40, "test": 100}, "n_wrong": 50,
       "kinds": WRONG_KINDS}

N_CAL, N_TEST = 1000, 2000
ECHO = {"size": 32, "clip": 8, "period": 2, "frames": 16, "fps": 25.0, "noise_sd": 5.0,
        "n": {"train": 40, "val": 300, "test": 300}, "n_ood": 40}


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


def _echo_store(root: Path, videos: list[np.ndarray], efs: list[float],
                splits: list[str]) -> Path:
    rows, stats = [], []
    for i, (video, ef, split) in enumerate(zip(videos, efs, splits, strict=True)):
        meta = write_sample(root, f"v{i:04d}", video, {"fps": ECHO["fps"],
                                                      "stats": channel_stats(video)})
        stats.append(meta["stats"])
        rows.append({"sample_id": f"v{i:04d}", "path": f"v{i:04d}.avi", "split": split,
                     "EF": ef, "modality": "echo"})
    write_manifest(new_manifest(rows), root / "manifest.csv")
    mean, std = combine_stats(stats)
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete",
                                     "spec": {"size": ECHO["size"]}, "mean": mean, "std": std})
    return root


def _echo_videos(seed: int, n: int, kind: str) -> list[np.ndarray]:
    size, frames = ECHO["size"], ECHO["frames"]
    out = []
    for child in np.random.SeedSequence(seed).spawn(n):
        rng = np.random.default_rng(child)
        if kind == "echo":
            grey = echo_phantom_video(rng, size=size, fps=ECHO["fps"], n_frames=frames)[0]
        elif kind == "cxr":
            grey = np.repeat(cxr_phantom(rng, size, draw_anatomy(rng))[0][None], frames, 0)
        else:
            grey = rng.integers(0, 256, (frames, size, size), dtype=np.uint8)
        out.append(np.repeat(grey[..., None], 3, axis=-1))
    return out


def echonet(seed: int, coverage: float) -> None:
    """EchoNet through `calibrate_echonet` and `predict`: an EF model (tiny_video, fixed
    random weights) whose truth is its own EF + N(0, 5²), so the ideal interval is known."""
    n = ECHO["n"]
    print(f"\n== echonet: EF intervals (target {coverage:.0%}) and OOD flags through calibrate "
          f"-> model.pt -> predict (phantoms {ECHO['size']} px; train {n['train']}, "
          f"val {n['val']}, test {n['test']}; truth = model EF + N(0, {ECHO['noise_sd']:g}²))")
    torch.manual_seed(seed)
    kw = {"in_channels": 3, "channels": [4, 8]}
    model = create_model("tiny_video", **kw).eval()
    spec = InputSpec("video", ECHO["size"], 3, ECHO["clip"], ECHO["period"], [30.0] * 3,
                     [40.0] * 3, "EF")
    rng = np.random.default_rng(seed)
    splits = list(rng.permutation([k for k, v in n.items() for _ in range(v)]))
    videos = _echo_videos(seed, len(splits), "echo")
    with torch.no_grad():
        output_layer(model).weight.mul_(500.0)
        ef = np.asarray([predict_video(model, None, v, ECHO["fps"], spec, None).ef_all_clips
                         for v in videos])
        output_layer(model).bias.sub_(float(ef.mean()) - 50.0)
    ef = ef - (float(ef.mean()) - 50.0)
    truth = ef + rng.normal(0.0, ECHO["noise_sd"], len(ef))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_checkpoint(root / "run" / "ef" / "model.pt", model,
                        {"model": {"name": "tiny_video", "kwargs": kw}}, spec)
        store = _echo_store(root / "store", videos, list(truth), splits)
        wrong = {k: _echo_videos(seed + 1, ECHO["n_ood"], k) for k in ("cxr", "noise")}
        ood = _echo_store(root / "ood", wrong["cxr"] + wrong["noise"],
                          [50.0] * (2 * ECHO["n_ood"]), ["test"] * (2 * ECHO["n_ood"]))
        t0 = time.time()
        cal = calibrate_echonet(root / "run", store, root / "cal",
                                Options(extra={"coverage": coverage}))
        print(f"calibrated in {time.time() - t0:.1f} s: half-width {cal['ef_half_width']:.2f} "
              f"(ideal {1.6449 * ECHO['noise_sd']:.2f} at 90 %), OOD threshold "
              f"{cal['ood_threshold']:.2f}, feature dim {cal['feature_dim']}")
        test = read_predictions(predict(root / "run", store, root / "p", split="test"))
        joined = test.merge(pd.DataFrame({"sample_id": [f"v{i:04d}" for i in range(len(truth))],
                                          "EF": truth}), on="sample_id")
        c = interval_coverage(joined["EF"], joined["ef_lo"], joined["ef_hi"])
        flags = read_predictions(predict(root / "run", ood, root / "o"))["ood_flag"].astype(bool)
        k = ECHO["n_ood"]
        print(f"{'coverage':>9} {'width':>7} {'ID flagged':>10} {'cxr caught':>10} "
              f"{'noise caught':>12}")
        print(f"{c['coverage']:>9.3f} {c['mean_width']:>7.2f} "
              f"{test['ood_flag'].astype(bool).mean():>10.3f} {flags[:k].mean():>10.3f} "
              f"{flags[k:].mean():>12.3f}")


def _age_cine(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, float]:
    """(prepared uint8 cine (25, 16, 16, 1), age): a synthetic 4-chamber cine, or a
    wrong-kind input prepared the same way."""
    t, r, age = AGE["frames"], AGE["render"], float(rng.uniform(*AGE_RANGE))
    if kind == "lax":
        frames = render_view(random_lax_heart(rng, age), "4ch", r, AGE["pixel_mm"],
                             np.arange(t) / t)
        noisy = add_rician_noise(frames, NOISE, rng)
        return preprocess_cine(noisy, None, AGE["size"], spacing_mm=(AGE["pixel_mm"],) * 2
                               )[0], age
    return wrong_kind_cine(rng, kind, t, r, AGE["size"]), age


def _age_store(root: Path, parts: list[tuple[str, str, int, int]]) -> PreparedStore:
    """A prepared store of (split, kind, n, seed) parts, view 4ch."""
    rows, stats = [], []
    for split, kind, n, seed in parts:
        for i in range(n):
            cine, age = _age_cine(np.random.default_rng([seed, i]), kind)
            sid = f"{split}_{kind}_{i:03d}"
            stats.append(write_sample(root, f"{sid}_4ch", cine,
                                      {"stats": channel_stats(cine)})["stats"])
            rows.append({"sample_id": f"{sid}_4ch", "patient_id": sid, "path": sid,
                         "modality": "cine", "view": "4ch", "split": split, "age": age})
    write_manifest(new_manifest(rows), root / "manifest.csv")
    mean, std = combine_stats(stats)
    write_json(root / "store.json", {"format": STORE_FORMAT, "status": "complete", "mean": mean,
                                     "std": std, "spec": {"size": AGE["size"], "channels": 1}})
    return PreparedStore(root)


def _age_model(store: PreparedStore, path: Path, seed: int) -> Path:
    """tiny_video trained for a few Adam steps on the store's training cines."""
    torch.manual_seed(seed)
    kw = {"in_channels": 1, "num_outputs": 1, "channels": [4, 8]}
    model = create_model("tiny_video", **kw).train()
    m = store.manifest[store.manifest["split"] == "train"]
    mean, std = float(store.info["mean"][0]), float(store.info["std"][0])
    x = (torch.stack([torch.from_numpy(store.frames(s).astype(np.float32))
                      for s in m["sample_id"]]).permute(0, 4, 1, 2, 3) - mean) / std
    y = torch.tensor(((m["age"] - 60.0) / 20.0).to_numpy(), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(AGE["steps"]):
        batch = torch.arange(len(x))[step % 4::4]
        loss = torch.nn.functional.mse_loss(model(x[batch])[:, 0], y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    spec = InputSpec("cine_regression", AGE["size"], 1, AGE["frames"], 1, [mean], [std], "age")
    return save_checkpoint(path, model.eval(), {"task": "cine_regression",
                                                "model": {"name": "tiny_video", "kwargs": kw}},
                           spec)


def age(seed: int) -> None:
    """Age: one Mahalanobis detector per model (`fit_unit_ood`: fitted on the training
    cines, threshold at the 95th percentile of the validation cines), combined over the
    ensemble as the mean of score / threshold (`ensemble_ood_scores`), flagged above 1."""
    n, k = AGE["n"], AGE["n_wrong"]
    print(f"\n== age: OOD flags of a {AGE['models']}-model ensemble (tiny_video, "
          f"{AGE['size']} px cines of the age synth; train {n['train']}, val {n['val']}, "
          f"held-out {n['test']}; {k} wrong-kind inputs per kind given as the 4ch view)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = _age_store(root / "store", [(s, "lax", c, seed * 10 + i + 1)
                                            for i, (s, c) in enumerate(n.items())])
        wrong = _age_store(root / "wrong", [("test", kind, k, seed * 10 + 5 + i)
                                            for i, kind in enumerate(AGE["kinds"])])
        t0 = time.time()
        models = []
        for m in range(AGE["models"]):
            path = _age_model(store, root / f"m{m}" / "model.pt", seed + m)
            write_unit_ood(path, fit_unit_ood(path, store)[0])
            models.append(path)
        fit_s = time.time() - t0
        rows = []
        for name, chosen in [*((f"model {i}", [m]) for i, m in enumerate(models)),
                             ("ensemble (mean ratio)", models)]:
            test = store.manifest[store.manifest["split"] == "test"]
            held = ensemble_ood_scores([(m, test.rename(columns={"patient_id": "subject"}))
                                        for m in chosen], store)[0]
            caught = ensemble_ood_scores(
                [(m, wrong.manifest.rename(columns={"patient_id": "subject"}))
                 for m in chosen], wrong)[0]
            rows.append([name, float((held > 1).mean()), *[
                float((caught[caught.index.str.contains(f"_{kind}_")] > 1).mean())
                for kind in AGE["kinds"]]])
        print(f"models trained and detectors fitted in {fit_s:.1f} s")
        print(f"{'detector':<24} {'ID flagged':>10} " + " ".join(
            f"{kind:>7}" for kind in AGE["kinds"]))
        for name, fin, *rates in rows:
            print(f"{name:<24} {fin:>10.3f} " + " ".join(f"{r:>7.3f}" for r in rates))
        print("(columns after 'ID flagged' are the fraction of each wrong-kind input caught)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--reliability", default=None, help="write a reliability PNG here")
    parser.add_argument("--pipelines", action="store_true",
                        help="also the per-pipeline figures (calibrate + predict)")
    args = parser.parse_args()
    np.set_printoptions(precision=3)
    intervals(args.seed, args.coverage)
    calibration(args.seed, args.reliability)
    ood(args.seed)
    if args.pipelines:
        torch.set_num_threads(1)
        echonet(args.seed, args.coverage)
        age(args.seed)


if __name__ == "__main__":
    main()
