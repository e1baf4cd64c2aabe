"""Cine MRI commands: `synth cmr` and the `cmr` group (convert, prepare, predict, curve,
measure, pseudo, evaluate, report). Thin: the API functions in synth/, formats/, prep/,
measure/, infer/, train/, evaluate/ and report/ do the work. The `cmr` typer group is left
in `apps["cmr"]` for later command modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from cinelab.cliutil import console, finish_predictions, friendly, print_problems
from cinelab.data.manifest import read_manifest
from cinelab.data.store import PreparedStore
from cinelab.errors import CinelabError, InputError, Problem
from cinelab.infer.contract import read_predictions, read_problems
from cinelab.io.table import read_table
from cinelab.measure.volumes import parse_label_map
from cinelab.pipelines.cmr import pipeline as cmr_pipeline
from cinelab.pipelines.cmr.dsb import convert_dsb
from cinelab.pipelines.cmr.evaluate import evaluate_cmr
from cinelab.pipelines.cmr.mask_sets import mask_index
from cinelab.pipelines.cmr.measure import ef_difference_table, measure_mask_set, paired_measures
from cinelab.pipelines.cmr.predict import predict_cmr
from cinelab.pipelines.cmr.prepare import prepare_cmr_folder
from cinelab.pipelines.cmr.pseudo import is_volume_table, pseudo_labels, threshold_summary
from cinelab.pipelines.cmr.pseudo_pairs import export_pseudo_pairs
from cinelab.pipelines.cmr.report import build_cmr_report
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.registry import Options
from cinelab.train.curve import CURVE_BY, CURVE_FILE, data_requirement_curve
from cinelab.train.recipe import load_recipe
from cinelab.train.transfer import check_subset, subset_ids
from cinelab.utils import write_csv

CMR_APP = "cmr"
DEFAULT_THRESHOLDS = [5.0, 10.0, 15.0]

CMR_HELP = ("Cine MRI short-axis: DSB cleaning, stores, prediction, volumes/EF, pseudo-labels, "
            "data-requirement curves, mask comparison.")

LabelsOpt = Annotated[str, typer.Option(help="Label map: 'acdc' (1 RV, 2 myo, 3 LV) or "
                                             "'lv=N,myo=N[,rv=N|none]'.")]
SpacingOpt = Annotated[str | None, typer.Option(
    help="Spacing 'slice,row,col' mm for masks without it (HDF5, .npy); else voxel counts.")]


def _spacing(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InputError(None, "--spacing", "'slice,row,col' in mm, e.g. '10,1.5,1.5'",
                         repr(text))
    return values


def _named(items: list[str] | None, option: str, what: str) -> dict[str, str]:
    """NAME=VALUE items (split at the first '=') as a dict."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(None, option, f"NAME={what}", repr(item))
        out[name] = value
    return out


def _write_problems(problems: list, path: Path) -> None:


    write_csv(pd.DataFrame([vars(p) for p in problems],
                           columns=list(Problem.__dataclass_fields__)), path)


# --------------------------------------------------------------------------- synth


