"""Chest X-ray ensemble prediction on raw files: read, lung crop, sizes, members x TTA,
weighted ensemble probability, the prediction contract (Grad-CAM lives in
`cinelab.pipelines.cxr.gradcam`; the loaded ensemble, its loading and engine setup in
`cinelab.pipelines.cxr.model`, re-exported here).

An ensemble folder is what `cinelab.pipelines.cxr.ensemble.train_ensemble` writes: ``ensemble.json``
(weights, members with their crop and size, the validation-tuned threshold), the members'
``model.pt`` checkpoints (each records its input spec: channels, mean/std) and optionally
``lung/model.pt``, the lung U-Net.

Per file: `read_cxr` (PNG/JPEG 8/16-bit, grey/RGB/RGBA, DICOM CR/DX/DR; other modalities,
lateral views and thumbnails are refused into problems.csv, `CxrAcceptance`) -> lung mask (the
source the ensemble was trained with, ensemble.json ``crop_source``: its U-Net or the mask
file beside the image; `resolve_mask_source`) -> crop box or the
fallback with its reason (`cinelab.pipelines.cxr.crop`) -> Lanczos resize to every member's size ->
each member's probability (mean over `tta` seeded views, `cinelab.pipelines.cxr.members`;
with its OOD detector's features from the same pass when asked) -> the
weighted ensemble probability and the label at the threshold. A file that cannot be read
is written to problems.csv and skipped; the others go on.

Output: the one prediction contract (`cinelab.infer.contract`): predictions.csv with
sample_id, patient_id, probability, prediction (0/1 at the threshold), threshold,
probability_<member>..., file, cropped, crop_reason, height, width, tta; problems.csv;
run.json (pipeline "cxr", the ensemble.json hash, members, threshold, TTA, input, split).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from cinelab.data.transforms import Normalize
from cinelab.errors import InputError, Problem
from cinelab.infer.contract import (
    PREDICTIONS_FILE,
    PROBLEMS_FILE,
    read_predictions,
    run_record,
    write_contract,
)
from cinelab.infer.engine_outputs import FeatureSpec
from cinelab.infer.tta import tta_views
from cinelab.io.cxr_dicom import read_cxr
from cinelab.pipelines.cxr.cohort import MANIFEST, load_cxr_cohort
from cinelab.pipelines.cxr.crop import (
    CxrVariants,
    acceptance,
    cxr_variants,
    read_lung_mask,
    resize_lanczos,
    resolve_mask_source,
)
from cinelab.pipelines.cxr.layout import find_mask, list_images, unique_ids
from cinelab.pipelines.cxr.members import DEFAULT_BATCH, predict_member, to_batch
from cinelab.pipelines.cxr.members import load_member as load_member
from cinelab.pipelines.cxr.members import positive_probability as positive_probability
from cinelab.pipelines.cxr.members import predict_arrays as predict_arrays
from cinelab.pipelines.cxr.model import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD
from cinelab.pipelines.cxr.model import (
    ENSEMBLE_FILE,
    CxrEnsemble,
    engine_members,
    load_cxr_model,
)
from cinelab.pipelines.cxr.model import CxrMember as CxrMember
from cinelab.pipelines.cxr.model import is_cxr_ensemble as is_cxr_ensemble
from cinelab.pipelines.cxr.model import load_cxr_ensemble as load_cxr_ensemble
from cinelab.pipelines.cxr.uncertainty import annotate_cxr, read_cxr_state
from cinelab.pipelines.registry import Options
from cinelab.train.checkpoint import LoadedCheckpoint
from cinelab.utils import write_csv

PIPELINE = "cxr"
TASK = "image_classification"
PREDICTIONS_CSV, PROBLEMS_CSV = PREDICTIONS_FILE, PROBLEMS_FILE
MEMBER_PREFIX = "probability_"
STAGE = "cxr-predict"
MASK_SOURCES = ("auto", "unet", "files", "none")
COLUMNS = ["sample_id", "patient_id", "probability", "prediction", "threshold"]
CROP_COLUMNS = ["file", "cropped", "crop_reason", "height", "width", "tta"]
LUNG_PROBABILITY = 0.5  # one-channel U-Net: lung where sigmoid > this; K channels: argmax > 0


@dataclass
class CxrPredictions:
    """Predictions (one row per readable file) and the problems of the others."""

    table: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)  # per member, table rows


# --------------------------------------------------------------------------- lung crop


def lung_mask(lung: LoadedCheckpoint, image: np.ndarray) -> np.ndarray:
    """The lung U-Net's bool mask (H, W) of a uint8 radiograph, at the image's size
    (resized like the stores: Lanczos to the U-Net's input size)."""
    spec = lung.input_spec
    small = resize_lanczos(image, int(spec.size))
    x = Normalize(spec.mean, spec.std)(to_batch(small[None], spec.channels))
    with torch.no_grad():
        logits = lung.model.eval()(x)
    logits = logits["out"] if isinstance(logits, dict) else logits
    fg = torch.sigmoid(logits[:, 0]) > LUNG_PROBABILITY if logits.shape[1] == 1 \
        else logits.argmax(dim=1) > 0
    mask = fg[0].cpu().numpy().astype(np.uint8)
    return cv2.resize(mask, (image.shape[1], image.shape[0]),
                      interpolation=cv2.INTER_NEAREST) > 0


def find_lung_mask(ensemble: CxrEnsemble, image: np.ndarray, path: Path,
                   mask_source: str = "auto") -> np.ndarray | None:
    """The lung mask used for the crop: U-Net, a mask file beside the image, or None
    (`resolve_mask_source`: "auto" follows the ensemble's recorded crop source)."""
    if mask_source not in MASK_SOURCES:
        raise InputError(None, "mask_source", f"one of {MASK_SOURCES}", repr(mask_source))
    mask_source = resolve_mask_source(mask_source, ensemble.crop_source,
                                      ensemble.lung is not None)
    if mask_source == "unet":
        return lung_mask(ensemble.lung, image)
    if mask_source == "files":
        found = find_mask(path)
        return None if found is None else read_lung_mask(found)
    return None


def prepare_image(ensemble: CxrEnsemble, path: str | Path,
                  mask_source: str = "auto") -> tuple[np.ndarray, CxrVariants]:
    """(original uint8 image, its crop/uncrop variants at every member size)."""
    image = read_cxr(path, accept=ensemble.accept)
    mask = find_lung_mask(ensemble, image, Path(path), mask_source)
    return image, cxr_variants(image, mask, ensemble.sizes)


# --------------------------------------------------------------------------- prediction


def list_inputs(source: str | Path | Sequence[str | Path]) -> tuple[Path, list[Path], list[str]]:
    """(root, files, sample ids) for one file, every CXR image under a folder, or a list
    of files (ids: file stems, made unique with their folders where stems repeat)."""
    if not isinstance(source, str | Path):
        files = [Path(p) for p in source]
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in files])) \
            if files else Path(".")
        rels = [PurePosixPath(p.resolve().relative_to(root).as_posix()) for p in files]
        return root, files, unique_ids(rels)
    source = Path(source)
    if source.is_file():
        return source.parent, [source], [source.stem]
    if not source.exists():
        raise InputError(source, "input", "a chest X-ray file or a folder of them",
                         "no such file or folder")
    rels = list_images(source)
    return source, [source / r for r in rels], unique_ids([PurePosixPath(r) for r in rels])


