"""Pipeline-level malformed-input cases (issue 12): a bad file inside a small cohort, run
through the pipeline's own reader/preparer, must be a clear error (CLEAR) or a problem row
with the good samples kept (SKIP). Shared by benchmarks/malformed.py and
test_pipeline_cases.py; each case is a `corpus.Case`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
from corpus import CLEAR, SKIP, Case

from cinelab.errors import Problem
from cinelab.io.nifti import write_volume
from cinelab.io.video import write_video
from cinelab.pipelines.cmr.measure import measure_mask_set
from cinelab.pipelines.cmr.prepare import prepare_cmr_folder
from cinelab.pipelines.cxr.crop import fit_mask
from cinelab.pipelines.echonet.layout import read_echonet

FRAMES, SIDE = 8, 32
STACK = (2, 16, 16)
SPACING = (8.0, 1.5, 1.5)


# --------------------------------------------------------------------------- EchoNet


def _line(name: str, frame: int, i: int) -> str:
    return f"{name}.avi,16,{4 + 4 * i},{26},{4 + 4 * i},{frame}\n" if i else \
        f"{name}.avi,16,2,16,28,{frame}\n"


def _echonet(folder: Path, tracings: str | None = None, filelist: bytes | None = None) -> Path:
    """Two good videos (A, B), each traced at frames 1 and 5; bad parts swapped in."""
    (folder / "Videos").mkdir(parents=True, exist_ok=True)
    rows = "FileName,EF,Split,NumberOfFrames,FrameHeight,FrameWidth\n"
    for i, name in enumerate("AB"):
        frames = np.random.default_rng(i).integers(0, 255, (FRAMES, SIDE, SIDE, 3), np.uint8)
        write_video(folder / "Videos" / f"{name}.avi", frames, 25.0)
        rows += f"{name}.avi,55,TRAIN,{FRAMES},{SIDE},{SIDE}\n"
    (folder / "FileList.csv").write_bytes(filelist if filelist is not None else rows.encode())
    good = "".join(_line(n, f, i) for n in "AB" for f in (1, 5) for i in range(5))
    (folder / "VolumeTracings.csv").write_text("FileName,X1,Y1,X2,Y2,Frame\n" + good
                                               + (tracings or ""))
    return folder


def _echonet_skip(column: str, traced: list[str]) -> Any:
    def check(cohort: Any) -> None:
        assert cohort.manifest["sample_id"].tolist() == ["A", "B"], "videos lost"
        assert [p.column for p in cohort.problems] == [column], cohort.problems
        assert sorted(set(cohort.tracings["sample_id"])) == traced, "tracings kept"
    return check


def _far(folder: Path) -> Path:
    """B's long axis at frame 1 ends at x = 1e9 (the issue: EDV 1.6e26, EF 100)."""
    _echonet(folder)
    path = folder / "VolumeTracings.csv"
    path.write_text(path.read_text().replace("B.avi,16,2,16,28,1", "B.avi,16,2,1e9,28,1", 1))
    return folder


def echonet_cases() -> list[Case]:
    ragged_list = b"FileName,EF,Split\nA.avi,55,TRAIN\nB.avi,55,TRAIN,x\n"
    return [
        Case("echonet_filelist_empty", "pipeline",
             lambda f: _echonet(f, filelist=b""), read_echonet, CLEAR, "file"),
        Case("echonet_filelist_ragged", "pipeline",
             lambda f: _echonet(f, filelist=ragged_list), read_echonet, CLEAR, "line 3"),
        Case("echonet_tracings_ragged", "pipeline",
             lambda f: _echonet(f, "B.avi,1,2,3,4,5,6\n"), read_echonet, SKIP,
             check=_echonet_skip("line 22", [])),
        Case("echonet_tracing_at_1e9", "pipeline",
             _far, read_echonet, SKIP,
             check=_echonet_skip("frame 1 lines", ["A"])),
        Case("echonet_tracing_beyond_video", "pipeline",
             lambda f: _echonet(f, "".join(_line("B", 40, i) for i in range(5))),
             read_echonet, SKIP, check=_echonet_skip("frame 40", ["A"])),
    ]


