"""RVF prepare: greyscale frames (sector crop, resize) into a prepared store, then optical flow.

`store_for` turns whatever a user hands to predict/explain (a prepared store, an ingest
folder, a raw RVF cohort folder, or a plain folder of echo DICOMs to score) into a prepared
store with flow, preparing under `work` what is missing (resumable: prepare and flow keep
complete samples). Raw DICOMs are always ingested pseudonymised, with de-identified copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cinelab.errors import CinelabError, InputError
from cinelab.formats.ingest import load_ingested
from cinelab.pipelines.rvf.discover import has_dicom, is_rvf_cohort, rvf_tables
from cinelab.pipelines.rvf.layout import ingest_rvf, read_unlabelled, write_rvf_ingest
from cinelab.prep.flow import FlowSummary, prepare_flow
from cinelab.prep.prepare import PrepareSummary, PrepSpec, prepare

DEFAULT_SIZE = 64
GREYSCALE = 1
DEFAULT_FLOW = "farneback"


def prepare_rvf(ingest_dir: str | Path, out: str | Path, size: int = DEFAULT_SIZE,
                method: str = DEFAULT_FLOW, workers: int | None = None, force: bool = False,
                raft_weights: str | None = None, device: str = "cpu"
                ) -> tuple[PrepareSummary, FlowSummary]:
    """Greyscale prepared store of an ingest folder, then its optical flow."""
    cohort = load_ingested(ingest_dir)
    summary = prepare(cohort.manifest, out, PrepSpec(size=size, channels=GREYSCALE),
                      workers=workers, force=force)
    if summary.usable == 0:
        raise CinelabError(f"{ingest_dir}: nothing usable was prepared")
    flow = prepare_flow(out, method, workers=workers, force=force, raft_weights=raft_weights,
                        device=device)
    return summary, flow


def store_for(source: str | Path, work: str | Path, size: int,
              options: Mapping[str, Any] | None = None) -> Path:
    """A prepared store with flow for `source`: the store itself, or one prepared under
    `work` from an ingest folder (manifest.csv) or a raw RVF cohort folder."""
    source, work, options = Path(source), Path(work), dict(options or {})
    if (source / "store.json").is_file():
        return source
    workers = options.get("workers")
    if (source / "manifest.csv").is_file():
        prepare_rvf(source, work / "store", size, workers=workers)
        return work / "store"
    if source.is_dir() and is_rvf_cohort(source):
        classes, splits = rvf_tables(source, options)
        ingest_rvf(source, classes, splits, work / "ingest")
    elif source.is_dir() and has_dicom(source):
        manifest, problems = read_unlabelled(source)
        write_rvf_ingest(manifest, problems, work / "ingest")
    else:
        raise InputError(source, "input", "a prepared store (store.json), an ingest folder "
                         "(manifest.csv), an RVF cohort (DICOMs + class CSV + split CSV) or "
                         "a folder of echo DICOMs", "none of these",
                         fix="run `cinelab rvf prepare` first")
    prepare_rvf(work / "ingest", work / "store", size, workers=workers)
    return work / "store"
