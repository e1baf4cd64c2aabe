"""`cinelab cxr ...`: the chest X-ray ensemble (DeepCOVID-XR), step by step or at once.

    cinelab synth cxr --out RAW --n 300 --size 160
    cinelab cxr prepare RAW --out STORES --recipe cxr-ensemble-cpu [--train-lung]
    cinelab cxr train-ensemble cxr-ensemble-cpu --stores STORES --out ENS [--processes 2]
    cinelab cxr train-ensemble cxr-ensemble-cpu --stores STORES --out ENS --member NAME
    cinelab cxr predict ENS RAW/Test --out PRED --tta 8
    cinelab cxr evaluate PRED --labels RAW/Test --out EVAL
    cinelab cxr gradcam ENS RAW/Test --out CAMS --limit 6
    cinelab cxr report EVAL --ensemble ENS --gradcam CAMS --out report.html
    cinelab cxr run RAW --out OUT                   (all of the above on a folder tree)

The generic verbs do the same through the pipeline registry: `cinelab predict ENS INPUT`,
`cinelab evaluate PRED`, `cinelab explain ENS INPUT` (= `cxr gradcam`), `cinelab report EVAL`,
`cinelab run cxr RAW` (= `cxr run`); the cxr aliases stay for one release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cinelab.cliutil import console, finish_predictions, friendly, print_problems
from cinelab.errors import CinelabError
from cinelab.infer.contract import PREDICTIONS_FILE, read_predictions, read_problems
from cinelab.models.xrv import import_torchxrayvision
from cinelab.pipelines.cxr.cohort import load_cxr_cohort
from cinelab.pipelines.cxr.ensemble import train_ensemble
from cinelab.pipelines.cxr.evaluate import evaluate
from cinelab.pipelines.cxr.gradcam import DEFAULT_GRADCAMS, write_gradcams
from cinelab.pipelines.cxr.ood import predict_with_ood
from cinelab.pipelines.cxr.predict import list_inputs
from cinelab.pipelines.cxr.run import (
    DEFAULT_RECIPE,
    DEFAULT_TTA,
    CxrPaths,
    CxrSettings,
    default_lung_model,
    prepare_stores,
    run_cxr,
)
from cinelab.pipelines.registry import Options
from cinelab.report.classification import build_classification_report, calibration_lines
from cinelab.train.recipe import load_recipe

cxr_app = typer.Typer(no_args_is_help=True, help="Chest X-ray ensemble (DeepCOVID-XR): lung "
                      "crop stores, ensemble training, prediction with TTA, evaluation, "
                      "Grad-CAM, report.")


# --------------------------------------------------------------------------- commands


@cxr_app.command("prepare")
@friendly
def prepare_cmd(
    source: Annotated[Path, typer.Argument(help="Folder tree, manifest CSV or image folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the <crop>-<size> stores.")],
    recipe: Annotated[str, typer.Option(help="Ensemble recipe (sizes, crops, channels).")]
    = DEFAULT_RECIPE,
    labels: Annotated[Path | None, typer.Option(help="Label CSV (images under SOURCE).")]
    = None,
    label_column: Annotated[str, typer.Option(help="The label CSV's label column.")]
    = "auto",
    positive: Annotated[list[str] | None, typer.Option(help="Text label value meaning "
                                                       "positive, e.g. COVID-19 "
                                                       "(repeatable).")] = None,
    lung_model: Annotated[Path | None, typer.Option(help="Lung U-Net for images without "
                                                    "a mask file.")] = None,
    train_lung: Annotated[bool, typer.Option(help="Train the lung U-Net on the images "
                                             "with masks first.")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Recipe override.")] = None,
) -> None:
    """Every prepared store the ensemble needs: lung crop and whole image at each size."""
    cohort = load_cxr_cohort(source, labels, label_column, positive)
    print_problems(cohort.problems)
    if cohort.manifest.empty:
        raise CinelabError(f"{labels or source}: no usable image (see the problems above)")
    stores, mask_problems = prepare_stores(cohort, out, recipe, lung_model, train_lung,
                                           workers, set_)
    print_problems(mask_problems + stores.problems)
    for (crop, size), path in stores.stores.items():
        console.print(f"{crop} {size} px -> {path}")
    if len(stores.crops):
        console.print(f"lung crop applied to {int(stores.crops['crop_applied'].sum())} of "
                      f"{len(stores.crops)} images (reasons in {out / 'crops.csv'})")


@cxr_app.command("train-ensemble")
@friendly
def train_ensemble_cmd(
    recipe: Annotated[str, typer.Argument(help="Ensemble recipe name or YAML path.")],
    stores: Annotated[Path, typer.Option(help="Folder written by `cinelab cxr prepare`.")],
    out: Annotated[Path, typer.Option(help="Ensemble folder (members/, ensemble.json).")],
    member: Annotated[list[str] | None, typer.Option(help="Train only this member "
                                                     "(repeatable).")] = None,
    processes: Annotated[int, typer.Option(help="Members trained at once.")] = 1,
    method: Annotated[str, typer.Option(
        help="Weights: bmc (Bayesian model combination), search (the paper's best of N "
             "random draws by validation AUC), nnls, logloss or mean.")] = "bmc",
    lung_model: Annotated[Path | None, typer.Option(help="Lung U-Net kept with the "
                                                    "ensemble for predict.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
) -> None:
    """Train every member (finished ones are skipped), then fit the ensemble weights."""
    run = train_ensemble(load_recipe(recipe, set_ or []), stores, out, processes=processes,
                         members=member or None, method=method, max_epochs=max_epochs,
                         lung_model=lung_model or default_lung_model(stores))
    console.print(f"trained {len(run.trained)}, already finished {len(run.skipped)}")
    if run.weights is None:
        console.print("weights not fitted yet: some members are unfinished")
        return
    for name, w in zip(run.weights.members or [], run.weights.weights, strict=True):
        console.print(f"  {name}: weight {w:.3f}")
    console.print(f"ensemble -> {out / 'ensemble.json'}; validation AUC "
                  f"{run.weights.details.get('val_auc')}")


@cxr_app.command("predict")
@friendly
def predict_cmd(
    ensemble: Annotated[Path, typer.Argument(help="Ensemble folder.")],
    source: Annotated[Path, typer.Argument(help="A radiograph or a folder of them.")],
    out: Annotated[Path, typer.Option(help="Folder for predictions.csv and problems.csv.")],
    tta: Annotated[int, typer.Option(help="Views per image (1: no TTA).")] = 1,
    seed: Annotated[int, typer.Option(help="TTA seed.")] = 0,
    threshold: Annotated[float | None, typer.Option(help="Label threshold (default: the "
                                                    "ensemble's validation threshold).")]
    = None,
    masks: Annotated[str, typer.Option(help="Lung masks: auto, unet, files or none.")]
    = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Ensemble probability for every image (all preprocessing included); no prompts. The
    same code path as `cinelab predict ENSEMBLE SOURCE`: calibrated probability, member
    disagreement and OOD flag when `cinelab calibrate` fitted them; exit 3 when an image
    was skipped (listed in problems.csv)."""
    extra = {"tta": tta, "masks": masks, **({} if threshold is None else
                                            {"threshold": threshold})}
    folder = predict_with_ood(ensemble, source, out, Options(seed=seed, batch_size=batch_size,
                                                             device=device, extra=extra))
    table, problems = read_predictions(folder), read_problems(folder)
    finish_predictions(len(table), problems, folder, source,
                       f"{len(table)} images predicted, {len(problems)} skipped -> "
                       f"{folder / PREDICTIONS_FILE}")


