"""DICOM Segmentation of predicted masks (highdicom), and masks back on the source grid.

Pipelines write masks in their model's grid (``masks/<sample_id>.npz``, key ``mask``,
(T, h, w)); `source_masks` maps them back onto the source frames through the same crop/pad/
resize transform the prediction used (`cinelab.prep.echo.preprocess_echo`). highdicom only
segments one frame of a source without a Frame of Reference (ultrasound), so the SEG holds
the end-diastolic and end-systolic frames as one single-frame SEG each, every one referencing
its source instance and frame number.
"""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cinelab.prep.echo import preprocess_echo
from cinelab.prep.prepare import load_echo_source
from cinelab.serve.sr import MANUFACTURER, SEG_SERIES_NUMBER
from cinelab.utils import atomic_path

SINGLE_FRAME_US = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
OUTLINE = (0, 255, 0)
OVERLAY_FPS = 30.0  # overlay videos' frame rate when the source's is unknown


def read_mask(path: str | Path) -> np.ndarray:
    """The (T, h, w) boolean mask of a ``masks/<sample>.npz`` file."""
    with np.load(path) as data:
        mask = np.asarray(data["mask"])
    return (mask[None] if mask.ndim == 2 else mask) > 0


def unmap_mask(transform: dict, mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Masks (T, s, s) in a `preprocess_echo` output grid -> (T, height, width) source grid
    (nearest neighbour; zero outside the crop box)."""
    y0, x0, y1, x1 = transform["crop"]
    top, left = transform["pad"]
    scale, size = float(transform["scale"]), int(transform["out_size"])
    oy = np.clip(np.floor((np.arange(y0, y1) - y0 + top + 0.5) * scale), 0, size - 1).astype(int)
    ox = np.clip(np.floor((np.arange(x0, x1) - x0 + left + 0.5) * scale), 0, size - 1).astype(int)
    out = np.zeros((mask.shape[0], height, width), dtype=bool)
    out[:, y0:y1, x0:x1] = mask[:, oy[:, None], ox[None, :]]
    return out


def source_masks(source: Path, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W, 3) uint8, masks (T, H, W) bool) of a source video or DICOM."""
    src = load_echo_source(source)
    dicom = bool(src["dicom"])
    # the sector box comes from every frame unless the DICOM names its region
    used = src["frames"] if dicom and src["region"] is None else src["frames"][:1]
    _, transform = preprocess_echo(used, region=src["region"], size=mask.shape[-1],
                                   channels=3, blank=dicom, crop=dicom)
    frames = src["frames"]
    frames = np.repeat(frames, 3, axis=-1) if frames.ndim == 4 and frames.shape[-1] == 1 \
        else frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=-1)
    height, width = frames.shape[1:3]
    return frames, unmap_mask(transform, mask[: len(frames)], height, width)


def _outlined(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of one RGB frame with the mask's outline drawn on it."""
    tile = np.ascontiguousarray(frame[..., :3]).copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tile, contours, -1, OUTLINE, 1)
    return tile


def overlay_png(path: str | Path, frames: np.ndarray, masks: np.ndarray,
                picks: list[int]) -> Path:
    """A PNG of the picked frames side by side, each with the mask outlined."""
    tiles = [_outlined(frames[index], masks[index]) for index in picks]
    with atomic_path(path) as tmp:
        ok, data = cv2.imencode(".png", cv2.cvtColor(np.hstack(tiles), cv2.COLOR_RGB2BGR))
        Path(tmp).write_bytes(data.tobytes())
    return Path(path)


