"""The cine MRI commands end to end on tiny synthetic cohorts (typer CliRunner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.io.nifti import write_volume
from cinelab.pipelines.cmr.mask_sets import load_mask, mask_index

runner = CliRunner()


def _run(args: list[str], code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmr_cli") / "cohort"
    _run(["synth", "cmr", "--out", out, "--n", 3, "--seed", 1, "--layout", "both",
          "--no-defects", "--frames", 4, "--rows", 40, "--cols", 36])
    return out


def test_synth_and_convert(cohort: Path, tmp_path: Path) -> None:
    truth = pd.read_csv(cohort / "truth.csv", dtype={"pid": str})
    assert truth["acdc_id"].tolist() == ["patient001", "patient002", "patient003"]
    assert sorted(p.name for p in (cohort / "acdc").glob("*/patient*")) == \
        truth["acdc_id"].tolist()
    out = _run(["cmr", "convert", cohort / "dsb", "--out", tmp_path / "conv", "--max-size", 64])
    assert "3 cines, 0 logged problem(s), 0 skipped" in out
    manifest = pd.read_csv(tmp_path / "conv" / "manifest.csv", dtype={"sample_id": str})
    merged = manifest.merge(truth, left_on="sample_id", right_on="pid")
    assert len(merged) == 3  # one clean cine per patient, geometry and volumes kept
    np.testing.assert_array_equal(merged["slices_x"], merged["slices_y"])
    np.testing.assert_array_equal(merged["frames_x"], 4)
    np.testing.assert_allclose(merged["pixelSpacingX"], merged["pixel_spacing"], rtol=1e-5)
    np.testing.assert_allclose(merged["EDV_x"], merged["EDV_y"], atol=0.01)
    assert merged["split"].tolist() == ["train", "train", "test"]  # train.csv / solution.csv
    assert pd.read_csv(tmp_path / "conv" / "conversion_log.tsv", sep="\t").empty
    dims = pd.read_csv(tmp_path / "conv" / "patient_dimensions.tsv", sep="\t")
    assert dims[["X", "Y"]].values.tolist() == [[36, 40]] * 3


def test_measure_against_truth(cohort: Path, tmp_path: Path) -> None:
    out = _run(["cmr", "measure", cohort / "acdc", "--out", tmp_path,
                "--truth", cohort / "truth.csv", "--truth-id", "acdc_id"])
    assert "3 patients measured" in out
    table = pd.read_csv(tmp_path / "volumes.csv")
    truth = pd.read_csv(cohort / "truth.csv")
    np.testing.assert_allclose(table["EDV"], truth["EDV"], rtol=0.03)
    np.testing.assert_allclose(table["LVM"], truth["LVM"], rtol=0.03)
    ef = pd.read_csv(tmp_path / "ef_differences.csv")
    assert ef["mean"].iloc[0] < 0.01
    frames = pd.read_csv(tmp_path / "frame_volumes.csv")  # the ED and ES stack of each
    assert frames.groupby("patient_id").size().tolist() == [2, 2, 2]
    np.testing.assert_allclose(frames.groupby("patient_id")["LV_ml"].max(), truth["EDV"],
                               rtol=0.03)


def test_pseudo_from_volumes(cohort: Path, tmp_path: Path) -> None:
    _run(["cmr", "measure", cohort / "acdc", "--out", tmp_path / "m"])
    out = _run(["cmr", "pseudo", tmp_path / "m" / "volumes.csv", "--reference",
                cohort / "truth.csv", "--reference-id", "acdc_id", "--out", tmp_path / "p",
                "--threshold", 5])
    assert "3 of 3 patients" in out
    ids = (tmp_path / "p" / "confident_5pct.txt").read_text().split()
    assert sorted(ids) == ["patient001", "patient002", "patient003"]


@pytest.mark.slow
def test_evaluate_and_report(cohort: Path, tmp_path: Path) -> None:
    for _, row in mask_index(cohort / "acdc").iterrows():  # an observer with model classes
        labels, spacing = load_mask(row["mask_path"])
        model = np.array([0, 3, 2, 1], np.uint8)[labels]
        write_volume(tmp_path / "net" / f"{row['image_id']}.nii.gz", model, spacing)
    out = _run(["cmr", "evaluate", tmp_path / "net", cohort / "acdc", "--out", tmp_path / "ev",
                "--name", "net", "--pred-labels", "lv=1,myo=2,rv=3",
                "--also", f"self={cohort / 'acdc'}", "--also", f"twin={tmp_path / 'net'}",
                "--also-labels", "twin=lv=1,myo=2,rv=3"])
    assert "net LV: Dice 1.000" in out and "self MYO: Dice 1.000" in out
    assert (tmp_path / "ev" / "report.html").is_file()
    confusion = pd.read_csv(tmp_path / "ev" / "confusion.csv")
    assert set(confusion["model"]) == {"net", "self", "twin"}
    assert (confusion["FP"] == 0).all() and (confusion["FN"] == 0).all()
    _run(["cmr", "report", tmp_path / "ev", "--out", tmp_path / "r.html"])
    html = (tmp_path / "r.html").read_text()
    assert "patient001" in html and "<img" in html and "net" in html


def test_friendly_errors(tmp_path: Path) -> None:
    out = _run(["cmr", "measure", tmp_path, "--out", tmp_path / "m"], code=2)
    assert "error:" in out
    out = _run(["cmr", "measure", tmp_path, "--out", tmp_path / "m", "--spacing", "1,2"],
               code=2)
    assert "--spacing" in out
    assert "error:" in _run(["synth", "cmr", "--out", tmp_path / "s", "--layout", "x"], code=2)
    out = _run(["cmr", "evaluate", tmp_path, tmp_path, "--out", tmp_path / "e",
                "--also-labels", "nobody=acdc"], code=2)
    assert "--also-labels" in out


def test_synth_cmr_long_axis_views_moved_to_cmr_lax(tmp_path: Path) -> None:
    """Long-axis series are the age pipeline's `synth cmr-lax`; `synth cmr` says so."""
    out = _run(["synth", "cmr", "--out", tmp_path / "lax", "--views", "3ch,4ch"], code=2)
    assert "--views" in out
    assert "cmr-lax" in _run(["synth", "cmr", "--help"])


