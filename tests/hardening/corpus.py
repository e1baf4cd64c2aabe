"""A malformed-input corpus, generated (never committed): every case builds its bad file in a
folder, runs the cinelab reader a pipeline uses for that kind, and states the exact outcome.

Used by tests/hardening (one test per case) and benchmarks/malformed.py (counts per outcome).

Outcomes:
- "clear error": the reader raised the expected InputError subclass for the expected field;
- "reported skip": a cohort function returned a Problem row for the bad item (and the good
  items in the same cohort came through unchanged);
- "read": a good or merely unusual file was read (the control cases);
- anything else is a failure: "traceback" (another exception, or the wrong field), "hang"
  (over the per-case time limit) or "silently wrong" (no error where one was due).
"""

from __future__ import annotations

import io
import os
import signal
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit

from cinelab.errors import InputError, UnreadableFileError
from cinelab.formats.folders import read_video_folder
from cinelab.io.checks import check_keys, check_labels
from cinelab.io.dicom import read_dataset, read_ultrasound
from cinelab.io.files import check_input_file
from cinelab.io.image import read_image
from cinelab.io.nifti import read_volume, write_nifti
from cinelab.io.table import read_table
from cinelab.io.video import read_video, write_video
from cinelab.measure.ef import ef_from_tracings
from cinelab.synth.dicom import write_ultrasound_dicom

CLEAR, SKIP, READ = "clear error", "reported skip", "read"
TRACEBACK, HANG, WRONG = "traceback", "hang", "silently wrong"
OUTCOMES = (CLEAR, SKIP, READ, TRACEBACK, HANG, WRONG)
FPS = 25.0
CASE_TIMEOUT_S = 30.0
FRAMES, SIZE = 12, 32
PIXDIM_OFFSET = 76  # NIfTI-1 header: pixdim[0..7] float32
DICOM_LIMIT = 8 * 1024**2  # CINELAB_MAX_DICOM_BYTES while the corpus runs: bombs stay small
REAL_VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / \
    "echonet-mini" / "Videos"


@dataclass(frozen=True)
class Case:
    """One bad (or control) input: build it, run the reader, expect an outcome."""

    name: str
    kind: str
    build: Callable[[Path], Any]
    run: Callable[[Any], Any]
    expect: str  # CLEAR, SKIP or READ
    field: str | None = None  # the InputError field (CLEAR) or Problem column (SKIP)
    error: type[Exception] = InputError
    check: Callable[[Any], None] | None = None  # extra assertion on a READ/SKIP result


@dataclass(frozen=True)
class Outcome:
    """What happened to a case."""

    name: str
    kind: str
    outcome: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.outcome in (CLEAR, SKIP, READ)


class CaseTimeout(BaseException):
    """Raised by the alarm when a case runs past its time limit."""


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout


def run_case(case: Case, folder: Path, timeout_s: float = CASE_TIMEOUT_S) -> Outcome:
    """Build and run one case in `folder`; the outcome says whether it behaved as stated.

    A case still running after `timeout_s` (a SIGALRM in the main thread) is a hang.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = case.build(folder)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = case.run(target)
    except CaseTimeout:
        return Outcome(case.name, case.kind, HANG, f"still running after {timeout_s} s")
    except InputError as exc:
        if case.expect == CLEAR and isinstance(exc, case.error) and exc.field == case.field:
            return Outcome(case.name, case.kind, CLEAR, str(exc))
        return Outcome(case.name, case.kind, TRACEBACK,
                       f"unexpected {type(exc).__name__} [{exc.field}]: {exc}")
    except Exception as exc:  # noqa: BLE001 - that is what the corpus measures
        return Outcome(case.name, case.kind, TRACEBACK, f"{type(exc).__name__}: {exc}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if case.expect == CLEAR:
        return Outcome(case.name, case.kind, WRONG, f"no error; returned {type(result).__name__}")
    try:
        if case.check is not None:
            case.check(result)
    except AssertionError as exc:
        return Outcome(case.name, case.kind, WRONG, f"check failed: {exc}")
    return Outcome(case.name, case.kind, case.expect, "ok")


# --------------------------------------------------------------------------- builders


def _frames(n: int = FRAMES, size: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(n)])


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path
    return build


def _video(name: str = "v.avi", n: int = FRAMES, fps: float = FPS) -> Callable[[Path], Path]:
    return lambda folder: write_video(folder / name, _frames(n), fps)


def _truncated_video(fraction: float) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = write_video(folder / "t.avi", _frames(40), FPS)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        return path
    return build


def _avi_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every '00dc' frame chunk in an AVI's movi list."""
    out, at = [], data.find(b"movi")
    while (at := data.find(b"00dc", at + 4)) >= 0:
        size = struct.unpack_from("<I", data, at + 4)[0]
        if size > 0 and at + 8 + size <= len(data):
            out.append((at + 8, size))
    return out


