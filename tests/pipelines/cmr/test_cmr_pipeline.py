"""The cmr Pipeline: its layouts (each detected alone), predict through the contract (volumes
checked against the written masks), evaluate against known truth, and the whole run learning
a synthetic ACDC-like cohort."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.errors import InputError
from cinelab.formats.ingest import LAYOUTS, detect_layout, ingest
from cinelab.infer.contract import read_predictions, read_run, write_contract
from cinelab.io.nifti import read_volume, write_volume
from cinelab.models.registry import register_model
from cinelab.pipelines.cmr.acdc import LV_LABEL, MYO_LABEL, RV_LABEL, read_info_cfg
from cinelab.pipelines.cmr.dsb import convert_dsb
from cinelab.pipelines.cmr.layouts import CMR_LAYOUTS
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from cinelab.utils import read_json

SIZE = 32
CLASSES = {"LV": LV_LABEL, "MYO": MYO_LABEL, "RV": RV_LABEL}


class Bright(nn.Module):
    """Class 1 (LV) where the normalised input is above 1, else background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lv = 4 * (x - 1.0)
        return torch.cat([-lv, lv, torch.full_like(x, -9), torch.full_like(x, -9)], dim=1)


@register_model("cmr_test_bright", "segmentation")
def _bright(**_: object) -> nn.Module:
    return Bright()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cmr_pipeline")
    return synth_cmr_cohort(root / "synth", n=3, seed=2, layout="acdc", size=(40, 36),
                            n_frames=4, defects=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cmr_model") / "model.pt"
    recipe = {"name": "cmr-test", "model": {"name": "cmr_test_bright", "kwargs": {}},
              "data": {"classes": CLASSES}}
    spec = InputSpec("image_segmentation", SIZE, 1, mean=[60.0], std=[40.0], target="labels")
    return save_checkpoint(path, Bright(), recipe, spec, {"classes": CLASSES})


def _volume_ml(path: str, label: int) -> float:
    labels, spacing = read_volume(path)
    return float((labels == label).sum() * np.prod(spacing) / 1000.0)


def test_no_cinelab_import_inside_a_function() -> None:
    package = Path(get_pipeline("cmr").predict.__code__.co_filename).parent
    late = [f"{path.name}:{node.lineno}" for path in sorted(package.glob("*.py"))
            for fn in ast.walk(ast.parse(path.read_text()))
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(fn) if isinstance(node, ast.Import | ast.ImportFrom)
            and any(name.startswith("cinelab") for name in
                    ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names]))]
    assert late == []


# --------------------------------------------------------------------------- layouts


def _h5_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for frame in (1, 2):
        with h5py.File(root / f"patient001_frame{frame:02d}.h5", "w") as f:
            f["image"] = np.random.default_rng(frame).random((3, 16, 16), np.float32)
            label = np.zeros((3, 16, 16), np.uint8)
            label[:, 4:8 + frame, 4:10] = LV_LABEL
            f["label"] = label
    return root


def _png_folder(root: Path) -> Path:
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        Image.fromarray(np.full((16, 16), 3 if folder == "masks" else 90, np.uint8)).save(
            root / folder / "p1-frame01-slice01.png")
    return root


def test_each_layout_is_detected_alone(cohort, tmp_path: Path) -> None:
    dsb = synth_cmr_cohort(tmp_path / "dsb", n=1, seed=3, layout="dsb", size=(32, 28),
                           n_frames=4, defects=False).dsb_root
    folders = {"acdc": cohort.acdc_root, "acdc-h5": _h5_folder(tmp_path / "h5"),
               "dsb": dsb, "cmr-png": _png_folder(tmp_path / "png")}
    for name, folder in folders.items():
        assert [lay.name for lay in CMR_LAYOUTS if lay.detect(folder)] == [name]
        assert detect_layout(folder) == name  # no other pipeline's layout claims it
    assert {lay.name for lay in CMR_LAYOUTS} <= {name for name, _ in LAYOUTS.items()}
    assert set(get_pipeline("cmr").layouts) == set(folders)


def test_ingest_reads_volumes_and_converts_dsb(cohort, tmp_path: Path) -> None:
    result = ingest(cohort.acdc_root)
    assert result.layout == "acdc" and not result.problems
    per_patient = result.manifest.groupby("patient_id")[["EDV", "ESV"]].first()
    truth = cohort.truth.set_index("acdc_id")
    np.testing.assert_allclose(per_patient["EDV"], truth["EDV"], rtol=1e-6)
    np.testing.assert_allclose(per_patient["ESV"], truth["ESV"], rtol=1e-6)
    dsb = synth_cmr_cohort(tmp_path / "dsb", n=2, seed=3, layout="dsb", size=(32, 28),
                           n_frames=4, defects=False)
    with pytest.raises(InputError, match="convert_to"):
        ingest(dsb.dsb_root)
    converted = ingest(dsb.dsb_root, options={"convert_to": tmp_path / "nifti"})
    assert converted.manifest["sample_id"].tolist() == ["1", "2"]
    assert all(Path(p).is_file() for p in converted.manifest["path"])
    np.testing.assert_allclose(converted.manifest["EDV"], dsb.truth["EDV"], atol=0.01)


