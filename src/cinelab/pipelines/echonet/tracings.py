"""EF from a cohort's tracings, beside the values its label table reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError, Problem
from cinelab.formats.ingest import load_ingested
from cinelab.measure.ef import ef_from_tracings
from cinelab.pipelines.echonet.layout import read_echonet

LABEL_COLUMNS = ("EF", "EDV", "ESV")


def load_cohort_tracings(source: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[Problem]]:
    """(tracings, manifest, problems) from an EchoNet folder, an ingest folder or a store."""
    source = Path(source)
    if (source / "store.json").exists():
        store = PreparedStore(source)
        tracings = store.tracings
        manifest, problems = store.manifest, []
    elif (source / "FileList.csv").exists():
        cohort = read_echonet(source)
        tracings, manifest, problems = cohort.tracings, cohort.manifest, list(cohort.problems)
    else:
        ingested = load_ingested(source)
        tracings, manifest, problems = ingested.tracings, ingested.manifest, []
    if tracings is None or tracings.empty:
        raise InputError(source, "tracings", "VolumeTracings (long axis + disc chords)",
                         "no tracings in that cohort")
    return tracings, manifest, problems


def measure_cohort_tracings(source: str | Path) -> tuple[pd.DataFrame, list[Problem]]:
    """One row per video: EDV, ESV, EF by discs, and the label table's values beside them."""
    tracings, manifest, problems = load_cohort_tracings(source)
    table, more = ef_from_tracings(tracings)
    labels = [c for c in LABEL_COLUMNS if c in manifest.columns]
    given = manifest[["sample_id", *labels]].rename(columns={c: f"label_{c}" for c in labels})
    table = table.merge(given, on="sample_id", how="left")
    if "label_EF" in table.columns:
        table["EF_difference"] = table["EF"] - table["label_EF"]
    return table, problems + list(more)