TINY = ["--set", "data.size=32", "--set", "data.augment.crop=null", "--set",
        "data.batch_size=4", "--set", "model.kwargs.channels=[8, 16, 32]", "--set",
        "model.kwargs.strides=[2, 2]", "--set", "trainer.val_every=1"]


@pytest.mark.slow
def test_pseudo_label_training_chain(tmp_path: Path) -> None:
    """ACDC store -> train -> predict DSB cines -> confidence -> ED/ES pairs -> store ->
    transfer training from the first model; and a data-requirement curve."""
    from cinelab.data.store import PreparedStore
    from cinelab.train.checkpoint import read_checkpoint

    _run(["synth", "cmr", "--out", tmp_path / "c", "--n", 4, "--seed", 1, "--layout", "both",
          "--no-defects", "--frames", 6, "--rows", 48, "--cols", 40])
    _run(["cmr", "convert", tmp_path / "c" / "dsb", "--out", tmp_path / "conv",
          "--max-size", 64])
    assert "prepared 8" in _run(["cmr", "prepare", tmp_path / "c" / "acdc", "--out",
                                 tmp_path / "store", "--size", 32, "--workers", 1,
                                 "--test-fraction", 0.25])
    store = PreparedStore(tmp_path / "store")
    assert store.manifest.groupby("split")["patient_id"].nunique().to_dict() == {"test": 1,
                                                                                "train": 3}
    _run(["train", "cmr-seg-cpu", "--data", tmp_path / "store", "--out", tmp_path / "run",
          "--max-epochs", 40, *TINY])
    model = tmp_path / "run" / "model.pt"

    out = _run(["cmr", "predict", model, tmp_path / "conv", "--out", tmp_path / "pred",
                "--native"])
    assert "4 label files; volumes of 4 patients or cines" in out
    volumes = pd.read_csv(tmp_path / "pred" / "volumes.csv")
    labels, _ = load_mask(tmp_path / "pred" / "masks" / "1.nii.gz")
    conv = pd.read_csv(tmp_path / "conv" / "manifest.csv", dtype={"sample_id": str})
    first = conv.set_index("sample_id").loc["1"]
    assert labels.shape[:2] == (first["frames"], first["slices"])  # (T, Z, ...) native grid
    assert (volumes["EDV"] >= volumes["ESV"]).all()

    out = _run(["cmr", "pseudo", tmp_path / "conv", "--checkpoint", model, "--reference",
                tmp_path / "c" / "dsb", "--out", tmp_path / "p", "--threshold", 1000])
    scores = pd.read_csv(tmp_path / "p" / "confidence.csv")
    assert len(scores) == 4 and scores["confidence_pct"].notna().all()
    pairs = pd.read_csv(tmp_path / "p" / "confident_1000pct" / "manifest.csv",
                        dtype={"patient_id": str})
    assert f"confident_1000pct: {len(pairs)} image/mask pairs" in out
    assert set(pairs["phase"]) == {"ED", "ES"} and pairs["patient_id"].nunique() >= 3
    lv = pairs.groupby(["unit_id", "phase"])["lv_pixels"].sum().unstack()
    assert (lv["ED"] > lv["ES"]).all()  # ED and ES chosen by predicted LV volume

    assert f"prepared {len(pairs)}" in _run(["cmr", "prepare", tmp_path / "p" /
                                             "confident_1000pct", "--out", tmp_path / "ps",
                                             "--size", 32, "--workers", 1])
    _run(["train", "cmr-seg-cpu", "--data", tmp_path / "ps", "--out", tmp_path / "prun",
          "--max-epochs", 1, *TINY, "--set", f"model.pretrained={model}"])
    extra = read_checkpoint(tmp_path / "prun" / "model.pt")["extra"]
    assert extra["start_weights"]["loaded"] > 0 and not extra["start_weights"]["mismatched"]
    assert extra["train_images"] + extra["val_images"] <= len(pairs)

    out = _run(["cmr", "curve", "cmr-seg-cpu", "--data", tmp_path / "store", "--out",
                tmp_path / "curve", "--sizes", "1,2", "--max-epochs", 1, *TINY])
    curve = pd.read_csv(tmp_path / "curve" / "data_requirement.csv")
    assert curve["patients"].tolist() == [1, 2] and curve["train_patients"].tolist() == [1, 2]
    assert (tmp_path / "curve" / "data_requirement.png").read_bytes()[:4] == b"\x89PNG"