# --------------------------------------------------------------------------- predict


def test_predict_writes_the_contract_with_volumes_of_its_masks(cohort, model,
                                                               tmp_path: Path) -> None:
    cmr = get_pipeline("cmr")
    assert cmr.claims(model)
    out = cmr.predict(model, cohort.acdc_root, tmp_path / "pred", Options())
    table = read_predictions(out).set_index("sample_id")
    assert sorted(table.index) == sorted(f"{p}_frame{f:02d}" for p, e, s in zip(
        cohort.truth["acdc_id"], cohort.truth["ed_frame"], cohort.truth["es_frame"],
        strict=True) for f in (e + 1, s + 1))
    for patient, rows in table.groupby("patient_id"):
        lv = {phase: _volume_ml(path, LV_LABEL)
              for phase, path in zip(rows["phase"], rows["mask_path"], strict=True)}
        assert rows["lv_volume"].tolist() == pytest.approx([lv[p] for p in rows["phase"]])
        edv, esv = max(lv.values()), min(lv.values())
        assert edv > esv > 0, patient
        assert rows["edv"].tolist() == pytest.approx([edv, edv])
        assert rows["esv"].tolist() == pytest.approx([esv, esv])
        assert rows["ef"].tolist() == pytest.approx([100 * (edv - esv) / edv] * 2)
        assert set(rows["volume_unit"]) == {"mL"}
        info = read_info_cfg(next(cohort.acdc_root.glob(f"*/{patient}/Info.cfg")))
        bsa = np.sqrt(info["Height"] * info["Weight"] / 3600)  # Mosteller
        assert rows["bsa_m2"].tolist() == pytest.approx([bsa, bsa])
        assert rows["edv_index"].tolist() == pytest.approx([edv / bsa] * 2)
        flags = rows["volume_flags"].fillna("").iloc[0]
        assert "EF" not in flags and "EDV<=0" not in flags.replace("RV_EDV<=0", "")
        if "RV_EDV<=0" in flags:  # no RV predicted: no RV volume reported
            assert rows["rv_edv"].isna().all() and rows["rv_ef"].isna().all()
        labels, _ = read_volume(rows["mask_path"].iloc[0])
        assert labels.shape[1:] == (40, 36)  # on the source grid
    run = read_run(out)
    assert run["pipeline"] == "cmr" and run["task"] == "image_segmentation"
    assert run["input"] == str(cohort.acdc_root) and len(run["checkpoint_hash"]) > 8
    assert (out / "problems.csv").read_text().startswith("file,")


def test_predict_one_stack_per_patient_leaves_patient_columns_empty(cohort, model,
                                                                  tmp_path: Path) -> None:
    one = tmp_path / "one"
    for folder in cohort.acdc_root.glob("*/patient*"):
        shutil.copytree(folder, one / folder.name)
    es = int(cohort.truth["es_frame"].iloc[0]) + 1  # patient001's ES image gone: ED alone
    for suffix in (".nii.gz", "_gt.nii.gz"):
        (one / "patient001" / f"patient001_frame{es:02d}{suffix}").unlink()
    table = read_predictions(get_pipeline("cmr").predict(model, one, tmp_path / "pred",
                                                         Options()))
    alone = table[table["patient_id"] == "patient001"]
    assert len(alone) == 1 and alone[["edv", "esv", "ef"]].isna().all(axis=None)
    assert alone["lv_volume"].iloc[0] > 0
    assert table.loc[table["patient_id"] == "patient002", "ef"].notna().all()


@pytest.mark.slow
def test_predict_cines_one_row_each_with_their_own_volumes(model, tmp_path: Path) -> None:
    dsb = synth_cmr_cohort(tmp_path / "dsb", n=2, seed=4, layout="dsb", size=(40, 36),
                           n_frames=4, defects=False)
    convert_dsb(dsb.dsb_root, tmp_path / "conv")
    out = get_pipeline("cmr").predict(model, tmp_path / "conv", tmp_path / "pred", Options())
    table = read_predictions(out)
    assert table["sample_id"].tolist() == ["1", "2"] and set(table["kind"]) == {"cine"}
    for _, row in table.iterrows():
        labels, spacing = read_volume(row["mask_path"])  # (T, Z, H, W), spacing (t, z, y, x)
        lv = (labels == LV_LABEL).sum(axis=(1, 2, 3)) * np.prod(spacing[1:]) / 1000.0
        assert labels.shape[0] == 4 and lv.max() > lv.min() > 0
        assert (row["edv"], row["esv"]) == pytest.approx((lv.max(), lv.min()))
        assert row["lv_volume"] == pytest.approx(lv.max())  # the cine's ED frame
    result = CliRunner().invoke(app, ["cmr", "predict", str(model), str(tmp_path / "conv"),
                                      "--out", str(tmp_path / "cli"), "--native"])
    listed = pd.read_csv(tmp_path / "cli" / "problems.csv")  # the untrained model's RV
    assert result.exit_code == (3 if len(listed) else 0), result.output  # as `cinelab predict`
    volumes = pd.read_csv(tmp_path / "cli" / "volumes.csv", dtype={"patient_id": str})
    assert volumes.set_index("patient_id")["EDV"].to_dict() == pytest.approx(
        table.set_index("sample_id")["edv"].to_dict())


