"""Tiny synthetic prepared stores at a paper recipe's input size (for benchmarks/paper_recipes.py).

Each pipeline's own synthetic cohort is written, ingested and prepared the way its `run` does
it (a few samples, at the size asked); `replicate` then copies the prepared samples under new
ids (array files copied, manifest, tracings and flow rows repeated) until the train split holds
`n_train` samples, val `n_val` and test `n_test`, so that a paper batch (20 videos, 32 images)
costs one cohort of 4-6 synthetic samples.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cinelab.data.flow_store import flow_files
from cinelab.data.manifest import write_manifest
from cinelab.data.store import PreparedStore, sample_files, write_sample
from cinelab.formats.ingest import ingest
from cinelab.pipelines.age.layout import ingest_lax
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.pipelines.cmr.acdc import read_acdc
from cinelab.pipelines.cmr.prepare import prepare_cmr
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.cxr.layout import read_cxr_folders
from cinelab.pipelines.cxr.synth import synth_cxr_cohort
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.prepare import prepare_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.synth.echo import synth_echo_cohort
from cinelab.utils import read_json, write_json

BASE_N = 4  # synthetic samples actually generated per store (the rest are copies)


def echo_store(work: Path, size: int, frames: int) -> Path:
    """EchoNet layout (videos + tracings) prepared at `size`; videos of `frames` frames."""
    data = synth_echo_cohort(work / "cohort", n=BASE_N, seed=1, size=max(size, 48),
                             frames_range=(frames, frames + 4))
    found = ingest(data)
    prepare(found.manifest, work / "store", PrepSpec(size=size), workers=1,
            tracings=found.tracings)
    return work / "store"


def cmr_store(work: Path, size: int, frames: int) -> Path:
    """ACDC-layout short-axis stacks with masks, prepared at `size`."""
    cohort = synth_cmr_cohort(work / "cohort", n=BASE_N, seed=1, layout="acdc",
                              size=(size, size), n_frames=max(4, frames))
    manifest, _ = read_acdc(cohort.acdc_root)
    prepare_cmr(manifest, work / "store", size=size, workers=1)
    return work / "store"


def cxr_store(work: Path, size: int, frames: int, channels: int = 3) -> Path:
    """Radiograph folders (COVID / non-COVID), whole images at `size`, grey replicated to
    `channels` (3 for the paper's ImageNet-shaped members, as `stores_for_recipe`)."""
    cohort = synth_cxr_cohort(work / "cohort", n=2 * BASE_N, seed=3, size=size)
    prepare(read_cxr_folders(cohort).manifest, work / "store",
            PrepSpec(size=size, channels=channels, crop="uncrop"), workers=1)
    return work / "store"


def rvf_store(work: Path, size: int, frames: int) -> Path:
    """RV-failure DICOM cohort, greyscale at `size`, with Farneback optical flow."""
    raw = synth_rvf_cohort(work / "raw", n=BASE_N, seed=2, size=size, frames=frames)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", work / "ingest")
    prepare_rvf(work / "ingest", work / "store", size=size, workers=1)
    return work / "store"


def age_store(work: Path, size: int, frames: int) -> Path:
    """Long-axis cine DICOM series with ages, one cycle resampled to 25 frames, at `size`."""
    synth_cmr_lax_cohort(work / "cohort", n=BASE_N // 2, seed=1, size=size,
                         missing_rate=0.0, extra_rate=0.0)
    found = ingest_lax(work / "cohort" / "dicom", work / "cohort" / "ages.csv",
                       work / "ingest")
    prepare(found.manifest, work / "store", PrepSpec(size=size, channels=1), workers=1)
    return work / "store"


BUILDERS: dict[str, Callable[[Path, int, int], Path]] = {
    "echo": echo_store, "cmr": cmr_store, "cxr": cxr_store, "rvf": rvf_store, "age": age_store}


def _copy_sample(root: Path, source: str, new: str, frames: int | None = None) -> None:
    """The sample's array files and metadata (and flow) under a new id; with `frames`, only
    its first `frames` frames (and no flow)."""
    src, dst = sample_files(root, source), sample_files(root, new)
    if frames is not None:
        store = PreparedStore(root)
        mask = store.mask(source)
        write_sample(root, new, np.asarray(store.frames(source)[:frames]),
                     store.meta(source), None if mask is None else np.asarray(mask[:frames]))
        return
    for key in ("frames", "mask"):
        if src[key].exists():
            shutil.copyfile(src[key], dst[key])
    for key, path in flow_files(root, source).items():
        if path.exists():
            shutil.copyfile(path, flow_files(root, new)[key])
    meta = read_json(src["meta"])
    meta["sample_id"] = new
    write_json(dst["meta"], meta)


def replicate(root: Path, n_train: int, n_val: int, n_test: int,
              test_frames: int | None = None) -> PreparedStore:
    """Rewrite the store so its splits hold n_train / n_val / n_test samples (copies of the
    prepared ones, cycling through them; each copy its own patient). With `test_frames`, the
    test copies keep only their first frames (short inputs for a quick predict)."""
    store = PreparedStore(root)
    manifest = store.manifest.reset_index(drop=True)
    tracings = store.tracings
    rows, lines = [], []
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        row = manifest.iloc[i % len(manifest)].to_dict()
        new = f"s{i:04d}"
        short = test_frames if split == "test" else None
        _copy_sample(root, str(row["sample_id"]), new, short)
        if tracings is not None and short is None:
            lines.append(tracings[tracings["sample_id"] == str(row["sample_id"])]
                         .assign(sample_id=new))
        rows.append({**row, "sample_id": new, "split": split,
                     "patient_id": f"p{i:04d}" if "patient_id" in row else None})
    table = pd.DataFrame(rows)
    write_manifest(table.drop(columns=[c for c in table if table[c].isna().all()
                                       and c == "patient_id"]), root / "manifest.csv")
    if lines:
        pd.concat(lines, ignore_index=True).to_csv(root / "tracings.csv", index=False)
    return PreparedStore(root)


def build_store(kind: str, work: Path, size: int, frames: int, n_train: int, n_val: int = 1,
                n_test: int = 2, test_frames: int | None = None, channels: int = 3
                ) -> PreparedStore:
    """A prepared store of `kind` (a key of BUILDERS) with the split sizes asked (`channels`:
    of a CXR store, the model's input channels)."""
    root = cxr_store(work, size, frames, channels) if kind == "cxr" else \
        BUILDERS[kind](work, size, frames)
    return replicate(root, n_train, n_val, n_test, test_frames)
