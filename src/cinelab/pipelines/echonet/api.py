"""The echonet pipeline's verbs over the prediction contract: predict, evaluate, report.

- `predict_echonet(model, input, out, options)`: EF one clip / all clips / beat by beat, LV
  masks and ED/ES frames (`predict.predict`), written as the contract.
- `evaluate_echonet_predictions(pred, out, options)`: labels from ``options.labels`` (a label
  CSV such as FileList.csv, a manifest, an EchoNet folder or a prepared store), else from what
  run.json recorded (the label CSV or the prepared store that was predicted); Dice at the
  traced ED/ES frames when masks and tracings are there, EF MAE/RMSE/R² with CIs, and the
  predict-the-mean baseline (the training split's mean EF). Returns flat headline metrics.
- `report_echonet(eval_dir, out)`: one HTML page from an evaluation folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.data.store import PreparedStore, sample_files
from cinelab.errors import InputError
from cinelab.evaluate import metrics as em
from cinelab.infer.contract import PREDICTIONS_FILE, RUN_FILE, read_predictions, read_run
from cinelab.pipelines.echonet.beats import DEFAULT_MAX_BEATS
from cinelab.pipelines.echonet.evaluate import METRICS_JSON, evaluate_echonet
from cinelab.pipelines.echonet.fastbeats import SEG_STRIDE_HELP, seg_stride_option
from cinelab.pipelines.echonet.predict import PIPELINE, predict
from cinelab.pipelines.echonet.report import REPORT_HTML, build_echonet_report
from cinelab.pipelines.echonet.sources import read_labels
from cinelab.pipelines.echonet.uncertainty import BEAT_SD_THRESHOLD, evaluate_uncertainty
from cinelab.pipelines.registry import Options
from cinelab.prep.deid_ingest import deidentified_folder
from cinelab.utils import read_json, write_json

log = logging.getLogger(__name__)

PREDICTIONS, EVALUATION = "predictions", "evaluation"
PREDICT_OPTIONS = {"seg": "segmentation checkpoint (when MODEL is the EF one alone)",
                   "pseudonymise": "true: a DICOM folder is first copied de-identified into "
                                   "OUT/ingest (sample ids <pseudonym>_<k>, burned-in "
                                   "annotation flagged in OUT/ingest/problems.csv)",
                   "overlays": "write LV-outline overlay videos (true/false)",
                   "max_beats": "beats averaged beat by beat (default: every beat, as "
                                "EchoNet-Dynamic)",
                   "stride": "step between all-clips start frames (default 1)",
                   "seg_stride": SEG_STRIDE_HELP,
                   "fps": "frame rate videos are resampled to (default auto: the EF "
                          "checkpoint's training rate; none: never)",
                   "engine": "eager (default), compiled (torch.compile) or onnx (ONNX Runtime)",
                   "coverage": "coverage of ef_lo/ef_hi (default: the calibrated 0.9)",
                   "beat_sd_threshold": "beat-to-beat EF SD (points) above which "
                                        f"ef_beat_sd_flag is set (default {BEAT_SD_THRESHOLD:g})"}
EVALUATE_OPTIONS = {"n_boot": "bootstrap resamples for the CIs (default 1000)"}
DEFAULT_N_BOOT = 1000
STORE_INFO, FILELIST = "store.json", "FileList.csv"
TRAIN = "train"
DEID_DIR = "ingest"


def check_options(options: Options, known: dict[str, str]) -> None:
    """An InputError naming the accepted keys for any unknown ``--option`` key."""
    unknown = sorted(set(options.extra) - set(known))
    if unknown:
        accepted = "; ".join(f"{k}: {v}" for k, v in known.items())
        raise InputError(None, "--option", f"one of the echonet options ({accepted})",
                         ", ".join(unknown))


# -- predict -----------------------------------------------------------------------------------


def predict_echonet(model: Path, input: Path, out: Path, options: Options) -> Path:
    """`predict.predict` with the generic options (extra: seg, overlays, max_beats, stride)."""
    check_options(options, PREDICT_OPTIONS)
    overlays = options.get("overlays", False)
    if not isinstance(overlays, bool):
        raise InputError(None, "overlays", "true or false", repr(overlays))
    seg = options.get("seg")
    if options.get("pseudonymise"):  # never sample ids or PatientIDs from the raw folder
        input = deidentified_folder(input, Path(out) / DEID_DIR)
    return predict(model, input, out, seg_checkpoint=None if seg is None else Path(str(seg)),
                   batch_size=options.batch_size, device=options.device, overlays=overlays,
                   max_beats=options.get("max_beats", DEFAULT_MAX_BEATS),
                   all_clips_stride=options.get("stride", 1), labels=options.labels,
                   seg_stride=seg_stride_option(options.get("seg_stride", 1)),
                   split=options.split, fps=_fps_option(options.get("fps", "auto")),
                   engine=str(options.get("engine", "eager")),
                   coverage=options.get("coverage"),
                   beat_sd_threshold=options.get("beat_sd_threshold", BEAT_SD_THRESHOLD))


def _fps_option(value: Any) -> float | str | None:
    """--option fps: auto, none or a number."""
    if isinstance(value, str) and value.strip().lower() in ("auto", "none"):
        return "auto" if value.strip().lower() == "auto" else None
    if value is None or isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise InputError(None, "fps", "auto, none or a frame rate > 0", repr(value))


def prediction_dir(path: str | Path) -> Path:
    """A folder holding predictions.csv, or a run folder whose predictions/ holds it."""
    path = Path(path)
    path = path.parent if path.is_file() else path
    for candidate in (path, path / PREDICTIONS):
        if (candidate / PREDICTIONS_FILE).is_file():
            return candidate
    raise InputError(path, PREDICTIONS_FILE, "a folder written by `cinelab predict` (or a run "
                     "folder with predictions/)", "no predictions.csv there")


# -- labels ------------------------------------------------------------------------------------


@dataclass
class Truth:
    """What evaluation compares with: EF labels (every known row, with split when known),
    tracings and truth masks in the predicted masks' pixel grid (None when unknown)."""

    labels: pd.DataFrame  # sample_id, EF[, split]
    source: str
    tracings: pd.DataFrame | None = None
    truth_masks: pd.DataFrame | None = None