def test_curve_refuses_impossible_sizes_before_training(tmp_path: Path) -> None:
    from cinelab.pipelines.cmr.acdc import read_acdc
    from cinelab.pipelines.cmr.prepare import prepare_cmr
    from cinelab.pipelines.cmr.synth import synth_cmr_cohort

    synth = synth_cmr_cohort(tmp_path / "s", n=3, seed=2, layout="acdc", size=(32, 32),
                             n_frames=4)
    manifest, _ = read_acdc(synth.acdc_root)
    patients = sorted(manifest["patient_id"].unique())
    manifest["split"] = ["train" if p != patients[-1] else "val" for p in
                         manifest["patient_id"]]
    prepare_cmr(manifest, tmp_path / "store", size=32, workers=1)
    out = _run(["cmr", "curve", "cmr-seg-cpu", "--data", tmp_path / "store", "--out",
                tmp_path / "curve", "--sizes", "1,5,2", "--max-epochs", 1], code=2)
    assert "--sizes" in out and "at most 2" in out and "5 (patients)" in out
    assert not (tmp_path / "curve" / "patients_1").exists()  # nothing trained first
    out = _run(["cmr", "curve", "cmr-seg-cpu", "--data", tmp_path / "store", "--out",
                tmp_path / "curve", "--sizes", "0.5,1.5", "--by", "fraction"], code=2)
    assert "1.5 (fraction)" in out and not (tmp_path / "curve").exists()
