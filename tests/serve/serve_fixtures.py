"""Helpers of the serve tests: tiny EchoNet checkpoints (EF + segmentation), CXR ensemble
and threshold CMR segmenter; synthetic ultrasound (with planted PHI) and chest DICOMs, noise
videos, configs; a C-STORE SCU and a wait for a study to be processed; CMR checkpoints with
a hand-set OOD detector, short-axis cine studies (or noise in their place), a tiny age cv."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SegmentationStorage,
)
from torch import nn

from cinelab.data.store import PreparedStore
from cinelab.infer.ensemble import EnsembleWeights, save_ensemble_weights
from cinelab.infer.ood import MahalanobisDetector
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.io.cxr_dicom import write_cxr_dicom
from cinelab.io.video import write_video
from cinelab.models.registry import create_model, register_model
from cinelab.pipelines.cmr.acdc import LV_LABEL, MYO_LABEL, RV_LABEL
from cinelab.pipelines.cmr.ood import stack_features
from cinelab.pipelines.cmr.synth import synth_cmr_cohort
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.serve.cmr import cine_input
from cinelab.serve.config import ServeConfig, parse_config
from cinelab.serve.queue import DONE
from cinelab.train.checkpoint import InputSpec, load_checkpoint, save_checkpoint

TOKEN = "test-token-0123456789abcdef"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serve.yaml"
#: the allowed SeriesDescription words the shipped example keeps (pseudonymise)
VIEW_WORDS = yaml.safe_load(EXAMPLE.read_text())["pseudonymise"]["series_description"]
WAIT_S = 60.0
QUICK_DICOM = {"ae_title": "CINELAB", "port": 0, "quiet_seconds": 0.2}
EF_SIZE, SEG_SIZE, CLIP, PERIOD = 32, 32, 8, 2
MEAN, STD = [32.0] * 3, [50.0] * 3
EF_KW = {"in_channels": 3, "channels": [4, 8]}
SEG_KW = {"in_channels": 3, "out_channels": 1, "channels": [4, 8, 16, 32]}
CXR_SIZE, CXR_MEMBER = 32, "resnet10t-32-uncrop"
CMR_CLASSES = {"LV": LV_LABEL, "MYO": MYO_LABEL, "RV": RV_LABEL}
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


def tiny_cxr(root: Path) -> Path:
    """A one-member CXR ensemble folder (resnet10t, 32 px, uncropped) with random weights."""
    torch.manual_seed(0)
    kw = {"in_channels": 1, "num_outputs": 1}
    spec = InputSpec(task="image_classification", size=CXR_SIZE, channels=1, mean=[110.0],
                     std=[60.0])
    save_checkpoint(root / "members" / CXR_MEMBER / "model.pt", create_model("resnet10t", **kw),
                    {"model": {"name": "resnet10t", "kwargs": kw}}, spec)
    info = {CXR_MEMBER: {"model": "resnet10t", "size": CXR_SIZE, "crop": "uncrop",
                         "checkpoint": f"members/{CXR_MEMBER}/model.pt"}}
    save_ensemble_weights(root / "ensemble.json", EnsembleWeights(
        np.array([1.0]), "bmc", "binary", [CXR_MEMBER], {"member_info": info,
                                                          "threshold": 0.5}))
    return root


class Bright(nn.Module):
    """Class LV where the normalised input is above 1, else background (a CMR stand-in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lv = 4 * (x - 1.0)
        return torch.cat([-lv, lv, torch.full_like(x, -9), torch.full_like(x, -9)], dim=1)


@register_model("serve_test_bright", "segmentation")
def _bright(**_: object) -> nn.Module:
    return Bright()


def tiny_cmr(root: Path) -> Path:
    """A CMR segmentation checkpoint (LV = bright pixels) at 32 px."""
    recipe = {"name": "serve-test", "model": {"name": "serve_test_bright", "kwargs": {}},
              "data": {"classes": CMR_CLASSES}}
    spec = InputSpec("image_segmentation", 32, 1, mean=[60.0], std=[40.0], target="labels")
    return save_checkpoint(root / "model.pt", Bright(), recipe, spec, {"classes": CMR_CLASSES})


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


def send_instances(port: int, context: str, *datasets: Dataset) -> list[int]:
    """C-STORE `datasets` (SOP class `context`) to the node on `port`; their statuses."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(context, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CINELAB")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def capture_scp() -> tuple[Any, list[Dataset]]:
    """A PACS stand-in on a free port that keeps the SRs and SEGs forwarded to it."""
    received: list[Dataset] = []

    def keep(event: Any) -> int:
        received.append(event.dataset)
        return 0

    ae = AE(ae_title="PACS")
    ae.add_supported_context(Comprehensive3DSRStorage)
    ae.add_supported_context(SegmentationStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, keep)])
    return server, received


def wait_done(service: Any, uid: str) -> Any:
    """The study `uid` once processed (asserted done)."""
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        study = service.queue.get(uid)
        if study is not None and study.status not in ("receiving", "queued", "running"):
            assert study.status == DONE, study.reason
            return study
        time.sleep(0.1)
    raise AssertionError("study not processed in time")


def chest_dicom(path: Path) -> Dataset:
    """A 256 px DX PA radiograph (bright body, dark lungs, noise)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, (256, 256)).astype(np.uint8) + np.uint8(150)
    image[40:220, 40:120] -= 100
    image[40:220, 136:216] -= 100
    write_cxr_dicom(path, image, modality="DX", ViewPosition="PA", StudyDate="20240101",
                    StudyTime="120000", StudyID="1", SeriesNumber=1, InstanceNumber=1)
    return pydicom.dcmread(path)


