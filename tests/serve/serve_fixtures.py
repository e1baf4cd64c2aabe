"""Helpers of the serve tests: tiny random-weight EchoNet checkpoints (EF + segmentation),
a synthetic ultrasound DICOM maker (with planted PHI), noise videos and configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cinelab.io.video import write_video
from cinelab.models.registry import create_model
from cinelab.serve.config import ServeConfig, parse_config
from cinelab.train.checkpoint import InputSpec, save_checkpoint

TOKEN = "test-token-0123456789abcdef"
EF_SIZE, SEG_SIZE, CLIP, PERIOD = 32, 32, 8, 2
MEAN, STD = [32.0] * 3, [50.0] * 3
EF_KW = {"in_channels": 3, "channels": [4, 8]}
SEG_KW = {"in_channels": 3, "out_channels": 1, "channels": [4, 8, 16, 32]}
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
PHI = {"PatientName": "Plantedname^Zebulon", "PatientID": "PHI-ID-777123",
       "PatientBirthDate": "19310417", "InstitutionName": "Planted General Hospital",
       "ReferringPhysicianName": "Quackenbush^Planted", "AccessionNumber": "ACC99887766"}


def tiny_echonet(root: Path) -> Path:
    """An EchoNet run folder (ef/model.pt + seg/model.pt) with random weights."""
    torch.manual_seed(0)
    for sub, name, kw, spec in (
            ("ef", "tiny_video", EF_KW, InputSpec("video", EF_SIZE, 3, CLIP, PERIOD, MEAN, STD,
                                                  "EF")),
            ("seg", "unet_small", SEG_KW, InputSpec("segmentation", SEG_SIZE, 3, None, None,
                                                    MEAN, STD))):
        save_checkpoint(root / sub / "model.pt", create_model(name, **kw),
                        {"model": {"name": name, "kwargs": kw}}, spec)
    return root


def us_dicom(path: Path, study: str | None = None, frames: int = 20, seed: int = 0,
             phi: dict[str, str] | None = None) -> Dataset:
    """Write a synthetic ultrasound multi-frame DICOM (RGB noise in a moving blob)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (frames, 48, 64, 3), dtype=np.uint8)
    for t in range(frames):
        r = 10 + int(6 * np.sin(2 * np.pi * t / 10))
        pixels[t, 24 - r:24 + r, 32 - r:32 + r] += 120
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.StudyDate, ds.StudyTime, ds.StudyID = "US", "20240101", "120000", "1"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    for key, value in (phi or {"PatientName": "Anon^Test", "PatientID": "T1"}).items():
        setattr(ds, key, value)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns, ds.NumberOfFrames = 48, 64, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.FrameIncrementPointer = 33.333, (0x0018, 0x1063)
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def noise_avi(path: Path, frames: int = 24, seed: int = 0) -> Path:
    """A small AVI of a pulsing blob (an echo stand-in)."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 40, (frames, 40, 48, 3), dtype=np.uint8)
    for t in range(frames):
        r = 8 + int(5 * np.sin(2 * np.pi * t / 10))
        video[t, 20 - r:20 + r, 24 - r:24 + r] += 150
    write_video(path, video, 30)
    return path


def config_dict(state: Path, model: Path, **extra: Any) -> dict[str, Any]:
    """A serve config mapping: US -> echonet, loopback, free ports, test token."""
    raw: dict[str, Any] = {
        "models": {"echonet": {"path": str(model), "options": {"stride": 4}}},
        "routes": [{"modality": "US", "models": ["echonet"]}],
        "dicom": {"ae_title": "CINELAB", "port": 0, "quiet_seconds": 0.5},
        "http": {"port": 0}, "token": TOKEN, "state": str(state),
        "limits": {"upload_bytes": 5_000_000, "instances_per_study": 50},
        "pseudonymise": {"enabled": False}}
    raw.update(extra)
    return raw


def make_config(state: Path, model: Path, **extra: Any) -> ServeConfig:
    """A validated `ServeConfig` from `config_dict`."""
    return parse_config(config_dict(state, model, **extra), state.parent, {})