def overlay_webm(path: str | Path, frames: np.ndarray, masks: np.ndarray,
                 fps: float = OVERLAY_FPS) -> Path:
    """A WebM (VP8, which browsers play without proprietary codecs) of every frame with
    its mask outlined; raises ValueError when OpenCV cannot write VP8 here."""
    count = min(len(frames), len(masks))
    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # even sizes
    with atomic_path(path) as tmp:  # FFmpeg notes 'VP80' is no WebM tag, then writes VP8
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"VP80"), fps,
                                 (width, height))
        if not writer.isOpened():
            raise ValueError("OpenCV cannot write VP8/WebM video here")
        try:
            for index in range(count):
                tile = _outlined(frames[index], masks[index])[:height, :width]
                writer.write(cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    return Path(path)


def _segment() -> hd.seg.SegmentDescription:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="cinelab", version="1", family=codes.cid7162.ArtificialIntelligence)
    return hd.seg.SegmentDescription(
        segment_number=1, segment_label="Left ventricle",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.LeftVentricle,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)


def _one_frame_proxy(source: Dataset) -> Dataset:
    """A single-frame view of a multi-frame source without Frame of Reference."""
    proxy = copy.deepcopy(source)
    if "NumberOfFrames" in proxy:
        del proxy.NumberOfFrames
    if "FrameOfReferenceUID" not in proxy:
        proxy.SOPClassUID = SINGLE_FRAME_US
    return proxy


def _point_at_frame(seg: Dataset, source: Dataset, frame: int) -> None:
    """Make the SEG's references name the real source class and (1-based) frame number."""
    refs = list(seg.get("SourceImageSequence", []))
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            refs += list(derivation.get("SourceImageSequence", []))
    for ref in refs:
        ref.ReferencedSOPClassUID = source.SOPClassUID
        if "NumberOfFrames" in source:
            ref.ReferencedFrameNumber = frame + 1


def write_seg(path: str | Path, source: Dataset, mask: np.ndarray, frame: int,
              series_uid: str, number: int) -> Path:
    """A binary SEG of `mask` (H, W) on `frame` of `source` (its header suffices)."""
    multi_no_ref = "NumberOfFrames" in source and "FrameOfReferenceUID" not in source
    proxy = _one_frame_proxy(source) if multi_no_ref else source
    pixels = mask[None] if multi_no_ref or "NumberOfFrames" not in source else mask
    seg = hd.seg.Segmentation(
        source_images=[proxy], pixel_array=pixels.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment()], series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER, sop_instance_uid=generate_uid(),
        instance_number=number, manufacturer=MANUFACTURER,
        manufacturer_model_name="cinelab serve", software_versions="1",
        device_serial_number="0", omit_empty_frames=False)
    if multi_no_ref:
        _point_at_frame(seg, source, frame)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)


#: class name (as the CMR checkpoints name them) -> segmented property type
CARDIAC_TYPES = {"LV": codes.SCT.LeftVentricle, "RV": codes.SCT.RightVentricle,
                 "MYO": hd.sr.CodedConcept("74281007", "SCT", "Myocardium")}
CARDIAC_LABELS = {"LV": "Left ventricle", "RV": "Right ventricle", "MYO": "Myocardium"}


def _class_segment(number: int, name: str) -> hd.seg.SegmentDescription:
    """Segment `number` for class `name` (a generic tissue for unknown names)."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="cinelab", version="1", family=codes.cid7162.ArtificialIntelligence)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=CARDIAC_LABELS.get(name, name),
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=CARDIAC_TYPES.get(name, codes.SCT.Tissue),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)


def write_label_seg(path: str | Path, sources: list[Dataset], labels: np.ndarray,
                    classes: dict[str, int], series_uid: str, number: int) -> Path:
    """A binary SEG of label maps (Z, H, W) on single-frame `sources` (one series, one per
    slice, headers suffice): one segment per class in `classes` (name -> label value)."""
    names = sorted(classes, key=classes.__getitem__)
    segments = np.zeros(labels.shape, np.uint8)
    for k, name in enumerate(names, 1):
        segments[labels == classes[name]] = k
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_class_segment(k, n) for k, n in enumerate(names, 1)],
        series_instance_uid=series_uid, series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=number, manufacturer=MANUFACTURER,
        manufacturer_model_name="cinelab serve", software_versions="1",
        device_serial_number="0", omit_empty_frames=False)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)