@cxr_app.command("evaluate")
@friendly
def evaluate_cmd(
    predictions: Annotated[Path, typer.Argument(help="predictions.csv or its folder.")],
    out: Annotated[Path, typer.Option(help="Evaluation folder.")],
    labels: Annotated[Path | None, typer.Option(help="Manifest, label CSV or folder tree.")]
    = None,
    threshold: Annotated[float | None, typer.Option(help="Fixed threshold.")] = None,
    tune_on: Annotated[Path | None, typer.Option(help="Validation predictions for a Youden "
                                                 "threshold.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
) -> None:
    """Confusion matrix, ROC/AUC, sensitivity, specificity, accuracy with bootstrap CIs."""
    m = evaluate(predictions.parent if predictions.is_file() else predictions, out,
                 Options(labels=labels, extra={"threshold": threshold, "tune_on": tune_on,
                                               "n_boot": n_boot}))
    console.print(f"n={m['n']}: AUC {m['auc']:.3f}, sensitivity {m['sensitivity']:.3f}, "
                  f"specificity {m['specificity']:.3f}, accuracy {m['accuracy']:.3f} at "
                  f"{m['threshold']:.3f} -> {out}")


@cxr_app.command("gradcam")
@friendly
def gradcam_cmd(
    ensemble: Annotated[Path, typer.Argument(help="Ensemble folder.")],
    source: Annotated[Path, typer.Argument(help="A radiograph or a folder of them.")],
    out: Annotated[Path, typer.Option(help="Folder for the overlay PNGs.")],
    member: Annotated[str | None, typer.Option(help="One member (default: the weighted "
                                               "ensemble).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many images.")] = DEFAULT_GRADCAMS,
) -> None:
    """Grad-CAM of a member or of the weighted ensemble, over the original image (alias of
    `cinelab explain ENSEMBLE SOURCE`)."""
    _, files, _ = list_inputs(source)
    written, problems = write_gradcams(ensemble, files, out, member, limit)
    print_problems(problems)
    console.print(f"{len(written)} Grad-CAM overlays -> {out}")


@cxr_app.command("report")
@friendly
def report_cmd(
    evaluation: Annotated[Path, typer.Argument(help="Folder written by `cxr evaluate`.")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")],
    ensemble: Annotated[Path | None, typer.Option(help="Ensemble folder (weights).")] = None,
    gradcam: Annotated[Path | None, typer.Option(help="Folder of Grad-CAM PNGs.")] = None,
) -> None:
    """A self-contained HTML page: metrics, members, ROC, confusion, Grad-CAM."""
    console.print(f"report -> {build_classification_report(evaluation, out, ensemble, gradcam)}")


@cxr_app.command("run")
@friendly
def run_cmd(
    raw: Annotated[Path, typer.Argument(help="DeepCOVID-XR folder tree (Train/Validation/"
                                        "Test, Positive/Negative).")],
    out: Annotated[Path, typer.Option(help="Output folder for every step.")],
    recipe: Annotated[str, typer.Option(help="Ensemble recipe.")] = DEFAULT_RECIPE,
    tta: Annotated[int, typer.Option(help="TTA views per test image.")] = DEFAULT_TTA,
    processes: Annotated[int, typer.Option(help="Members trained at once.")] = 1,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")]
    = None,
    train_lung: Annotated[bool, typer.Option(help="Train the lung U-Net for the crops.")]
    = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Recipe override.")] = None,
) -> None:
    """The whole chain on a folder tree: stores, ensemble, test predictions, evaluation,
    Grad-CAM and report (resumable: finished steps are reused; alias of `cinelab run cxr`)."""
    settings = CxrSettings(recipe, tta, processes, max_epochs, train_lung, tuple(set_ or ()))
    m = run_cxr(raw, out, settings)
    for line in calibration_lines(m):  # calibrated, or the note why not
        console.print(line, style=None if m.get("calibrated") else "yellow",
                      highlight=False, markup=False)
    console.print(f"test AUC {m['auc']:.3f} ({m['auc_ci_low']:.3f}-{m['auc_ci_high']:.3f}), "
                  f"sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f}")
    console.print(f"report -> {CxrPaths(Path(out)).report}")


@friendly
def import_xrv_cmd(
    source: Annotated[Path, typer.Argument(help="torchxrayvision state_dict file "
                                           "(torch.save(model.state_dict(), FILE)).")],
    out: Annotated[Path, typer.Option(help="Weights file to write (for model.pretrained).")],
    arch: Annotated[str, typer.Option(help="densenet121 (xrv.models.DenseNet) or resnet50 "
                                      "(xrv.models.ResNet).")] = "densenet121",
) -> None:
    """Import torchxrayvision weights into cinelab's timm model of the same architecture;
    train with --set ensemble.pretrained.<arch>=OUT (or model.pretrained=OUT)."""
    written = import_torchxrayvision(source, out, arch)
    console.print(f"{arch} -> {written} (use: --set ensemble.pretrained.{arch}={written})")


def register(apps: dict[str, typer.Typer]) -> None:
    """Add `cinelab cxr ...` to the main app and `cinelab import torchxrayvision`."""
    apps["main"].add_typer(cxr_app, name="cxr")
    apps["import"].command("torchxrayvision")(import_xrv_cmd)
