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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cinelab.cliutil import console, friendly, print_problems
from cinelab.errors import CinelabError, InputError

DEFAULT_RECIPE = "cxr-ensemble-cpu"
DEFAULT_TTA = 8
DEFAULT_GRADCAMS = 6
LUNG_DIR = "lung"
LUNG_MODEL = Path(LUNG_DIR) / "run" / "model.pt"  # where prepare --train-lung leaves it
TEST_SPLIT, VAL_SPLIT = "test", "val"

cxr_app = typer.Typer(no_args_is_help=True, help="Chest X-ray ensemble (DeepCOVID-XR): lung "
                      "crop stores, ensemble training, prediction with TTA, evaluation, "
                      "Grad-CAM, report.")


@dataclass
class CxrPaths:
    """Where `run_cxr` writes each step (under one output folder)."""

    out: Path

    @property
    def stores(self) -> Path:
        return self.out / "stores"

    @property
    def ensemble(self) -> Path:
        return self.out / "ensemble"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions"

    @property
    def val_predictions(self) -> Path:
        return self.out / "predictions-val"

    @property
    def evaluation(self) -> Path:
        return self.out / "evaluation"

    @property
    def gradcam(self) -> Path:
        return self.out / "gradcam"

    @property
    def report(self) -> Path:
        return self.out / "report.html"


# --------------------------------------------------------------------------- API glue


def load_cxr_cohort(source: str | Path, labels: str | Path | None = None) -> Any:
    """A CxrCohort from a folder tree, a label CSV (images under `source`) or a manifest."""
    from cinelab.pipelines.cxr.layout import CxrCohort, read_cxr_folders, read_cxr_labels

    source = Path(source)
    if labels is not None:
        return read_cxr_labels(labels, image_dir=source)
    if source.is_file() or (source / "manifest.csv").is_file():
        from cinelab.data.manifest import read_manifest

        path = source if source.is_file() else source / "manifest.csv"
        return CxrCohort(read_manifest(path), [], path.parent)
    return read_cxr_folders(source)


def prepare_stores(cohort: Any, out: str | Path, recipe: str = DEFAULT_RECIPE,
                   lung_model: str | Path | None = None, train_lung: bool = False,
                   workers: int | None = None, overrides: list[str] | None = None) -> Any:
    """Lung masks for rows without one (a given or freshly trained U-Net), then every
    (crop, size) store the recipe's members need."""
    from cinelab.pipelines.cxr.prepare import predict_lung_masks, stores_for_recipe, train_lung_unet
    from cinelab.train.recipe import load_recipe

    out = Path(out)
    manifest = cohort.manifest
    if train_lung and lung_model is None:
        lung_model = train_lung_unet(manifest, out / LUNG_DIR, workers=workers)
    if lung_model is not None:
        manifest, problems = predict_lung_masks(manifest, lung_model, out / LUNG_DIR / "masks")
        print_problems(problems)
    return stores_for_recipe(load_recipe(recipe, overrides or []), manifest, out,
                             workers=workers)


def default_lung_model(stores: Path) -> Path | None:
    """The U-Net `prepare --train-lung` trained beside the stores, if any."""
    path = Path(stores) / LUNG_MODEL
    return path if path.is_file() else None


def split_files(cohort: Any, split: str = TEST_SPLIT) -> tuple[list[Path], list[str]]:
    """(paths, sample ids) of one split of a cohort manifest."""
    m = cohort.manifest
    rows = m[m["split"].astype(str) == split]
    if rows.empty:
        raise InputError(None, "split", f"rows with split '{split}'",
                         f"splits {sorted(m['split'].astype(str).unique())}")
    return [Path(p) for p in rows["path"]], rows["sample_id"].astype(str).tolist()


def most_positive(predictions: Any, limit: int = DEFAULT_GRADCAMS) -> list[Path]:
    """Files of the `limit` highest ensemble probabilities (Grad-CAM examples)."""
    top = predictions.sort_values("probability", ascending=False).head(limit)
    return [Path(p) for p in top["file"]]


def write_gradcams(ensemble: Any, files: list[Path], out: str | Path,
                   member: str | None = None, limit: int = DEFAULT_GRADCAMS) -> list[Path]:
    """Grad-CAM overlays (PNG) of the first `limit` readable files; bad files skipped."""
    from cinelab.errors import Problem
    from cinelab.pipelines.cxr.predict import cxr_gradcam, load_cxr_ensemble

    ens = load_cxr_ensemble(ensemble) if not hasattr(ensemble, "members") else ensemble
    written, problems = [], []
    for path in files:
        if len(written) >= limit:
            break
        target = Path(out) / f"{Path(path).stem}{'-' + member if member else ''}.png"
        try:
            cxr_gradcam(ens, path, target, member=member)
            written.append(target)
        except Exception as exc:  # one bad file is reported and skipped
            problems.append(Problem.from_exception(path, "gradcam", exc))
    print_problems(problems)
    return written


