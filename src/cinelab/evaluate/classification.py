"""Binary classification evaluation: a predictions CSV + labels -> metrics, tables, ROC.

Predictions table (any binary classifier; read with `cinelab.infer.contract.read_predictions`
when given as a file or folder): ``sample_id`` and/or ``file``, ``probability``, optional
``threshold`` (the one its ``prediction`` used), one ``p_<member>`` column per ensemble member,
optional ``truth`` (0/1). Rows with an empty probability (a file that could not be read) are
counted and left out.

Labels come from the table's own ``truth`` column, or from a label table (a manifest, or any
CSV with a sample_id/file column and a label column; a pipeline turns its own layouts into
such a table). They are joined on ``sample_id`` when both sides have it, else on the resolved
file path, else on the file name.

Threshold: a number given; else Youden's J on validation predictions (`tune_on`, a
predictions CSV with labels); else the CSV's ``threshold`` column (set from the ensemble's
validation-tuned threshold at prediction time); else 0.5. The report records its source.

Outputs in `out_dir`: ``metrics.json`` (ensemble report with bootstrap CIs, threshold and
source), ``members.csv`` (members vs ensemble: AUC, sensitivity, specificity, accuracy with
CIs), ``confusion.csv``, ``per_sample.csv`` (joined table) and ``roc.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError
from cinelab.evaluate import metrics as em
from cinelab.evaluate.plots import roc_plot
from cinelab.infer.contract import read_predictions as read_contract_predictions
from cinelab.io.table import read_table
from cinelab.utils import write_csv, write_json

SCORE_COLUMN = "probability"
TRUTH_COLUMN = "truth"
THRESHOLD_COLUMN = "threshold"
MEMBER_PREFIX = "p_"
ENSEMBLE_NAME = "ensemble"
DEFAULT_THRESHOLD = 0.5
ID_COLUMNS = ("sample_id",)
FILE_COLUMNS = ("file", "path", "filename", "file_name", "image", "Image Index")
LABEL_COLUMNS = ("truth", "label", "target", "class", "covid")
TABLE_METRICS = ("auc", "sensitivity", "specificity", "accuracy")
METRICS_JSON, MEMBERS_CSV, CONFUSION_CSV = "metrics.json", "members.csv", "confusion.csv"
PER_SAMPLE_CSV, ROC_PNG = "per_sample.csv", "roc.png"
MAX_ROC_MEMBERS = 8  # members drawn beside the ensemble on the ROC plot


@dataclass
class ClassificationEvaluation:
    """What `evaluate_classification` computed and wrote."""

    report: dict[str, Any]
    members: pd.DataFrame
    confusion: pd.DataFrame
    per_sample: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def read_predictions(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A predictions table with a numeric `probability` column."""
    df = source.copy() if isinstance(source, pd.DataFrame) else \
        read_contract_predictions(source)
    where = None if isinstance(source, pd.DataFrame) else source
    if SCORE_COLUMN not in df.columns:
        raise InputError(where, "columns", f"a '{SCORE_COLUMN}' column",
                         str(list(df.columns)), "pass the predictions.csv written by predict")
    for col in [SCORE_COLUMN, *member_columns(df)]:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _read_csv(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "a CSV file", "no such file")
    return read_table(path, text_columns=("sample_id", "file", "path"))


def member_columns(df: pd.DataFrame) -> list[str]:
    """The per-member probability columns (``p_<member>``)."""
    return [c for c in df.columns if str(c).startswith(MEMBER_PREFIX)]


