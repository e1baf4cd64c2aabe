"""Cine MRI commands: `synth cmr` and the `cmr` group (convert, measure, pseudo, evaluate,
report). Thin: the API functions in synth/, formats/, measure/, infer/, evaluate/ and report/
do the work. The `cmr` typer group is left in `apps["cmr"]` for later command modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, friendly, print_problems
from cinelab.errors import CinelabError, InputError

CMR_APP = "cmr"
DEFAULT_THRESHOLDS = [5.0, 10.0, 15.0]

CMR_HELP = "Cine MRI short-axis: DSB cleaning, volumes/EF, pseudo-labels, mask comparison."

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
    import pandas as pd

    from cinelab.errors import Problem
    from cinelab.utils import write_csv

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
    views: Annotated[str | None, typer.Option(help="Long-axis views instead of short-axis "
                                                   "stacks, e.g. 3ch,4ch (with --target).")]
    = None,
    target: Annotated[str | None, typer.Option(help="What long-axis cines encode: age.")]
    = None,
) -> None:
    """Synthetic cine MRI: short-axis stacks with known LV/RV volumes and EF (DSB and ACDC
    layouts), or with --views 3ch,4ch --target age long-axis series whose anatomy ages."""
    from cinelab.synth.cmr import synth_cmr_cohort

    if views is not None or target is not None:
        from cinelab.commands.age import synth_cmr_lax

        synth_cmr_lax(out=out, n=n, seed=seed, views=views or "3ch,4ch",
                      target=target or "age", size=rows)
        return

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
    from cinelab.formats.dsb import convert_dsb

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
    import pandas as pd

    from cinelab.measure.cmr import ef_difference_table, measure_mask_set, paired_measures
    from cinelab.measure.volumes import parse_label_map
    from cinelab.utils import write_csv

    table, per_frame, problems = measure_mask_set(masks, parse_label_map(labels),
                                                  _spacing(spacing))
    write_csv(table, out / "volumes.csv")
    write_csv(per_frame, out / "frame_volumes.csv")
    _write_problems(problems, out / "problems.csv")
    print_problems(problems)
    if truth is not None:
        truth_df = pd.read_csv(truth, dtype={truth_id: str})
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
    labels: LabelsOpt = "acdc",
    spacing: SpacingOpt = None,
) -> None:
    """Pseudo-labels: confidence = larger |% deviation| of predicted EDV/ESV from reference."""
    from cinelab.data.manifest import read_manifest
    from cinelab.infer.pseudo import pseudo_labels, threshold_summary
    from cinelab.measure.volumes import parse_label_map

    source = pred
    if checkpoint is not None:
        from cinelab.infer.segment_volume import predict_cmr

        source = out / "predictions"
        with console.status("predicting masks"):
            predict_cmr(checkpoint, pred, source)
    thresholds = threshold or DEFAULT_THRESHOLDS
    table = read_manifest(manifest) if manifest is not None else None
    scores = pseudo_labels(source, reference, out, thresholds, table, parse_label_map(labels),
                           _spacing(spacing), reference_id)
    for _, row in threshold_summary(scores, thresholds).iterrows():
        console.print(f"<= {row['threshold_pct']:g} %: {int(row['patients'])} of "
                      f"{int(row['scored'])} patients")
    console.print(f"scores -> {out / 'confidence.csv'}")


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
    from cinelab.evaluate.cmr import evaluate_cmr
    from cinelab.measure.volumes import parse_label_map

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
        from cinelab.report.cmr import build_cmr_report

        console.print(f"report -> {build_cmr_report(out)}")
    console.print(f"tables -> {out}")


def report(
    eval_dir: Annotated[Path, typer.Argument(help="Folder written by `cinelab cmr evaluate`.")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default EVAL_DIR/report.html).")]
    = None,
) -> None:
    """The self-contained HTML report of a mask comparison."""
    from cinelab.report.cmr import build_cmr_report

    console.print(f"report -> {build_cmr_report(eval_dir, out)}")


COMMANDS = {"convert": convert, "measure": measure, "pseudo": pseudo, "evaluate": evaluate,
            "report": report}


def register(apps: dict) -> None:
    """Add `synth cmr` and the `cmr` group's commands; the group is created (and left in
    apps['cmr'] for later modules) unless an earlier module made it."""
    apps["synth"].command("cmr")(friendly(synth_cmr))
    if CMR_APP not in apps:
        apps[CMR_APP] = typer.Typer(no_args_is_help=True, help=CMR_HELP)
        apps["main"].add_typer(apps[CMR_APP], name=CMR_APP)
    for name, fn in COMMANDS.items():
        apps[CMR_APP].command(name)(friendly(fn))
