"""Issue 12 wired into the cine MRI entry points: `cinelab cmr prepare` and `cinelab cmr
measure` on small cohorts holding bad files beside good ones. Each bad file is a problem row
(reader problems included: nothing is dropped on the way), the good samples are unchanged."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from PIL import Image
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.store import PreparedStore
from cinelab.io.nifti import write_volume
from cinelab.models import create_model
from cinelab.train.checkpoint import InputSpec, save_checkpoint

runner = CliRunner()
SHAPE = (2, 16, 16)  # slices, rows, columns
SPACING = (8.0, 1.5, 1.5)
PIXDIM_X = 80  # byte offset of pixdim[1] in a NIfTI-1 header


def _labels(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:SHAPE[1], :SHAPE[2]]
    ring = (yy - 8) ** 2 + (xx - 8) ** 2
    label = np.zeros(SHAPE, np.uint8)
    label[:, ring < (radius + 2) ** 2] = 2
    label[:, ring < radius**2] = 3
    label[:, 1:3, 1:radius] = 1  # an RV that also contracts
    return label


def _image(label: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).random(SHAPE, dtype=np.float32)
    return (label * 40.0 + 10.0 * noise).astype(np.float32)


def _patient(root: Path, n: int, info: str = "ED: 1\nES: 2\n") -> Path:
    """patientNNN with ED (frame 1, LV radius 5) and ES (frame 2, radius 3) images + gts."""
    folder = root / f"patient{n:03d}"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(info + "Group: NOR\nHeight: 170\nWeight: 70\n")
    for frame, radius in ((1, 5), (2, 3)):
        label = _labels(radius)
        write_volume(folder / f"{folder.name}_frame{frame:02d}.nii.gz", _image(label, n),
                     SPACING)
        write_volume(folder / f"{folder.name}_frame{frame:02d}_gt.nii.gz", label, SPACING)
    return folder


def _problems(folder: Path) -> dict[str, dict]:
    """problems.csv rows keyed by file name."""
    table = pd.read_csv(folder / "problems.csv", dtype=str, keep_default_na=False)
    return {Path(r["file"]).name: r for r in table.to_dict("records")}


def _invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_prepare_reports_every_bad_acdc_file(tmp_path: Path) -> None:
    clean, bad = tmp_path / "clean", tmp_path / "bad"
    for root in (clean, bad):
        _patient(root, 1), _patient(root, 2)
    _patient(bad, 3, info="ED: 1\n")  # no ES line
    gt = _patient(bad, 4) / "patient004_frame01_gt.nii.gz"
    write_volume(gt, np.where(_labels(5) == 3, 7, _labels(5)), SPACING)  # label 7
    nan = _patient(bad, 5) / "patient005_frame01.nii.gz"
    image = _image(_labels(5), 5)
    image[1] = np.nan  # one NaN slice: never a blanked stack with labels kept
    write_volume(nan, image, SPACING)
    flat = _patient(bad, 6) / "patient006_frame01.nii.gz"
    raw = bytearray(gzip.decompress(flat.read_bytes()))
    raw[PIXDIM_X:PIXDIM_X + 4] = np.float32(0.0).tobytes()  # zero voxel spacing (nibabel
    flat.write_bytes(gzip.compress(bytes(raw)))  # would "fix" it on save)

    _invoke("cmr", "prepare", clean, "--out", tmp_path / "s0", "--size", 16, "--workers", 1)
    _invoke("cmr", "prepare", bad, "--out", tmp_path / "s1", "--size", 16, "--workers", 1)
    rows = _problems(tmp_path / "s1")
    image4 = "patient004_frame01.nii.gz"  # a sample's problem names its image file
    assert set(rows) == {"Info.cfg", image4, nan.name, flat.name}
    assert (rows["Info.cfg"]["column"], rows["Info.cfg"]["found"]) == ("ES", "no such line")
    assert (rows[image4]["column"], rows[image4]["found"]) == ("labels", "7")
    assert gt.name in rows[image4]["error"]
    assert rows[nan.name]["column"] == "voxels"
    assert rows[nan.name]["found"].startswith("256 of 512 non-finite (256 NaN)")
    assert rows[flat.name]["column"] == "pixdim (voxel size)"
    assert rows[flat.name]["found"] == "(0.0, 1.5, 8.0)"
    good, mixed = PreparedStore(tmp_path / "s0"), PreparedStore(tmp_path / "s1")
    assert set(mixed.ids) == set(good.ids) | {"patient004_frame02", "patient005_frame02",
                                              "patient006_frame02"}
    for sid in good.ids:  # the good samples are exactly what a clean cohort gives
        np.testing.assert_array_equal(mixed.frames(sid), good.frames(sid))


def _h5(path: Path, **datasets: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value


def test_prepare_reports_every_bad_h5_file(tmp_path: Path) -> None:
    root = tmp_path / "h5"
    root.mkdir()
    for frame, radius in ((1, 5), (2, 3)):
        label = _labels(radius)
        _h5(root / f"patient001_frame{frame:02d}.h5", image=_image(label, 1), label=label)
    nan = _image(_labels(5), 2)
    nan[0, 3, 4] = np.nan
    _h5(root / "patient002_frame01.h5", image=_image(_labels(5), 2))  # no label
    _h5(root / "patient002_frame02.h5", image=np.zeros((0, 16, 16), np.float32),
        label=np.zeros((0, 16, 16), np.uint8))  # empty
    _h5(root / "patient003_frame01.h5", image=nan, label=_labels(5))
    _h5(root / "patient003_frame02.h5", image=_image(_labels(3), 3), label=_labels(3) * 2)
    _invoke("cmr", "prepare", root, "--out", tmp_path / "store", "--size", 16, "--workers", 1)
    rows = _problems(tmp_path / "store")
    assert {name: (r["column"], r["found"]) for name, r in rows.items()} == {
        "patient002_frame01.h5": ("label", "datasets ['image']"),
        "patient002_frame02.h5": ("image", "shape (0, 16, 16)"),
        "patient003_frame01.h5": ("image", "1 of 512 non-finite (1 NaN), the first at index "
                                           "(0, 3, 4)"),
        "patient003_frame02.h5": ("label", "4, 6"),
    }
    assert sorted(PreparedStore(tmp_path / "store").ids) == ["patient001_frame01",
                                                             "patient001_frame02"]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_prepare_reports_broken_png_pairs(tmp_path: Path) -> None:
    root = tmp_path / "png"
    label = _labels(5)[0]
    for name in ("a", "b", "c"):
        _png(root / "images" / f"{name}.png", (label * 60).astype(np.uint8))
    for name in ("a", "b", "d"):
        _png(root / "masks" / f"{name}.png", label)
    (root / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _invoke("cmr", "prepare", root, "--out", tmp_path / "store", "--size", 16, "--workers", 1)
    table = pd.read_csv(tmp_path / "store" / "problems.csv", dtype=str, keep_default_na=False)
    files = sorted(str(Path(f).relative_to(root)) for f in table["file"])
    assert files == ["images/b.png", "images/c.png", "masks/d.png"]
    assert PreparedStore(tmp_path / "store").ids == ["a"]


def test_measure_with_a_missing_es_file_writes_no_ef(tmp_path: Path) -> None:
    root = tmp_path / "acdc"
    _patient(root, 1)
    missing = _patient(root, 2) / "patient002_frame02_gt.nii.gz"
    missing.unlink()
    output = _invoke("cmr", "measure", root, "--out", tmp_path / "m")
    volumes = pd.read_csv(tmp_path / "m" / "volumes.csv", dtype={"patient_id": str})
    assert volumes["patient_id"].tolist() == ["patient001"]  # no EF 0.0 for patient002
    assert 0 < volumes["EF"].iloc[0] < 100
    rows = pd.read_csv(tmp_path / "m" / "problems.csv", dtype=str, keep_default_na=False)
    assert rows["column"].tolist() == ["ES", "phase"]
    assert Path(rows["file"].iloc[0]).name == missing.name
    assert rows["error"].iloc[1] == ("patient002: one label stack only (ED or ES missing): "
                                     "not measured")
    assert "patient002" in output
    alone = tmp_path / "alone"
    _patient(alone, 1)
    _invoke("cmr", "measure", alone, "--out", tmp_path / "m1")
    pd.testing.assert_frame_equal(
        volumes, pd.read_csv(tmp_path / "m1" / "volumes.csv", dtype={"patient_id": str}))


def _checkpoint(path: Path) -> Path:
    """A tiny untrained U-Net checkpoint (predict needs nothing else)."""
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "out_channels": 4, "channels": [8, 16], "strides": [2]}
    model = create_model("unet_small", **kwargs)
    recipe = {"model": {"name": "unet_small", "kwargs": kwargs},
              "data": {"classes": {"LV": 3, "MYO": 2, "RV": 1}}}
    spec = InputSpec("image_segmentation", 16, 1, mean=[50.0], std=[40.0], target="labels")
    save_checkpoint(path, model, recipe, spec, {"classes": recipe["data"]["classes"]})
    return path


def test_predict_with_an_unusable_file_exits_3(tmp_path: Path) -> None:
    model = _checkpoint(tmp_path / "model.pt")
    clean, bad = tmp_path / "clean", tmp_path / "bad"
    for root in (clean, bad):
        _patient(root, 1)
    broken = _patient(bad, 2) / "patient002_frame01.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    _patient(bad, 3, info="ED: 1\n")  # a reader's problem: reaches predict's problems.csv
    result = runner.invoke(app, ["predict", str(model), str(bad), "--out",
                                 str(tmp_path / "p")])
    assert result.exit_code == 3, result.output
    assert "finished with 2 problem(s)" in " ".join(result.output.split())
    info, row = pd.read_csv(tmp_path / "p" / "problems.csv", dtype=str).to_dict("records")
    assert info["file"].endswith("patient003/Info.cfg") and info["column"] == "ES"
    assert Path(row["file"]).name == broken.name and row["column"] == "file"
    table = pd.read_csv(tmp_path / "p" / "predictions.csv", dtype={"sample_id": str})
    assert sorted(table["sample_id"]) == ["patient001_frame01", "patient001_frame02",
                                          "patient002_frame02"]
    assert runner.invoke(app, ["predict", str(model), str(clean), "--out",
                               str(tmp_path / "p0")]).exit_code == 0
    alone = pd.read_csv(tmp_path / "p0" / "predictions.csv", dtype={"sample_id": str})
    pd.testing.assert_frame_equal(  # patient001 predicted exactly as without the bad file
        table[table["patient_id"] == "patient001"].reset_index(drop=True)[["sample_id", "ef",
                                                                           "edv", "esv"]],
        alone[["sample_id", "ef", "edv", "esv"]])
