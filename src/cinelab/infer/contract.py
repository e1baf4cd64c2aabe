"""The one prediction contract: every pipeline's predict writes the same three files.

  predictions.csv  sample_id, patient_id, then one column per output; the same kind of output
                   has the same name in every pipeline (`OUTPUT_COLUMNS`); intervals are
                   ``<output>_lo`` / ``<output>_hi``
  problems.csv     one row per input that could not be used (file, stage, error, ...)
  run.json         pipeline, task, checkpoint path and hash, recipe, input spec, versions,
                   timings, options and the input it read

evaluate, report, explain and serve read only these files (`read_predictions`, `read_run`,
`read_problems`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cinelab.errors import InputError, Problem
from cinelab.utils import file_hash, read_json, safe_child, versions, write_csv, write_json

PREDICTIONS_FILE = "predictions.csv"
PROBLEMS_FILE = "problems.csv"
RUN_FILE = "run.json"
ID_COLUMNS = ("sample_id", "patient_id")
PROBLEM_COLUMNS = tuple(Problem.__dataclass_fields__)

#: Output column names shared by every pipeline (a pipeline may add its own beside them).
OUTPUT_COLUMNS: dict[str, str] = {
    "ef": "left-ventricular ejection fraction, % (the pipeline's headline estimate)",
    "edv": "left-ventricular end-diastolic volume (mL where spacing is known, else voxels)",
    "esv": "left-ventricular end-systolic volume (same unit as edv)",
    "lv_mass": "left-ventricular myocardial mass, g",
    "rv_edv": "right-ventricular end-diastolic volume",
    "rv_esv": "right-ventricular end-systolic volume",
    "rv_ef": "right-ventricular ejection fraction, %",
    "age": "estimated age, years",
    "probability": "probability of the positive class (0-1)",
    "prediction": "predicted class at the model's threshold (0/1)",
    "threshold": "the threshold `prediction` used",
    "n_beats": "beats averaged for `ef` (echo beat by beat)",
}


def write_contract(out: str | Path, predictions: pd.DataFrame,
                   problems: Iterable[Problem] = (), run: Mapping[str, Any] | None = None
                   ) -> Path:
    """Write predictions.csv, problems.csv and run.json into `out` (atomically); return `out`.

    `predictions` must have a unique ``sample_id``; ``patient_id`` defaults to it.
    """
    out = Path(out)
    table = _checked(predictions, out / PREDICTIONS_FILE)
    write_csv(table, safe_child(out, PREDICTIONS_FILE))
    write_problems(safe_child(out, PROBLEMS_FILE), problems)
    write_json(safe_child(out, RUN_FILE), dict(run or {}))
    return out


def output_path(out: str | Path, *parts: str) -> Path:
    """A file under the prediction folder `out` named from data (e.g. a sample id), checked
    to lie inside `out` (OutsideOutputError otherwise); per-sample outputs use this."""
    return safe_child(out, *parts)


def write_problems(path: str | Path, problems: Iterable[Problem]) -> Path:
    """problems.csv with its header, even when there is no problem."""
    rows = [asdict(p) for p in problems]
    return write_csv(pd.DataFrame(rows, columns=list(PROBLEM_COLUMNS)), path)


def _checked(predictions: pd.DataFrame, path: Path) -> pd.DataFrame:
    if "sample_id" not in predictions.columns:
        raise InputError(path, "sample_id", "a sample_id column in the predictions",
                         f"columns {list(predictions.columns)}")
    table = predictions.copy()
    table["sample_id"] = table["sample_id"].astype(str)
    if table["sample_id"].duplicated().any():
        dup = table.loc[table["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise InputError(path, "sample_id", "one row per sample", f"{dup!r} twice")
    if "patient_id" not in table.columns:
        table["patient_id"] = table["sample_id"]
    table["patient_id"] = table["patient_id"].fillna(table["sample_id"]).astype(str)
    rest = [c for c in table.columns if c not in ID_COLUMNS]
    return table[list(ID_COLUMNS) + rest]


def run_record(pipeline: str, task: str | None, checkpoint: str | Path | None,
               input_path: str | Path | None, started: float,
               **extra: Any) -> dict[str, Any]:
    """The run.json of a prediction: what ran, on what, with which versions and timings."""
    record: dict[str, Any] = {"pipeline": pipeline, "task": task,
                              "input": None if input_path is None else str(input_path)}
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        record["checkpoint"] = str(checkpoint)
        if checkpoint.is_file():
            record["checkpoint_hash"] = file_hash(checkpoint)
    record["versions"] = versions()
    record["timings"] = {"started": started, "seconds": round(time.time() - started, 3)}
    record.update(extra)
    return record


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def read_predictions(path: str | Path) -> pd.DataFrame:
    """predictions.csv of a prediction folder (or the CSV itself), ids as strings."""
    file = Path(path) if Path(path).is_file() else Path(path) / PREDICTIONS_FILE
    if not file.is_file():
        raise InputError(file, "predictions", "a predictions.csv written by `cinelab predict`",
                         "no such file")
    table = pd.read_csv(file, dtype={"sample_id": str, "patient_id": str})
    if "sample_id" not in table.columns:
        raise InputError(file, "sample_id", "a sample_id column", f"columns {list(table)}")
    return table


def read_run(path: str | Path) -> dict[str, Any]:
    """run.json of a prediction folder ({} when the folder has none)."""
    file = _folder(path) / RUN_FILE
    return dict(read_json(file)) if file.is_file() else {}


def read_problems(path: str | Path) -> list[Problem]:
    """problems.csv of a prediction folder as Problem rows ([] when absent)."""
    file = _folder(path) / PROBLEMS_FILE
    if not file.is_file():
        return []
    table = pd.read_csv(file, dtype=str).replace({np.nan: None})
    fields = [c for c in PROBLEM_COLUMNS if c in table.columns]
    return [Problem(**{k: (int(v) if k == "row" and v is not None else v)
                       for k, v in zip(fields, row, strict=True)})
            for row in table[fields].itertuples(index=False)]