def _corrupt_middle_frame(folder: Path) -> Path:
    path = write_video(folder / "c.avi", _frames(20), FPS)
    data = bytearray(path.read_bytes())
    offset, size = _avi_chunks(bytes(data))[10]
    data[offset + 2: offset + size] = bytes(size - 2)  # keep SOI, wipe the rest
    path.write_bytes(bytes(data))
    return path


def _avi_rate(rate: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = write_video(folder / "r.avi", _frames(6), FPS)
        data = bytearray(path.read_bytes())
        at = data.find(b"strh")
        struct.pack_into("<I", data, at + 32, rate)  # dwRate (dwScale is 1)
        struct.pack_into("<I", data, 0x20, 0)  # avih dwMicroSecPerFrame
        path.write_bytes(bytes(data))
        return path
    return build


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_frames(1)[0]).save(buf, format="PNG")
    return buf.getvalue()


def _us_dicom(name: str = "u.dcm", n: int = 4, **kw: Any) -> Callable[[Path], Path]:
    return lambda folder: write_ultrasound_dicom(folder / name, _frames(n)[..., 0], FPS, "P1",
                                                 **kw)


def _edit_dicom(edit: Callable[[pydicom.Dataset], None], n: int = 4) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = _us_dicom(n=n)(folder)
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path, enforce_file_format=True)
        return path
    return build


def _no_pixels(ds: pydicom.Dataset) -> None:
    del ds.PixelData