def synth_cmr(
    out: Annotated[Path, typer.Option(help="Folder for the cohort (dsb/, acdc/, truth.csv).")],
    n: Annotated[int, typer.Option(help="Number of patients.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    layout: Annotated[str, typer.Option(help="dsb (DICOM), acdc (NIfTI) or both.")] = "dsb",
    defects: Annotated[bool, typer.Option(help="Inject the DSB defects (patients 2..7).")]
    = True,
    frames: Annotated[int, typer.Option(help="Time points per cycle.")] = 20,
    rows: Annotated[int, typer.Option(help="Image rows.")] = 112,
    cols: Annotated[int, typer.Option(help="Image columns.")] = 96,
) -> None:
    """Synthetic short-axis cine MRI with known LV/RV volumes and EF (DSB and ACDC layouts);
    long-axis series for the age pipeline: `cinelab synth cmr-lax`."""
    options: dict[str, Any] = {"n": n, "seed": seed, "layout": layout, "defects": defects,
                               "n_frames": frames, "size": (rows, cols)}
    with console.status(f"synthesising {n} cine MRI patients"):
        cohort = synth_cmr_cohort(out, **options)
    console.print(f"wrote {len(cohort.truth)} patients ({layout}) to {cohort.root}; "
                  f"truth in {cohort.root / 'truth.csv'}")


# --------------------------------------------------------------------------- cmr group


def convert(
    root: Annotated[Path, typer.Argument(help="Kaggle DSB folder (<pid>/study/sax_*/*.dcm).")],
    out: Annotated[Path, typer.Option(help="Folder for nifti/, logs and manifest.csv.")],
    max_size: Annotated[int, typer.Option(help="Larger image side after cleaning.")] = 256,
    metadata: Annotated[bool, typer.Option(help="Also export dicom_metadata.csv.")] = False,
) -> None:
    """Clean DSB DICOM stacks into 4D NIfTI cines with conversion and dimension logs."""
    with console.status("converting DSB patients"):
        result = convert_dsb(root, out, max_size=max_size, metadata=metadata)
    print_problems(result.problems)
    console.print(f"{len(result.manifest)} cines, {len(result.log)} logged problem(s), "
                  f"{len(result.problems)} skipped -> {out}")
    if result.manifest.empty:
        raise CinelabError(f"{root}: no cine could be converted")


def measure(
    masks: Annotated[Path, typer.Argument(help="Mask set: folder (ACDC, HDF5, NIfTI) or "
                                               "index CSV.")],
    out: Annotated[Path, typer.Option(help="Folder for volumes.csv, frame_volumes.csv.")],
    labels: LabelsOpt = "acdc",
    spacing: SpacingOpt = None,
    truth: Annotated[Path | None, typer.Option(help="Truth CSV with EDV/ESV/EF (e.g. "
                                                    "truth.csv) to compare with.")] = None,
    truth_id: Annotated[str, typer.Option(help="Patient column of the truth CSV.")]
    = "patient_id",
) -> None:
    """LV/RV volumes, EF and myocardial mass per patient (ED/ES found by LV volume)."""


    table, per_frame, problems = measure_mask_set(masks, parse_label_map(labels),
                                                  _spacing(spacing))
    write_csv(table, out / "volumes.csv")
    write_csv(per_frame, out / "frame_volumes.csv")
    _write_problems(problems, out / "problems.csv")
    print_problems(problems)
    if truth is not None:
        truth_df = read_table(truth, text_columns=(truth_id,))
        write_csv(paired_measures(table, truth_df, truth_on=truth_id),
                  out / "volumes_vs_truth.csv")
        ef = ef_difference_table(table, truth_df, by=None, truth_on=truth_id)
        write_csv(ef, out / "ef_differences.csv")
        console.print(f"|EF difference| mean {ef['mean'].iloc[0]:.2f} ± {ef['sd'].iloc[0]:.2f}"
                      f" (n {ef['n'].iloc[0]})")
    console.print(f"{len(table)} patients measured -> {out / 'volumes.csv'}")
    if table.empty:
        raise CinelabError(f"{masks}: no patient could be measured")


def pseudo(
    pred: Annotated[Path, typer.Argument(help="Predicted volumes CSV (EDV/ESV) or predicted "
                                              "mask set; with --checkpoint the input to "
                                              "predict.")],
    reference: Annotated[Path, typer.Option(help="Reference volumes: DSB folder "
                                                 "(train/validate/solution.csv) or CSV.")],
    out: Annotated[Path, typer.Option(help="Folder for confidence.csv and the subsets.")],
    threshold: Annotated[list[float] | None, typer.Option(help="Kept if |% deviation| <= "
                                                               "this (repeatable).")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Training manifest to subset.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Segmentation checkpoint: predict "
                                                         "PRED first.")] = None,
    reference_id: Annotated[str | None, typer.Option(help="Id column of a reference CSV "
                                                          "(default: patient_id, Id, pid).")]
    = None,
    pairs: Annotated[bool, typer.Option(help="Write the ED/ES frames of confident cines as "
                                             "PNG image + mask pairs (confident_<t>pct/).")]
    = True,
    all_frames: Annotated[bool, typer.Option(help="Pairs from every frame of each confident "
                                                  "cine (the paper), not only ED/ES.")]
    = False,
    labels: LabelsOpt = "acdc",
    spacing: SpacingOpt = None,
) -> None:
    """Pseudo-labels: confidence = larger |% deviation| of predicted EDV/ESV from reference;
    the confident patients' ED/ES frames become training pairs for `cmr prepare`."""
    source = pred
    if checkpoint is not None:

        source = out / "predictions"
        with console.status("predicting masks"):
            predict_cmr(checkpoint, pred, source, native=True)
    thresholds = threshold or DEFAULT_THRESHOLDS
    label_map = parse_label_map(labels)
    table = read_manifest(manifest) if manifest is not None else None
    scores = pseudo_labels(source, reference, out, thresholds, table, label_map,
                           _spacing(spacing), reference_id)
    for _, row in threshold_summary(scores, thresholds).iterrows():
        console.print(f"<= {row['threshold_pct']:g} %: {int(row['patients'])} of "
                      f"{int(row['scored'])} patients")
    console.print(f"scores -> {out / 'confidence.csv'}")
    if pairs and not is_volume_table(source):
        _export_pairs(source, scores, out, thresholds, label_map,
                      "all" if all_frames else "phases")


def _export_pairs(source: Path, scores: Any, out: Path, thresholds: list[float],
                  label_map: Any, frames: str = "phases") -> None:

    with console.status("writing pseudo-label pairs"):
        export = export_pseudo_pairs(mask_index(source), scores, out, thresholds, label_map,
                                     frames)
    print_problems(export.problems)
    for name, path in export.subsets.items():
        console.print(f"{name}: {export.sizes[name]} image/mask pairs -> {path.parent}")


def prepare(
    source: Annotated[Path, typer.Argument(help="ACDC folder, HDF5 folder, DSB conversion, PNG "
                                                "pairs, pseudo-label subset or manifest CSV.")],
    out: Annotated[Path, typer.Option(help="Prepared store folder.")],
    size: Annotated[int, typer.Option(help="Slice side in pixels (the recipe's data.size).")]
    = 128,
    crop: Annotated[str, typer.Option(help="none, or centre:<fraction> of the larger side "
                                           "kept first.")] = "none",
    channels: Annotated[int, typer.Option(help="1 (grey) or 3 (ImageNet encoders).")] = 1,
    test_fraction: Annotated[float, typer.Option(help="Patients without a split held out as "
                                                      "test (the rest train).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the test hold-out.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")]
    = None,
    force: Annotated[bool, typer.Option(help="Recompute complete samples too.")] = False,
) -> None:
    """Short-axis stacks, cines or PNG slices into a prepared store for `cinelab train`."""
    with console.status(f"preparing {source}"):
        summary = prepare_cmr_folder(source, out, size, channels, crop, test_fraction, seed,
                                     workers, force)
    print_problems(summary.problems)
    console.print(f"prepared {summary.prepared}, already complete {summary.skipped}, "
                  f"failed {summary.failed} -> {out}")
    if summary.usable == 0:
        raise CinelabError(f"{source}: nothing usable was produced")


def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Segmentation checkpoint (model.pt).")],
    source: Annotated[Path, typer.Argument(help="Prepared store or raw CMR folder.")],
    out: Annotated[Path, typer.Option(help="Folder for masks/, predictions.csv, volumes.")],
    native: Annotated[bool, typer.Option(help="Labels on each source's own grid.")] = False,
    split: Annotated[str | None, typer.Option(help="Only this split of a store.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="nifti or npz.")] = "nifti",
    largest_component: Annotated[str, typer.Option(
        help="Keep a label's largest 3D region: auto (the labels the checkpoint's validation "
             "kept), all, none.")] = "auto",
    mirror: Annotated[bool, typer.Option(help="Mirror test-time augmentation.")] = False,
    ensemble: Annotated[list[Path] | None, typer.Option(
        help="Another checkpoint (e.g. another fold) averaged in (repeatable).")] = None,
) -> None:
    """Label every stack or cine (predictions.csv, problems.csv, run.json: the contract), then
    LV/RV volumes, EF and mass per patient or cine."""
    options = Options(split=split, extra={"native": native, "format": fmt,
                                          "largest_component": largest_component,
                                          "mirror": mirror,
                                          "ensemble": [str(p) for p in ensemble or []]})
    with console.status("predicting masks"):
        folder = cmr_pipeline.predict(checkpoint, source, out, options)
    index, skipped = read_predictions(folder), read_problems(folder)
    table, per_frame, problems = measure_mask_set(out)
    write_csv(table, out / "volumes.csv")
    write_csv(per_frame, out / "frame_volumes.csv")
    listed = {(p.file, p.error) for p in skipped}  # printed once, by finish_predictions
    print_problems([p for p in problems if (p.file, p.error) not in listed])
    finish_predictions(len(index), skipped, folder, source,
                       f"{len(index)} label files; volumes of {len(table)} patients or cines "
                       f"-> {out / 'volumes.csv'}")


def curve(
    recipe: Annotated[str, typer.Argument(help="Segmentation recipe (e.g. cmr-seg-cpu).")],
    data: Annotated[Path, typer.Option(help="Prepared store to train on.")],
    out: Annotated[Path, typer.Option(help="Folder: one run per size, the table and plot.")],
    sizes: Annotated[str, typer.Option(help="Subset sizes, e.g. 1,2,4,8 (fractions with "
                                            "--by fraction).")],
    by: Annotated[str, typer.Option(help="patients, fraction or images.")] = "patients",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")] = None,
) -> None:
    """Data-requirement curve: one training per subset size, validation Dice tabulated."""
    values = [float(v) if by == "fraction" else _int(v, "--sizes") for v in sizes.split(",")]
    loaded = load_recipe(recipe, set_ or [])
    check_curve_sizes(loaded, data, values, by)  # every size, before anything trains
    table = data_requirement_curve(loaded, data, values, out, by=by, max_epochs=max_epochs)
    for _, row in table.iterrows():
        dice = {k.removeprefix("val/"): f"{v:.3f}" for k, v in row.items()
                if str(k).startswith("val/dice") and isinstance(v, float)}
        console.print(f"{by} {row[by]}: {dice}")
    console.print(f"curve -> {out / CURVE_FILE}")


def check_curve_sizes(recipe: Any, store: Path | PreparedStore, sizes: list[Any],
                      by: str) -> None:
    """Refuse a data-requirement curve before its first training when any size cannot be
    drawn from the store's training split (InputError naming the size and the limit)."""
    if by not in CURVE_BY:
        raise InputError(None, "--by", f"one of {list(CURVE_BY)}", repr(by))
    store = store if isinstance(store, PreparedStore) else PreparedStore(store)
    train = store.split_ids("train")
    base = dict(getattr(recipe.data, "subset", None) or {})
    for size in sizes:
        subset = {**{k: v for k, v in base.items() if k not in CURVE_BY}, by: size}
        try:
            check_subset(subset)
            if by != "images":
                subset_ids(store, train, subset)
        except InputError as exc:
            raise InputError(store.root, "--sizes", f"sizes the training split allows "
                             f"({exc.expected})", f"{size} ({by})", "nothing was trained; "
                             "give smaller sizes") from exc


def _int(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(None, option, "whole numbers separated by commas", repr(text)) \
            from None


def evaluate(
    pred: Annotated[Path, typer.Argument(help="Mask set to evaluate (prediction, observer).")],
    truth: Annotated[Path, typer.Argument(help="Reference mask set.")],
    out: Annotated[Path, typer.Option(help="Folder for the tables, plots and report.")],
    name: Annotated[str, typer.Option(help="Name of PRED in the tables.")] = "model",
    also: Annotated[list[str] | None, typer.Option(help="Another mask set NAME=PATH "
                                                        "(repeatable).")] = None,
    also_labels: Annotated[list[str] | None, typer.Option(
        help="Label map of an --also set: NAME=LABELS (default: acdc).")] = None,
    pred_labels: LabelsOpt = "acdc",
    truth_labels: LabelsOpt = "acdc",
    spacing: SpacingOpt = None,
    resize: Annotated[bool, typer.Option(help="Resize predictions to the reference size.")]
    = False,
    report: Annotated[bool, typer.Option(help="Write report.html.")] = True,
) -> None:
    """Per-image confusion tables, Dice per class, EF agreement, plots and a report."""
    others = _named(also, "--also", "PATH")
    preds = {name: pred, **{k: Path(v) for k, v in others.items()}}
    label_texts = {name: pred_labels, **_named(also_labels, "--also-labels", "LABELS")}
    unknown = sorted(set(label_texts) - set(preds))
    if unknown:
        raise InputError(None, "--also-labels", f"names of mask sets {sorted(preds)}",
                         repr(unknown))
    label_maps = {k: parse_label_map(v) for k, v in label_texts.items()}
    result = evaluate_cmr(preds, truth, out, label_maps, parse_label_map(truth_labels),
                          _spacing(spacing), resize)
    print_problems(result.problems)
    for _, row in result.summary[result.summary["phase"] == "all"].iterrows():
        console.print(f"{row['model']} {row['class']}: Dice {row['mean']:.3f} (n {row['n']})")
    for _, row in result.ef_table.iterrows():
        console.print(f"{row['model']}: |EF difference| {row['mean']:.2f} ± {row['sd']:.2f}")
    if report:

        console.print(f"report -> {build_cmr_report(out)}")
    console.print(f"tables -> {out}")


def report(
    eval_dir: Annotated[Path, typer.Argument(help="Folder written by `cinelab cmr evaluate`.")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default EVAL_DIR/report.html).")]
    = None,
) -> None:
    """The self-contained HTML report of a mask comparison."""
    console.print(f"report -> {build_cmr_report(eval_dir, out)}")


COMMANDS = {"convert": convert, "prepare": prepare, "predict": predict, "curve": curve,
            "measure": measure, "pseudo": pseudo, "evaluate": evaluate, "report": report}


def register(apps: dict) -> None:
    """Add `synth cmr` and the `cmr` group's commands; the group is created (and left in
    apps['cmr'] for later modules) unless an earlier module made it."""
    apps["synth"].command("cmr")(friendly(synth_cmr))
    if CMR_APP not in apps:
        apps[CMR_APP] = typer.Typer(no_args_is_help=True, help=CMR_HELP)
        apps["main"].add_typer(apps[CMR_APP], name=CMR_APP)
    for name, fn in COMMANDS.items():
        apps[CMR_APP].command(name)(friendly(fn))