class Stats(nn.Module):
    """(x, x²) per pixel: the feature map an OOD detector of `BrightStats` is fitted on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x * x], dim=1)


class BrightStats(Bright):
    """`Bright` with a feature module (`stats`) that the CMR OOD check can hook."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = Stats()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.stats(x)
        return super().forward(x)


@register_model("serve_test_bright_stats", "segmentation")
def _bright_stats(**_: object) -> nn.Module:
    return BrightStats()


def cine_study(root: Path, seed: int = 2, noise: bool = False) -> list[Dataset]:
    """A synthetic short-axis cine (every third slice of 11: 4 slices x 4 frames) as one
    series of single-frame MR instances sharing one Frame of Reference and a new study;
    `noise`: the same geometry with uniform noise for pixels (not a heart)."""
    cohort = synth_cmr_cohort(root, n=1, seed=seed, layout="dsb", size=(40, 36), n_frames=4,
                              defects=False)
    frame_of_reference, series, study = generate_uid(), generate_uid(), generate_uid()
    found = [pydicom.dcmread(p) for p in sorted(cohort.dsb_root.rglob("*.dcm"))]
    locations = sorted({float(d.SliceLocation) for d in found})[::3]
    sent = [d for d in found if float(d.SliceLocation) in locations]
    rng = np.random.default_rng(seed)
    for ds in sent:
        ds.FrameOfReferenceUID, ds.SeriesInstanceUID = frame_of_reference, series
        ds.StudyInstanceUID = study
        if noise:
            pixels = ds.pixel_array
            ds.PixelData = rng.integers(0, int(pixels.max()) + 1, pixels.shape,
                                        dtype=pixels.dtype).tobytes()
    return sent


def stats_cmr(root: Path, means: np.ndarray, threshold: float) -> Path:
    """A CMR checkpoint (`BrightStats`) whose OOD detector flags stacks whose pooled
    (x, x²) lie further than `threshold` from `means` (identity precision)."""
    detector = MahalanobisDetector(means=np.asarray(means, float).reshape(1, -1),
                                   precision=np.eye(2), module="stats", threshold=threshold)
    recipe = {"name": "serve-test", "model": {"name": "serve_test_bright_stats", "kwargs": {}},
              "data": {"classes": CMR_CLASSES}}
    spec = InputSpec("image_segmentation", 32, 1, mean=[60.0], std=[40.0], target="labels")
    extra = {"classes": CMR_CLASSES, **UncertaintyState(ood=detector).to_extra()}
    return save_checkpoint(root / "model.pt", BrightStats(), recipe, spec, extra)


def cine_features(model: Path, study: list[Dataset], work: Path) -> np.ndarray:
    """The pooled (x, x²) of `study` as the CMR pipeline's OOD check computes them."""
    incoming = work / "incoming"
    incoming.mkdir(parents=True)
    for ds in study:
        ds.save_as(incoming / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    cine = cine_input(incoming, work / "cine", "s")
    get_pipeline("cmr").predict(model, cine, work / "out", Options())
    loaded = load_checkpoint(model)
    return stack_features(loaded.model, loaded.input_spec, PreparedStore(work / "out" / "store"),
                          ["s"], "stats")[0]


def tiny_age(root: Path, cohort: Path) -> Path:
    """An age cv folder (2 outer x 2 inner folds, one epoch, 16 px) trained on `cohort`."""
    tiny = ["data.batch_size=4", "trainer.max_epochs=1",
            "model.kwargs={in_channels: 1, num_outputs: 1, channels: [4, 8]}"]
    get_pipeline("age").run(cohort, root, Options(extra={
        "outer": 2, "inner": 2, "tta": 1, "size": 16, "n_boot": 20, "method": "mean",
        "set": tiny}))
    return root / "cv"