def _truncate_pixels(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _declare(**tags: Any) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        for key, value in tags.items():
            setattr(ds, key, value)
    return edit


def _deflate_bomb(folder: Path) -> Path:
    path = _us_dicom(n=1)(folder)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = 16
    ds.PixelData = bytes(1024 * 1024 * 16)  # 16 MiB of zeros deflate to ~16 KiB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg_dicom(corrupt: str | None) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        frames = _frames(5)
        encoded = []
        for frame in frames:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG", quality=90)
            encoded.append(buf.getvalue())
        if corrupt == "truncated":
            encoded[2] = encoded[2][: len(encoded[2]) // 2]
        elif corrupt == "garbage":
            noise = np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes()
            encoded[2] = encoded[2][:200] + noise + encoded[2][500:]
        path = write_ultrasound_dicom(folder / "j.dcm", frames, FPS, "P1")
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.save_as(path, enforce_file_format=True)
        return path
    return build


def _nifti(values: Callable[[np.ndarray], None] | None = None, zooms: tuple = (1.0, 1.0, 2.0),
           dtype: type = np.float32, name: str = "n.nii.gz") -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        array = np.random.default_rng(0).random((8, 8, 4)).astype(dtype)
        if values is not None:
            values(array)
        image = nib.Nifti1Image(array, np.diag([*(z or 1.0 for z in zooms), 1.0]))
        path = folder / name
        nib.save(image, path)
        if 0.0 in zooms:  # nibabel rewrites pixdim from the affine: patch the saved header
            data = bytearray(path.read_bytes())
            struct.pack_into("<3f", data, PIXDIM_OFFSET + 4, *zooms)
            path.write_bytes(bytes(data))
        return path
    return build


def _nan(a: np.ndarray) -> None:
    a[1, 2, 3] = np.nan


def _inf(a: np.ndarray) -> None:
    a[0, 0, 0] = np.inf


def _labels(extra: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        labels = np.random.default_rng(0).integers(0, 4, (8, 8, 4)).astype(np.uint8)
        labels[2, 2, 2] = extra
        return write_nifti(folder / "l.nii.gz", labels, (1.0, 1.0, 2.0))
    return build


def _truncated_nifti(folder: Path) -> Path:
    path = _nifti()(folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _huge_nifti(folder: Path) -> Path:
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    image.header.set_data_shape((4096, 4096, 4096))
    path = folder / "huge.nii"
    raw = image.header.binaryblock + b"\x00" * 4 + bytes(32)
    path.write_bytes(raw)
    return path


def _h5(keys: dict[str, np.ndarray]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "s.h5"
        with h5py.File(path, "w") as f:
            for key, value in keys.items():
                f.create_dataset(key, data=value)
        return path
    return build


def _check_h5(path: Path) -> None:
    with h5py.File(path, "r") as f:
        check_keys(f, ("image", "label"), path)
        check_labels(f["label"][()], {0, 1, 2, 3}, path)


def _fifo(folder: Path) -> Path:
    path = folder / "pipe.csv"
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------------- tracings


def _cylinder(length: float, diameter: float, n: int = 6, x0: float = 50.0,
              y0: float = 20.0) -> np.ndarray:
    ys = y0 + (np.arange(n) + 0.5) / n * length
    chords = np.stack([np.full(n, x0 - diameter / 2), ys, np.full(n, x0 + diameter / 2), ys], 1)
    return np.vstack([[x0, y0, x0, y0 + length], chords])


def _tracings(bad: str | None) -> Callable[[Path], pd.DataFrame]:
    """A good sample 'good' (EF 64 %) plus, unless None, one bad sample 'bad'."""
    def build(folder: Path) -> pd.DataFrame:
        rows = []
        for sid, frames in (("good", {10: 40.0, 30: 24.0}),
                            *((("bad", {5: 40.0, 20: 24.0}),) if bad else ())):
            for frame, diameter in frames.items():
                lines = _cylinder(60.0, diameter)
                if sid == "bad" and bad == "huge" and frame == 5:
                    lines = lines * 1e9
                if sid == "bad" and bad == "nan" and frame == 5:
                    lines[2, 1] = np.nan
                if sid == "bad" and bad == "few_chords":
                    lines = lines[:2]
                if sid == "bad" and bad == "outside":
                    lines = lines + 200.0
                frame_no = {"late": frame + 500, "negative": -frame}.get(bad, frame) \
                    if sid == "bad" else frame
                rows += [{"sample_id": sid, "frame": frame_no, "X1": a, "Y1": b, "X2": c,
                          "Y2": d} for a, b, c, d in lines]
        return pd.DataFrame(rows)
    return build


def _ef(tracings: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    return ef_from_tracings(tracings, frame_size=(112, 112), n_frames=100)


def _ef_skip(column: str) -> Callable[[tuple[pd.DataFrame, list]], None]:
    def check(result: tuple[pd.DataFrame, list]) -> None:
        table, problems = result
        assert table["sample_id"].tolist() == ["good"], table
        assert abs(float(table["EF"].iloc[0]) - 64.0) < 1e-9, table["EF"]
        assert [(p.file, p.column) for p in problems] == [("bad", column)], problems
    return check


def _skip_run(result: Any) -> Any:
    """Adapts a cohort result so that run_case treats it as a reported skip."""
    return result


# --------------------------------------------------------------------------- folders


def _video_folder(labels: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        root = folder / "videos"
        root.mkdir()
        for name in ("a", "b"):
            write_video(root / f"{name}.avi", _frames(4), FPS)
        (folder / "labels.csv").write_bytes(labels)
        return folder
    return build


def _read_folder(folder: Path) -> tuple[pd.DataFrame, list]:
    return read_video_folder(folder / "videos", folder / "labels.csv")


def _latin_labels_ok(result: tuple[pd.DataFrame, list]) -> None:
    manifest, problems = result
    assert problems == [], problems
    assert manifest["site"].tolist() == ["Malmö", "Zürich"], manifest


# --------------------------------------------------------------------------- the corpus

GOOD_CSV = b"FileName,EF\na.avi,55\nb.avi,60\n"


def build_corpus() -> list[Case]:
    """Every case, in a stable order."""
    U = UnreadableFileError  # noqa: N806
    cases = [
        # special files and sizes: refused before opening, from stat alone
        Case("dev_zero_as_video", "file", lambda f: Path("/dev/zero"), read_video, CLEAR,
             "file type"),
        Case("dev_zero_as_dicom", "file", lambda f: Path("/dev/zero"), read_ultrasound, CLEAR,
             "file type"),
        Case("dev_zero_as_table", "file", lambda f: Path("/dev/zero"), read_table, CLEAR,
             "file type"),
        Case("dev_zero_as_image", "file", lambda f: Path("/dev/zero"), read_image, CLEAR,
             "file type"),
        Case("dev_zero_as_nifti", "file", lambda f: Path("/dev/zero"), read_volume, CLEAR,
             "file type"),
        Case("fifo_as_table", "file", _fifo, read_table, CLEAR, "file type"),
        Case("folder_as_table", "file", lambda f: f, read_table, CLEAR, "file type"),
        Case("file_over_size_limit", "file", _write("big.bin", bytes(4096)),
             lambda p: check_input_file(p, max_bytes=1024), CLEAR, "file size"),
        # tables
        Case("table_empty", "table", _write("t.csv", b""), read_table, CLEAR, "file"),
        Case("table_whitespace", "table", _write("t.csv", b" \n\n \n"), read_table, CLEAR,
             "file"),
        Case("table_binary_nul", "table", _write("t.csv", b"a,b\n\x00\x01\x02\x03" * 50),
             read_table, CLEAR, "file"),
        Case("table_png_named_csv", "table", _write("t.csv", _png_bytes()), read_table, CLEAR,
             "file"),
        Case("table_ragged", "table", _write("t.csv", b"a,b\n1,2\n3,4,5\n6,7\n"), read_table,
             CLEAR, "line 3"),
        Case("table_ragged_every_row", "table", _write("t.csv", b"a,b\n1,2,3\n4,5,6\n"),
             read_table, CLEAR, "line 2"),
        Case("table_missing_column", "table", _write("t.csv", b"FileName,EV\nx,1\n"),
             lambda p: read_table(p, required=("FileName", "EF")), CLEAR, "columns"),
        Case("table_unterminated_quote", "table", _write("t.csv", b'a,b\n"1,2\n3,4\n'),
             read_table, CLEAR, "table"),
        Case("table_bad_dtype", "table", _write("t.csv", b"a,b\nx,1\n"),
             lambda p: read_table(p, dtype={"a": float}), CLEAR, "dtype"),
        Case("table_latin1", "table", _write("t.csv", "name,x\nJosé,1\n".encode("latin-1")),
             read_table, READ,
             check=lambda df: _expect(df["name"].tolist() == ["José"]
                                      and df.attrs["encoding"] == "latin-1", df)),
        Case("table_utf8_bom", "table", _write("t.csv", b"\xef\xbb\xbfa,b\n1,2\n"), read_table,
             READ, check=lambda df: _expect(list(df.columns) == ["a", "b"], df)),
        Case("table_utf16", "table", _write("t.csv", "a,b\n1,ü\n".encode("utf-16")),
             read_table, READ, check=lambda df: _expect(df["b"].tolist() == ["ü"], df)),
        Case("table_header_only", "table", _write("t.csv", b"a,b\n"), read_table, READ,
             check=lambda df: _expect(list(df.columns) == ["a", "b"] and df.empty, df)),
        Case("labels_ragged_in_folder", "table", _video_folder(GOOD_CSV + b"c.avi,1,2\n"),
             _read_folder, CLEAR, "line 4"),
        Case("labels_empty_in_folder", "table", _video_folder(b""), _read_folder, CLEAR,
             "file"),
        Case("labels_latin1_in_folder", "table",
             _video_folder("FileName,site\na.avi,Malmö\nb.avi,Zürich\n".encode("latin-1")),
             _read_folder, READ, check=_latin_labels_ok),
        # videos
        Case("video_good", "video", _video(), read_video, READ,
             check=lambda v: _expect(v.frames.shape == (FRAMES, SIZE, SIZE, 3), v.frames.shape)),
        Case("video_truncated_10", "video", _truncated_video(0.1), read_video, CLEAR,
             "container", UnreadableFileError),  # too short for FFmpeg to open at all
        Case("video_truncated_50", "video", _truncated_video(0.5), read_video, CLEAR, "frames",
             UnreadableFileError),
        Case("video_truncated_90", "video", _truncated_video(0.9), read_video, CLEAR, "frames",
             UnreadableFileError),
        Case("video_corrupt_middle_frame", "video", _corrupt_middle_frame, read_video, CLEAR,
             "frames", UnreadableFileError),
        Case("video_one_frame", "video", _video(n=1), read_video, CLEAR, "frames"),
        Case("video_two_frames", "video", _video(n=2), read_video, CLEAR, "frames"),
        Case("video_fps_zero", "video", _avi_rate(0), read_video, CLEAR, "fps"),
        Case("video_fps_absurd", "video", _avi_rate(100000), read_video, CLEAR, "fps"),
        Case("video_png_renamed", "video", _write("p.avi", _png_bytes()), read_video, CLEAR,
             "container", U),
        Case("video_random_bytes", "video",
             _write("r.avi", np.random.default_rng(0).bytes(5000)), read_video, CLEAR,
             "container", U),
        Case("video_empty", "video", _write("e.avi", b""), read_video, CLEAR, "file", U),
        Case("video_riff_header_only", "video", _write("h.avi", b"RIFF\x00\x10\x00\x00AVI "
                                                       + bytes(64)), read_video, CLEAR,
             "container", U),
        # DICOM
        Case("dicom_good", "dicom", _us_dicom(), read_ultrasound, READ,
             check=lambda v: _expect(v.frames.shape == (4, SIZE, SIZE, 1), v.frames.shape)),
        Case("dicom_single_frame_us_as_cine", "dicom", _us_dicom(n=1),
             lambda p: read_ultrasound(p, min_frames=3), CLEAR, "NumberOfFrames"),
        Case("dicom_header_only", "dicom", _edit_dicom(_no_pixels), read_ultrasound, CLEAR,
             "PixelData", U),
        Case("dicom_truncated_pixels", "dicom", _edit_dicom(_truncate_pixels), read_ultrasound,
             CLEAR, "NumberOfFrames", U),
        Case("dicom_frames_overstated", "dicom", _edit_dicom(_declare(NumberOfFrames=40)),
             read_ultrasound, CLEAR, "NumberOfFrames", U),
        Case("dicom_frames_understated", "dicom", _edit_dicom(_declare(NumberOfFrames=1)),
             read_ultrasound, CLEAR, "NumberOfFrames"),
        Case("dicom_declared_bomb", "dicom",
             _edit_dicom(_declare(Rows=65535, Columns=65535, NumberOfFrames=10000)),
             read_ultrasound, CLEAR, "declared pixel size"),
        Case("dicom_deflate_bomb", "dicom", _deflate_bomb, read_ultrasound, CLEAR,
             "deflated dataset"),
        Case("dicom_zero_rows", "dicom", _edit_dicom(_declare(Rows=0)), read_ultrasound, CLEAR,
             "Rows"),
        Case("dicom_bits_allocated_12", "dicom", _edit_dicom(_declare(BitsAllocated=12)),
             read_ultrasound, CLEAR, "BitsAllocated"),
        Case("dicom_jpeg_good", "dicom", _jpeg_dicom(None), read_ultrasound, READ,
             check=lambda v: _expect(v.frames.shape == (5, SIZE, SIZE, 3), v.frames.shape)),
        Case("dicom_jpeg_truncated_frame", "dicom", _jpeg_dicom("truncated"), read_ultrasound,
             CLEAR, "frame 2", U),
        Case("dicom_jpeg_garbage_frame", "dicom", _jpeg_dicom("garbage"), read_ultrasound,
             CLEAR, "frame 2", U),
        Case("dicom_not_dicom", "dicom", _write("x.dcm", b"hello, not a dicom" * 20),
             read_dataset, CLEAR, "file", U),
        Case("dicom_empty", "dicom", _write("x.dcm", b""), read_dataset, CLEAR, "file", U),
        # NIfTI / HDF5
        Case("nifti_good", "nifti", _nifti(), read_volume, READ,
             check=lambda r: _expect(r[0].shape == (4, 8, 8) and r[1] == (2.0, 1.0, 1.0), r[1])),
        Case("nifti_nan", "nifti", _nifti(_nan), read_volume, CLEAR, "voxels"),
        Case("nifti_inf", "nifti", _nifti(_inf), read_volume, CLEAR, "voxels"),
        Case("nifti_zero_spacing", "nifti", _nifti(zooms=(1.0, 0.0, 2.0), name="z.nii"),
             read_volume, CLEAR,
             "pixdim (voxel size)"),
        Case("nifti_labels_outside_set", "nifti", _labels(7),
             lambda p: read_volume(p, labels={0, 1, 2, 3}), CLEAR, "labels"),
        Case("nifti_labels_good", "nifti", _labels(3),
             lambda p: read_volume(p, labels={0, 1, 2, 3}), READ),
        Case("nifti_truncated", "nifti", _truncated_nifti, read_volume, CLEAR, "file", U),
        Case("nifti_huge_declared", "nifti", _huge_nifti, read_volume, CLEAR, "dim"),
        Case("h5_missing_key", "hdf5", _h5({"image": np.zeros((2, 4, 4))}), _check_h5, CLEAR,
             "keys"),
        Case("h5_empty_key", "hdf5", _h5({"image": np.zeros((2, 4, 4)),
                                          "label": np.zeros((0, 4, 4))}), _check_h5, CLEAR,
             "label"),
        Case("h5_labels_outside_set", "hdf5", _h5({"image": np.zeros((2, 4, 4)),
                                                   "label": np.full((2, 4, 4), 9)}),
             _check_h5, CLEAR, "labels"),
        Case("h5_good", "hdf5", _h5({"image": np.zeros((2, 4, 4)),
                                     "label": np.ones((2, 4, 4))}), _check_h5, READ),
        # tracings: a cohort function, so bad samples are reported skips beside a good one
        Case("tracings_good", "tracing", _tracings(None), _ef, READ,
             check=lambda r: _expect(abs(float(r[0]["EF"].iloc[0]) - 64.0) < 1e-9, r[0])),
        Case("tracings_coordinates_1e9", "tracing", _tracings("huge"), _ef, SKIP,
             check=_ef_skip("frame 5 lines")),
        Case("tracings_outside_frame", "tracing", _tracings("outside"), _ef, SKIP,
             check=_ef_skip("frame 5 lines")),
        Case("tracings_nan", "tracing", _tracings("nan"), _ef, SKIP,
             check=_ef_skip("frame 5 lines")),
        Case("tracings_too_few_chords", "tracing", _tracings("few_chords"), _ef, SKIP,
             check=_ef_skip("frame 5 lines")),
        Case("tracings_frame_beyond_video", "tracing", _tracings("late"), _ef, SKIP,
             check=_ef_skip("frame")),
        Case("tracings_negative_frame", "tracing", _tracings("negative"), _ef, SKIP,
             check=_ef_skip("frame")),
    ]
    return cases


def real_truncation_cases() -> list[Case]:
    """Real EchoNet AVIs truncated at 10/50/90 % (copies in the case folder; none if absent)."""
    videos = sorted(REAL_VIDEOS.glob("*.avi")) if REAL_VIDEOS.is_dir() else []
    if not videos:
        return []
    source = videos[0]

    def build(fraction: float) -> Callable[[Path], Path]:
        def write(folder: Path) -> Path:
            data = source.read_bytes()
            path = folder / source.name
            path.write_bytes(data[: int(len(data) * fraction)])
            return path
        return write

    cases = [Case(f"real_echonet_truncated_{int(f * 100)}", "video", build(f), read_video,
                  CLEAR, "frames", UnreadableFileError) for f in (0.1, 0.5, 0.9)]
    cases.append(Case("real_echonet_whole", "video", lambda f: source, read_video, READ))
    return cases


def _expect(condition: bool, found: object) -> None:
    assert condition, f"found {found!r}"