def label_table(path: str | Path) -> pd.DataFrame:
    """sample_id, EF[, split] from a label CSV (FileList.csv, a manifest, any CSV with an id
    column and EF); split lower-cased."""
    rows = read_labels(path)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "sample_id"
    table = table.reset_index()
    table = table.rename(columns={c: c.lower() for c in table.columns if c.lower() == "split"})
    if "EF" not in table.columns:
        raise InputError(path, "EF", "an EF column (percent)",
                         f"columns {[c for c in table.columns if c != 'sample_id']}")
    keep = ["sample_id", "EF"] + (["split"] if "split" in table.columns else [])
    table = table[keep].copy()
    table["EF"] = pd.to_numeric(table["EF"], errors="coerce")
    if "split" in table.columns:
        table["split"] = table["split"].astype(str).str.strip().str.lower()
    return table


def store_truth(root: Path) -> Truth:
    """Labels, tracings and truth masks of a prepared store (its pixel grid is the masks')."""
    store = PreparedStore(root)
    m = store.manifest
    ids = m["sample_id"].astype(str)
    masks = pd.DataFrame({"sample_id": ids,
                          "mask_path": [str(sample_files(root, s)["mask"]) for s in ids]})
    masks = masks[[Path(p).is_file() for p in masks["mask_path"]]]
    ef = pd.to_numeric(m["EF"], errors="coerce") if "EF" in m.columns else np.nan
    labels = pd.DataFrame({"sample_id": ids, "EF": ef,
                           "split": m["split"].astype(str).str.lower()})
    return Truth(labels, str(root), store.tracings, masks if len(masks) else None)


def truth_from(path: str | Path) -> Truth:
    """Truth from a prepared store, an EchoNet folder (its FileList.csv) or a label CSV."""
    path = Path(path)
    if (path / STORE_INFO).is_file():
        return store_truth(path)
    if (path / FILELIST).is_file():
        path = path / FILELIST
    return Truth(label_table(path), str(path))


def find_truth(pred_dir: Path, labels: str | Path | None) -> Truth:
    """`labels` when given, else the label CSV or prepared store recorded in run.json."""
    if labels is not None:
        return truth_from(labels)
    run = read_run(pred_dir)
    for key in ("labels", "input"):
        recorded = run.get(key)
        if recorded and (key == "labels" or (Path(recorded) / STORE_INFO).is_file()):
            return truth_from(recorded)
    raise InputError(pred_dir / RUN_FILE, "labels", "predictions of a prepared store or made "
                     "with --labels", "no labels recorded", fix="pass --labels FileList.csv")


# -- evaluate ----------------------------------------------------------------------------------


def _restricted(truth: Truth, split: str | None) -> pd.DataFrame:
    """The label rows of the split that was predicted (all rows when unknown)."""
    table = truth.labels
    if split and "split" in table.columns and (table["split"] == split.lower()).any():
        table = table[table["split"] == split.lower()]
    return table


def baseline_ef(truth: Truth) -> tuple[float, str]:
    """The predict-the-mean EF: the training split's mean, else the mean of every label."""
    table = truth.labels.dropna(subset=["EF"])
    if "split" in table.columns and (table["split"] == TRAIN).any():
        return float(table.loc[table["split"] == TRAIN, "EF"].mean()), "training split mean"
    return float(table["EF"].mean()), "mean of all labels"