def member_probabilities(ensemble: CxrEnsemble, variants: list[CxrVariants], tta: int = 1,
                         seed: int = 0, device: str = "cpu") -> np.ndarray:
    """(n_images, n_members) probabilities, each member on its own (crop, size) variant."""
    return member_outputs(ensemble, variants, tta, seed, device)[0]


def member_outputs(ensemble: CxrEnsemble, variants: list[CxrVariants], tta: int = 1,
                   seed: int = 0, device: str = "cpu",
                   features: Mapping[str, FeatureSpec] | None = None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(`member_probabilities`, per member named in `features` its (n_images, D) features
    from the same forward pass)."""
    probs, feats = [], {}
    for m in ensemble.members:
        spec = (features or {}).get(m.name)
        p, f = predict_member(m.loaded, np.stack([v.images[(m.crop, m.size)]
                                                  for v in variants]),
                              tta, seed, len(variants), device, spec)
        probs.append(p)
        if f is not None:
            feats[m.name] = f
    return np.stack(probs, axis=1), feats


def _chunk_rows(ensemble: CxrEnsemble, chunk: list[tuple[Path, str]], tta: int, seed: int,
                mask_source: str, problems: list[Problem], device: str,
                features: Mapping[str, FeatureSpec] | None = None
                ) -> tuple[list[dict], dict[str, np.ndarray]]:
    prepared = []
    for path, sid in chunk:
        try:
            image, variants = prepare_image(ensemble, path, mask_source)
            prepared.append((path, sid, image.shape, variants))
        except Exception as exc:  # one bad file is reported and skipped
            problems.append(Problem.from_exception(path, STAGE, exc))
    if not prepared:
        return [], {}
    probs, feats = member_outputs(ensemble, [v for *_, v in prepared], tta, seed, device,
                                  features)
    combined = ensemble.weights.predict(probs)
    rows = []
    for k, (path, sid, shape, variants) in enumerate(prepared):
        row = {"sample_id": sid, "probability": float(combined[k]),
               "prediction": int(combined[k] >= ensemble.threshold),
               "threshold": ensemble.threshold, "file": str(path)}
        row.update({MEMBER_PREFIX + m.name: float(probs[k, j])
                    for j, m in enumerate(ensemble.members)})
        row.update(cropped=variants.cropped, crop_reason=variants.reason,
                   height=int(shape[0]), width=int(shape[1]), tta=tta)
        rows.append(row)
    return rows, feats


def predict_cxr(ensemble: CxrEnsemble | str | Path,
                source: str | Path | Sequence[str | Path],
                out_dir: str | Path | None = None, tta: int = 1, seed: int = 0,
                batch_size: int = DEFAULT_BATCH, threshold: float | None = None,
                mask_source: str = "auto", device: str = "cpu",
                ids: Sequence[str] | None = None,
                patient_ids: Sequence[str | None] | None = None,
                record: dict[str, Any] | None = None,
                features: Mapping[str, FeatureSpec] | None = None) -> CxrPredictions:
    """Predict every radiograph of `source` (a file, a folder or a list of files; `ids` and
    `patient_ids` name them, e.g. from a manifest); write the prediction contract into
    `out_dir` when given (`record`: extra run.json fields, e.g. the cohort and split the
    files came from). No prompts; bad files never stop the run. `features` (member name ->
    where): those members' features of every row, taken in the prediction's forward pass
    (``result.features``, for the OOD scores)."""
    started = time.time()
    ens = ensemble if isinstance(ensemble, CxrEnsemble) else load_cxr_model(ensemble)
    if threshold is not None:
        ens.threshold = float(threshold)
    tta_views(tta, seed)  # checks n before any work
    used = resolve_mask_source(mask_source, ens.crop_source, ens.lung is not None)
    _, files, found_ids = list_inputs(source)
    for name, given in (("ids", ids), ("patient_ids", patient_ids)):
        if given is not None and len(given) != len(files):
            raise InputError(None, name, f"{len(files)} values (one per file)", str(len(given)))
    ids = found_ids if ids is None else [str(i) for i in ids]
    problems: list[Problem] = []
    rows: list[dict] = []
    feats: dict[str, list[np.ndarray]] = {}
    pairs = list(zip(files, ids, strict=True))
    for start in range(0, len(pairs), batch_size):
        chunk, found = _chunk_rows(ens, pairs[start:start + batch_size], tta, seed,
                                   mask_source, problems, device, features)
        rows += chunk
        for name, value in found.items():
            feats.setdefault(name, []).append(value)
    result = CxrPredictions(_table(rows, ens, dict(zip(ids, patient_ids or ids, strict=True))),
                            problems,
                            features={n: np.concatenate(v) for n, v in feats.items()})
    if out_dir is not None:
        run = {"input": None if not isinstance(source, str | Path) else str(source),
               **(record or {})}
        result.files = write_predictions(result, out_dir, ens, started, tta=tta, seed=seed,
                                         mask_source=used, crop_source=ens.crop_source,
                                         **run)
    return result


def _table(rows: list[dict], ens: CxrEnsemble, patients: dict[str, Any]) -> pd.DataFrame:
    members = [MEMBER_PREFIX + m.name for m in ens.members]
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "patient_id"] + members
                         + CROP_COLUMNS)
    ids = table["sample_id"].astype(str)
    table.insert(1, "patient_id", [patients.get(i) if patients.get(i) is not None
                                   and not pd.isna(patients.get(i)) else i for i in ids])
    return table


def write_predictions(result: CxrPredictions, out_dir: str | Path, ens: CxrEnsemble,
                      started: float, **record: Any) -> dict[str, Path]:
    """The prediction contract: predictions.csv, problems.csv and run.json."""
    out = Path(out_dir)
    run = run_record(PIPELINE, TASK, ens.root / ENSEMBLE_FILE, record.pop("input", None),
                     started, model=str(ens.root), members=[m.name for m in ens.members],
                     threshold=ens.threshold, n_predicted=len(result.table),
                     n_problems=len(result.problems), **record)
    write_contract(out, result.table, result.problems, run)
    return {"predictions": out / PREDICTIONS_CSV, "problems": out / PROBLEMS_CSV,
            "run": out / "run.json"}


def predict(model: Path, source: Path, out: Path, options: Options) -> Path:
    """The pipeline's predict without OOD scores (`predict_run`, documented there)."""
    predict_run(model, source, out, options)
    return Path(out)


def predict_run(model: Path, source: Path, out: Path, options: Options,
                features: Mapping[str, FeatureSpec] | None = None,
                record: dict[str, Any] | None = None) -> CxrPredictions:
    """The pipeline's predict: an ensemble folder (or one member checkpoint) on a
    radiograph, a folder of them, or a cohort (folder tree with ``options.split``, ingest
    folder, prepared store or manifest: its rows, or those of ``options.split``).
    Options: tta, threshold, masks (auto|unet|files|none), modalities, views, min_side
    (which DICOMs are accepted, `acceptance`); ``labels`` is recorded for evaluate (and read
    as the label CSV of the images when a split is asked for). `features` (member name ->
    where): each such member exported with that ``features`` output under an engine, and
    its features of every row returned (`predict_cxr`); `record`: extra run.json fields."""
    source = Path(source)
    files, ids, patients = input_files(source, options)
    ensemble = load_cxr_model(model)
    ensemble.accept = acceptance(options)
    record = {"input": str(source), "split": options.split, "accept": asdict(ensemble.accept),
              "labels": None if options.labels is None else str(options.labels),
              "engine": engine_members(ensemble, str(options.get("engine", "eager")),
                                       options.device, features), **(record or {})}
    result = predict_cxr(ensemble, files, out, tta=int(options.get("tta", 1)),
                         seed=options.seed, batch_size=options.batch_size,
                         threshold=options.get("threshold"),
                         mask_source=str(options.get("masks", "auto")), device=options.device,
                         ids=ids, patient_ids=patients, record=record, features=features)
    written = read_predictions(out)
    if len(written):  # calibrated probability, disagreement (`uncertainty`)
        write_csv(annotate_cxr(written, read_cxr_state(Path(model))), Path(out) /
                  PREDICTIONS_FILE)
    return result


def input_files(source: Path, options: Options
                ) -> tuple[Path | list[Path], list[str] | None, list[str | None] | None]:
    """(files, sample ids, patient ids) to predict: a cohort's rows (those of
    ``options.split``) when `source` is a cohort or a split is asked for, else `source`
    itself (a file or a folder of images; ids from the file names)."""
    source = Path(source)
    if options.split or source.suffix.lower() == ".csv" or (source / MANIFEST).is_file():
        cohort = load_cxr_cohort(source, options.labels if options.split else None)
        return split_files(cohort, options.split)
    return source, None, None


def split_files(cohort: Any, split: str | None
                ) -> tuple[list[Path], list[str], list[str | None]]:
    """(paths, sample ids, patient ids) of one split of a cohort manifest (None: all rows)."""
    m = cohort.manifest
    rows = m if split is None else m[m["split"].astype(str) == split]
    if rows.empty:
        raise InputError(None, "split", f"rows with split '{split}'",
                         f"splits {sorted(m['split'].astype(str).unique())}")
    patients = rows["patient_id"] if "patient_id" in rows.columns else rows["sample_id"]
    return ([Path(p) for p in rows["path"]], rows["sample_id"].astype(str).tolist(),
            [None if pd.isna(p) else str(p) for p in patients])