# --------------------------------------------------------------------------- evaluate


def _truth_contract(cohort, out: Path, empty_es_lv: bool = False) -> Path:
    """A prediction folder whose masks are the truth's (ES LV removed when asked)."""
    rows = []
    for _, t in cohort.truth.iterrows():
        folder = next(cohort.acdc_root.glob(f"*/{t['acdc_id']}"))
        for phase, frame in (("ED", t["ed_frame"] + 1), ("ES", t["es_frame"] + 1)):
            labels, spacing = read_volume(folder / f"{t['acdc_id']}_frame{frame:02d}_gt.nii.gz")
            if empty_es_lv and phase == "ES":
                labels = np.where(labels == LV_LABEL, 0, labels)
            path = write_volume(out / "masks" / f"{t['acdc_id']}_{phase}.nii.gz", labels,
                                spacing)
            rows.append({"sample_id": f"{t['acdc_id']}_{phase}", "patient_id": t["acdc_id"],
                         "phase": phase, "mask_path": str(path)})
    return write_contract(out, pd.DataFrame(rows), run={"pipeline": "cmr",
                                                       "input": str(cohort.acdc_root)})


@pytest.mark.slow
def test_evaluate_against_known_truth(cohort, tmp_path: Path) -> None:
    cmr = get_pipeline("cmr")
    ef = cohort.truth["EF"].to_numpy()
    perfect = cmr.evaluate(_truth_contract(cohort, tmp_path / "same"), tmp_path / "ev",
                           Options())
    assert perfect["lv_dice"] == perfect["myo_dice"] == perfect["rv_dice"] == 1.0
    assert perfect["lv_volume_error"] == 0.0 and perfect["ef_mae"] == 0.0
    assert perfect["ef_mae_baseline"] == pytest.approx(np.abs(ef - ef.mean()).mean())
    assert perfect["n_patients"] == 3
    assert read_json(tmp_path / "ev" / "metrics.json")["pipeline"] == "cmr"

    shrunk = cmr.evaluate(_truth_contract(cohort, tmp_path / "es", empty_es_lv=True),
                          tmp_path / "ev2", Options(labels=cohort.acdc_root))
    assert shrunk["lv_dice"] == pytest.approx(0.5)  # ED perfect, ES no LV at all
    assert shrunk["esv_error"] == pytest.approx(1.0) and shrunk["edv_error"] == 0.0
    assert shrunk["lv_volume_error"] == pytest.approx(0.5)
    # no LV at ES: an EF of 100 % is impossible, flagged and never reported as a value
    assert np.isnan(shrunk["ef_mae"]) and shrunk["n_flagged"] == 3
    html = cmr.report(tmp_path / "ev2", None).read_text()
    assert "patient001" in html


def test_evaluate_without_truth_is_a_typed_error(tmp_path: Path) -> None:
    write_contract(tmp_path, pd.DataFrame({"sample_id": ["a"], "mask_path": ["x"]}))
    with pytest.raises(InputError, match="--labels"):
        get_pipeline("cmr").evaluate(tmp_path, tmp_path / "ev", Options())


# --------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_demo_run_learns_the_synthetic_cohort(tmp_path: Path) -> None:
    """The demo: synth -> run (ingest, prepare, train, predict the test split natively,
    evaluate, report) meets the targets: LV Dice >= 0.85, LV volumes within 10 %; resumable."""
    cmr = get_pipeline("cmr")
    options = cmr.demo_options
    data = cmr.synth(tmp_path / "data", options.n, options.seed)
    metrics = cmr.run(data, tmp_path / "run", options)
    assert [target.met(metrics) for target in cmr.targets] == [True, True], metrics
    assert metrics["lv_dice"] >= 0.85 and metrics["lv_volume_error"] <= 0.10
    table = read_predictions(tmp_path / "run" / "predict")  # the synthetic testing/ patients
    assert set(table["patient_id"]) == {"patient009", "patient010"}
    assert metrics["n_patients"] == 2
    assert "patient009" in (tmp_path / "run" / "evaluate" / "report.html").read_text()
    stamp = (tmp_path / "run" / "train" / "model.pt").stat().st_mtime
    again = cmr.run(data, tmp_path / "run", options)  # every stage done: nothing retrained
    assert (tmp_path / "run" / "train" / "model.pt").stat().st_mtime == stamp
    assert again["lv_dice"] == pytest.approx(metrics["lv_dice"])