def run_cxr(raw: str | Path, out: str | Path, recipe: str = DEFAULT_RECIPE,
            tta: int = DEFAULT_TTA, processes: int = 1, max_epochs: int | None = None,
            train_lung: bool = False, overrides: list[str] | None = None) -> CxrPaths:
    """Folder tree -> stores -> ensemble -> validation and test predictions (TTA) ->
    evaluation at the threshold tuned on the validation predictions (same TTA), Grad-CAM
    and report; training resumes (finished members are reused)."""
    from cinelab.evaluate.classification import evaluate_classification
    from cinelab.pipelines.cxr.predict import load_cxr_ensemble, predict_cxr
    from cinelab.report.classification import build_classification_report
    from cinelab.pipelines.cxr.ensemble import train_ensemble
    from cinelab.train.recipe import load_recipe

    paths = CxrPaths(Path(out))
    cohort = load_cxr_cohort(raw)
    prepare_stores(cohort, paths.stores, recipe, train_lung=train_lung, overrides=overrides)
    train_ensemble(load_recipe(recipe, overrides or []), paths.stores, paths.ensemble,
                   processes=processes, max_epochs=max_epochs,
                   lung_model=default_lung_model(paths.stores))
    ens = load_cxr_ensemble(paths.ensemble)
    val_files, val_ids = split_files(cohort, VAL_SPLIT)
    predict_cxr(ens, val_files, paths.val_predictions, tta=tta, ids=val_ids)
    files, ids = split_files(cohort)
    test = predict_cxr(ens, files, paths.predictions, tta=tta, ids=ids).table
    evaluate_classification(paths.predictions / "predictions.csv", paths.evaluation,
                            labels=cohort.manifest,
                            tune_on=paths.val_predictions / "predictions.csv")
    write_gradcams(ens, most_positive(test), paths.gradcam)
    build_classification_report(paths.evaluation, paths.report, paths.ensemble, paths.gradcam)
    return paths


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
    lung_model: Annotated[Path | None, typer.Option(help="Lung U-Net for images without "
                                                    "a mask file.")] = None,
    train_lung: Annotated[bool, typer.Option(help="Train the lung U-Net on the images "
                                             "with masks first.")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes (default: one per core).")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Recipe override.")] = None,
) -> None:
    """Every prepared store the ensemble needs: lung crop and whole image at each size."""
    cohort = load_cxr_cohort(source, labels)
    print_problems(cohort.problems)
    stores = prepare_stores(cohort, out, recipe, lung_model, train_lung, workers, set_)
    print_problems(stores.problems)
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
    method: Annotated[str, typer.Option(help="Weights: bmc, nnls, logloss or mean.")] = "bmc",
    lung_model: Annotated[Path | None, typer.Option(help="Lung U-Net kept with the "
                                                    "ensemble for predict.")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override trainer.max_epochs.")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: optim.lr=3e-4")]
    = None,
) -> None:
    """Train every member (finished ones are skipped), then fit the ensemble weights."""
    from cinelab.pipelines.cxr.ensemble import train_ensemble
    from cinelab.train.recipe import load_recipe

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
    """Ensemble probability for every image (all preprocessing included); no prompts."""
    from cinelab.pipelines.cxr.predict import predict_cxr

    result = predict_cxr(ensemble, source, out, tta=tta, seed=seed, threshold=threshold,
                         mask_source=masks, batch_size=batch_size, device=device)
    print_problems(result.problems)
    console.print(f"{len(result.table)} images predicted, {len(result.problems)} skipped "
                  f"-> {result.files['predictions']}")
    if result.table.empty:
        raise CinelabError(f"{source}: no image could be predicted")


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
    from cinelab.evaluate.classification import evaluate_classification

    if predictions.is_dir():
        predictions = predictions / "predictions.csv"
    ev = evaluate_classification(predictions, out, labels=labels, threshold=threshold,
                                 tune_on=tune_on, n_boot=n_boot)
    r = ev.report
    console.print(f"n={r['n']}: AUC {r['auc']['value']:.3f}, sensitivity "
                  f"{r['sensitivity']['value']:.3f}, specificity {r['specificity']['value']:.3f}"
                  f", accuracy {r['accuracy']['value']:.3f} at {r['threshold']:.3f} -> {out}")


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
    """Grad-CAM of a member or of the weighted ensemble, over the original image."""
    from cinelab.pipelines.cxr.predict import list_inputs

    _, files, _ = list_inputs(source)
    written = write_gradcams(ensemble, files, out, member, limit)
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
    from cinelab.report.classification import build_classification_report

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
    Grad-CAM and report (resumable: finished steps are reused)."""
    paths = run_cxr(raw, out, recipe, tta, processes, max_epochs, train_lung, set_)
    console.print(f"report -> {paths.report}")


def register(apps: dict[str, typer.Typer]) -> None:
    """Add `cinelab cxr ...` to the main app."""
    apps["main"].add_typer(cxr_app, name="cxr")