# --------------------------------------------------------------------------- cine MRI


def _labels(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:STACK[1], :STACK[2]]
    label = np.zeros(STACK, np.uint8)
    label[:, (yy - 8) ** 2 + (xx - 8) ** 2 < radius**2] = 3
    label[:, 1:3, 1:radius] = 1
    return label


def _acdc(folder: Path, n: int, info: str = "ED: 1\nES: 2\n") -> Path:
    patient = folder / f"patient{n:03d}"
    patient.mkdir(parents=True)
    (patient / "Info.cfg").write_text(info)
    for frame, radius in ((1, 5), (2, 3)):
        label = _labels(radius)
        stem = patient / f"{patient.name}_frame{frame:02d}"
        write_volume(f"{stem}.nii.gz", label * 40.0 + 5.0, SPACING)
        write_volume(f"{stem}_gt.nii.gz", label, SPACING)
    return patient


def _acdc_with(bad: Any) -> Any:
    def build(folder: Path) -> Path:
        _acdc(folder, 1)
        bad(folder)
        return folder
    return build


def _gt_label_7(folder: Path) -> None:
    gt = _acdc(folder, 2) / "patient002_frame01_gt.nii.gz"
    write_volume(gt, _labels(5) * 7 // 3, SPACING)


def _h5_nan(folder: Path) -> Path:
    for frame, radius in ((1, 5), (2, 3)):
        label = _labels(radius)
        image = (label * 40.0).astype(np.float32)
        if frame == 2:
            image[0, 0, 0] = np.nan
        with h5py.File(folder / f"patient001_frame{frame:02d}.h5", "w") as f:
            f["image"], f["label"] = image, label
    return folder


def _prepare(folder: Path) -> list[Problem]:
    summary = prepare_cmr_folder(folder, folder.parent / f"{folder.name}-store", size=16,
                                 workers=1)
    assert summary.usable >= 1, "nothing prepared"
    return summary.problems


def _columns(*columns: str) -> Any:
    def check(problems: list[Problem]) -> None:
        assert [p.column for p in problems] == list(columns), problems
    return check


def _measure_without_es(folder: Path) -> Path:
    _acdc(folder, 1)
    (_acdc(folder, 2) / "patient002_frame02_gt.nii.gz").unlink()
    return folder


def _measured_patient001_only(result: Any) -> None:
    table, _, problems = result
    assert table["patient_id"].tolist() == ["patient001"], "EF of a one-stack patient"
    assert [p.column for p in problems] == ["ES", "phase"], problems


def cmr_cases() -> list[Case]:
    return [
        Case("cmr_info_cfg_without_es", "pipeline",
             _acdc_with(lambda f: _acdc(f, 2, info="ED: 1\n")), _prepare, SKIP,
             check=_columns("ES")),
        Case("cmr_gt_label_outside_set", "pipeline", _acdc_with(_gt_label_7), _prepare, SKIP,
             check=_columns("labels")),
        Case("cmr_h5_nan_slice", "pipeline", _h5_nan, _prepare, SKIP,
             check=_columns("image")),
        Case("cmr_measure_es_missing", "pipeline", _measure_without_es, measure_mask_set,
             SKIP, check=_measured_patient001_only),
    ]


# --------------------------------------------------------------------------- CXR


def cxr_cases() -> list[Case]:
    return [Case("cxr_mask_other_aspect", "pipeline", lambda f: np.ones((64, 40), bool),
                 lambda m: fit_mask(m, (64, 64)), CLEAR, "lung mask shape")]


def pipeline_cases() -> list[Case]:
    """Every pipeline-level case, in a stable order."""
    return [*echonet_cases(), *cmr_cases(), *cxr_cases()]