def baseline_report(pred_dir: Path, labels: pd.DataFrame, mean: float,
                    boot: dict[str, Any]) -> dict[str, Any]:
    """MAE/RMSE/R² of predicting `mean` for every sample whose headline EF is scored, and
    ``comparison``: the model against it (`evaluate.metrics.baseline_comparison`, the
    collapse detector)."""
    preds = read_predictions(pred_dir)
    joined = labels.merge(preds[["sample_id", "ef"]], on="sample_id", how="inner")
    joined = joined[np.isfinite(joined["EF"]) & np.isfinite(joined["ef"])]
    y = joined["EF"].to_numpy(float)
    out = em.regression_report(y, np.full_like(y, mean), **boot)
    out["comparison"] = em.baseline_comparison(y, joined["ef"].to_numpy(float), mean,
                                               what="the EF model", **boot)
    return out


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Flat metrics: dice*, ef_mae (headline beat-by-beat column) with CI, ef_rmse, ef_r2,
    ef_bias, the same per other EF column (ef_mae_all_clips, ...), counts."""
    out: dict[str, Any] = {"n_evaluated": metrics["summary"]["n_evaluated"],
                           "n_fallback": metrics["summary"].get("n_fallback")}
    seg = metrics.get("segmentation") or {}
    for key, name in (("dice_overall", "dice"), ("dice_ed", "dice_ed"), ("dice_es", "dice_es"),
                      ("dice_all_frames", "dice_all_frames")):
        if key in seg:
            out[name] = seg[key]["value"]
    for column, report in (metrics.get("ef") or {}).items():
        suffix = "" if column == "ef" else column.removeprefix("ef")
        for name in ("mae", "rmse", "r2", "bias"):
            out[f"ef_{name}{suffix}"] = report[name]["value"]
        if column == "ef":
            out["ef_mae_ci_low"] = report["mae"]["ci_low"]
            out["ef_mae_ci_high"] = report["mae"]["ci_high"]
    return out


def evaluate_echonet_predictions(pred: Path, out: Path, options: Options) -> dict[str, Any]:
    """Evaluate an echonet prediction folder into `out`; flat headline metrics.

    metrics.json holds the full nested report plus ``pipeline``, ``predictions``, ``labels``,
    ``headline`` (the returned dict) and ``baseline`` (predict-the-mean MAE/RMSE/R²).
    """
    check_options(options, EVALUATE_OPTIONS)
    pred_dir, out = prediction_dir(pred), Path(out)
    truth = find_truth(pred_dir, options.labels)
    labels = _restricted(truth, read_run(pred_dir).get("split"))
    boot = {"n_boot": int(options.get("n_boot", DEFAULT_N_BOOT)), "seed": options.seed}
    metrics = evaluate_echonet(pred_dir, labels, tracings=truth.tracings,
                               truth_masks=truth.truth_masks, out_dir=out, **boot)
    flat = headline(metrics)
    nominal = (read_run(pred_dir).get("uncertainty") or {}).get("coverage")
    metrics["uncertainty"] = evaluate_uncertainty(read_predictions(pred_dir), labels, nominal)
    flat.update(metrics["uncertainty"])
    mean, how = baseline_ef(truth)
    base = baseline_report(pred_dir, labels, mean, boot) if "ef_mae" in flat else {}
    if base.get("n"):
        flat["ef_mae_baseline"] = base["mae"]["value"]
        flat["ef_r2_baseline"] = base["r2"]["value"]
        flat["ef_mae_ratio"] = flat["ef_mae"] / base["mae"]["value"] \
            if base["mae"]["value"] > 0 else None
        comparison = base["comparison"]
        flat["ef_mae_gain"] = comparison["mae_gain"]["value"]
        flat["ef_mae_gain_ci_low"] = comparison["mae_gain"]["ci_low"]
        flat["ef_not_better_than_baseline"] = comparison["not_better"]
        flat["ef_collapse_warning"] = comparison["warning"]
    warnings = [base["comparison"]["warning"]] if base.get("comparison", {}).get("warning") \
        else []
    for text in warnings:
        log.warning("%s", text)
    metrics.update(pipeline=PIPELINE, predictions=str(pred_dir.resolve()), labels=truth.source,
                   headline=flat, baseline={"ef": mean, "how": how, **base},
                   warnings=metrics.get("warnings", []) + warnings)
    write_json(out / METRICS_JSON, em.json_safe(metrics))
    return em.json_safe(flat)


# -- report ------------------------------------------------------------------------------------


def report_echonet(eval_dir: Path, out: Path | None = None) -> Path:
    """The HTML report of an evaluation folder (default eval_dir/report.html), with video
    frames under the masks when the predictions came from a prepared store."""
    eval_dir = Path(eval_dir)
    path = eval_dir / METRICS_JSON
    if not path.is_file():
        raise InputError(eval_dir, METRICS_JSON, "an evaluation folder (`cinelab evaluate`)",
                         "no metrics.json")
    pred_dir = prediction_dir(read_json(path).get("predictions") or eval_dir.parent)
    source = read_run(pred_dir).get("input")
    frames = None
    if source and (Path(source) / STORE_INFO).is_file():
        frames = PreparedStore(source).frames
    return build_echonet_report(out or eval_dir / REPORT_HTML, pred_dir, eval_dir,
                                frames_source=frames)