def read_labels(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A labels table from a CSV/manifest file or a DataFrame (a pipeline turns its own
    folder layouts into a table first)."""
    if isinstance(source, pd.DataFrame):
        return source.copy()
    path = Path(source)
    if path.is_dir():
        raise InputError(path, "labels", "a label table (CSV or manifest file)", "a folder",
                         "name the CSV, or evaluate through the pipeline that reads this "
                         "folder layout (cinelab evaluate --pipeline NAME)")
    return _read_csv(path)


def _pick(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    folded = {str(c).casefold(): c for c in columns}
    return next((folded[c.casefold()] for c in candidates if c.casefold() in folded), None)


def _key_values(df: pd.DataFrame, kind: str) -> pd.Series | None:
    if kind == "sample_id":
        return df["sample_id"].astype(str) if "sample_id" in df.columns else None
    col = _pick(list(df.columns), FILE_COLUMNS)
    if col is None:
        return None
    paths = df[col].astype(str)
    if kind == "path":
        return paths.map(lambda p: str(Path(p).expanduser().resolve()))
    return paths.map(lambda p: Path(p).name)


def join_labels(preds: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """`preds` with a `truth` column from `labels` (sample_id, else path, else file name)."""
    label_col = _pick([c for c in labels.columns if c not in ("file", "path")], LABEL_COLUMNS)
    if label_col is None:
        raise InputError(None, "labels", f"a label column (one of {list(LABEL_COLUMNS)})",
                         str(list(labels.columns)))
    for kind in ("sample_id", "path", "name"):
        left, right = _key_values(preds, kind), _key_values(labels, kind)
        if left is None or right is None:
            continue
        lookup = pd.Series(labels[label_col].to_numpy(), index=right.to_numpy())
        lookup = lookup[~lookup.index.duplicated(keep=False)]
        truth = left.map(lookup)
        if truth.notna().any():
            out = preds.drop(columns=[TRUTH_COLUMN], errors="ignore")
            out[TRUTH_COLUMN] = pd.to_numeric(truth, errors="coerce").to_numpy()
            return out
    raise InputError(None, "labels", "rows matching the predictions by sample_id, file "
                     "path or file name", "no match", "check that both name the same files")


# --------------------------------------------------------------------------- threshold


def choose_threshold(preds: pd.DataFrame, threshold: float | None = None,
                     tune_on: pd.DataFrame | None = None) -> tuple[float, str]:
    """(threshold, where it came from): see the module docstring."""
    if threshold is not None:
        return float(threshold), "given"
    if tune_on is not None:
        y, s = _labelled(tune_on, SCORE_COLUMN)
        tuned = em.youden_threshold(y, s)
        if np.isfinite(tuned):
            return tuned, "Youden on validation predictions"
    if THRESHOLD_COLUMN in preds.columns:  # also when validation held a single class
        values = pd.to_numeric(preds[THRESHOLD_COLUMN], errors="coerce").dropna().unique()
        if len(values) == 1:
            return float(values[0]), "recorded in the predictions (ensemble validation)"
    return DEFAULT_THRESHOLD, "default 0.5"


def _labelled(df: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    if TRUTH_COLUMN not in df.columns:
        raise InputError(None, TRUTH_COLUMN, "labels for these predictions", "none",
                         "pass --labels (a manifest, a label CSV or the labelled input folder)")
    keep = df[TRUTH_COLUMN].notna() & df[column].notna()
    return (df.loc[keep, TRUTH_COLUMN].to_numpy(float), df.loc[keep, column].to_numpy(float))


# --------------------------------------------------------------------------- evaluation


def _table_row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "n": report["n"]}
    for metric in TABLE_METRICS:
        entry = report[metric]
        row.update({metric: entry["value"], f"{metric}_ci_low": entry["ci_low"],
                    f"{metric}_ci_high": entry["ci_high"]})
    return row


def confusion_table(report: dict[str, Any]) -> pd.DataFrame:
    """2x2 counts: rows true negative/positive, columns predicted negative/positive."""
    return pd.DataFrame({"truth": ["negative", "positive"],
                         "predicted_negative": [report["tn"], report["fn"]],
                         "predicted_positive": [report["fp"], report["tp"]]})


def evaluate_classification(
    predictions: str | Path | pd.DataFrame,
    out_dir: str | Path | None = None,
    labels: str | Path | pd.DataFrame | None = None,
    threshold: float | None = None,
    tune_on: str | Path | pd.DataFrame | None = None,
    n_boot: int = em.DEFAULT_N_BOOT,
    seed: int = 0,
) -> ClassificationEvaluation:
    """Metrics of the ensemble and of every member (module docstring); files in out_dir."""
    preds = read_predictions(predictions)
    if labels is not None:
        preds = join_labels(preds, read_labels(labels))
    tune = None if tune_on is None else read_predictions(tune_on)
    if tune is not None and labels is not None and TRUTH_COLUMN not in tune.columns:
        tune = join_labels(tune, read_labels(labels))
    thr, source = choose_threshold(preds, threshold, tune)
    y, s = _labelled(preds, SCORE_COLUMN)
    report = em.binary_report(y, s, threshold=thr, n_boot=n_boot, seed=seed)
    report.update(threshold_source=source, n_rows=int(len(preds)),
                  n_unscored=int(preds[SCORE_COLUMN].isna().sum()),
                  n_unlabelled=int(preds[TRUTH_COLUMN].isna().sum()))
    rows = [_table_row(ENSEMBLE_NAME, report)]
    curves = {ENSEMBLE_NAME: (*em.roc_curve(y, s)[:2], report["auc"]["value"])}
    for col in member_columns(preds):
        ym, sm = _labelled(preds, col)
        member = em.binary_report(ym, sm, threshold=thr, n_boot=n_boot, seed=seed)
        name = col[len(MEMBER_PREFIX):]
        rows.append(_table_row(name, member))
        if len(curves) <= MAX_ROC_MEMBERS:
            curves[name] = (*em.roc_curve(ym, sm)[:2], member["auc"]["value"])
    result = ClassificationEvaluation(report, pd.DataFrame(rows), confusion_table(report),
                                      preds)
    if out_dir is not None:
        result.files = write_evaluation(result, curves, out_dir)
    return result


def write_evaluation(result: ClassificationEvaluation, curves: dict[str, Any],
                     out_dir: str | Path) -> dict[str, Path]:
    """metrics.json, members.csv, confusion.csv, per_sample.csv and roc.png in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / METRICS_JSON, em.json_safe(result.report))
    files = {"metrics": out / METRICS_JSON,
             "members": write_csv(result.members, out / MEMBERS_CSV),
             "confusion": write_csv(result.confusion, out / CONFUSION_CSV),
             "per_sample": write_csv(result.per_sample, out / PER_SAMPLE_CSV)}
    files["roc"] = roc_plot(curves, out / ROC_PNG, title="ROC")
    return files
