"""The malformed-input corpus: every case has its exact outcome (error type and field, or
the problem row beside an unchanged good sample), and none is a traceback, hang or silent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from corpus import CLEAR, HANG, READ, SKIP, TRACEBACK, WRONG, build_corpus, run_case

CASES = {case.name: case for case in build_corpus()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_has_its_stated_outcome(name: str, corpus_outcomes: dict) -> None:
    outcome = corpus_outcomes[name]
    assert outcome.outcome == CASES[name].expect, outcome.detail


def test_counts_per_outcome(corpus_outcomes: dict) -> None:
    counts = Counter(o.outcome for o in corpus_outcomes.values())
    assert counts[TRACEBACK] == counts[HANG] == counts[WRONG] == 0
    assert (counts[CLEAR], counts[SKIP], counts[READ]) == (53, 6, 12)
    kinds = Counter(c.kind for c in CASES.values())
    assert set(kinds) == {"file", "table", "video", "dicom", "nifti", "hdf5", "tracing"}


@pytest.mark.parametrize(("name", "message"), [
    ("dev_zero_as_video", "/dev/zero: file type: expected a regular file, found a character "
     "device (point at the data file itself, not a device, pipe or folder)"),
    ("table_ragged", "t.csv: line 3: expected 2 fields (as in the header), found 3 fields "
     "(remove the extra separators or quote the values)"),
    ("table_empty", "t.csv: file: expected a table with a header row, found an empty file "
     "(0 bytes)"),
    ("table_png_named_csv", "t.csv: file: expected a text table (CSV), found binary data "
     "(a PNG image) (export the table as CSV)"),
    ("video_truncated_50", "t.avi: frames: expected 40 decodable frames (the container "
     "declares 40), found 17 decoded"),
    ("video_corrupt_middle_frame", "c.avi: frames: expected 20 decodable frames (the "
     "container declares 20), found 10 decoded"),
    ("video_two_frames", "v.avi: frames: expected at least 3 frames, found 2"),
    ("video_fps_zero", "r.avi: fps: expected a frame rate > 0 and <= 1000, found 0 (the AVI "
     "stream header's rate or scale is 0)"),
    ("video_png_renamed", "p.avi: container: expected a RIFF AVI header (suffix .avi), found "
     "a PNG image"),
    ("dicom_declared_bomb", "u.dcm: declared pixel size: expected at most 8388608 bytes "
     "decoded, found 42948362250000 bytes (Rows 65535 x Columns 65535 x NumberOfFrames 10000 "
     "x SamplesPerPixel 1 x BitsAllocated 8)"),
    ("dicom_deflate_bomb", "u.dcm: deflated dataset: expected at most 8388608 bytes once "
     "inflated, found more than 8388608 bytes"),
    ("dicom_truncated_pixels", "u.dcm: NumberOfFrames: expected 4096 bytes of pixel data for "
     "NumberOfFrames 4 (1024 per frame), found 2048 bytes (2.00 frames)"),
    ("dicom_jpeg_truncated_frame", "j.dcm: frame 2: expected a complete JPEG stream "
     "(SOI ... EOI markers), found"),
    ("dicom_single_frame_us_as_cine", "u.dcm: NumberOfFrames: expected at least 3 frames (a "
     "cine loop), found 1"),
    ("nifti_nan", "n.nii.gz: voxels: expected finite values (no NaN or infinity), found 1 of "
     "256 non-finite (1 NaN), the first at index (1, 2, 3)"),
    ("nifti_zero_spacing", "z.nii: pixdim (voxel size): expected voxel sizes that are finite "
     "and > 0 (mm), found (1.0, 0.0, 2.0)"),
    ("nifti_labels_outside_set", "l.nii.gz: labels: expected labels in [0, 1, 2, 3], found 7"),
    ("h5_missing_key", "s.h5: keys: expected the keys ['image', 'label'], found missing "
     "['label'] (keys: ['image'])"),
])
def test_exact_messages(name: str, message: str, corpus_outcomes: dict) -> None:
    detail = corpus_outcomes[name].detail
    assert message in detail, detail


def test_real_echonet_truncations_are_refused(real_cases: list, tmp_path: Path) -> None:
    outcomes = {c.name: run_case(c, tmp_path / c.name) for c in real_cases}
    assert {n: o.outcome for n, o in outcomes.items()} == {
        "real_echonet_truncated_10": CLEAR, "real_echonet_truncated_50": CLEAR,
        "real_echonet_truncated_90": CLEAR, "real_echonet_whole": READ}
    assert "found 123 decoded" in outcomes["real_echonet_truncated_50"].detail
