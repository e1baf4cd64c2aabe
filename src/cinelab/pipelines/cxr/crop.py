"""Chest X-ray preprocessing: a square lung crop from a lung mask, Lanczos sizes, variants.

The crop box is the bounding box of the two largest mask components (the lung fields),
expanded on every side by `margin` x its longer side (this keeps the costophrenic angles,
the pleural spaces and the retrocardiac region, which lung masks exclude), made square about
its centre and shifted (then, only if larger than the image, shrunk) to fit the image.
Implausible masks give no box and a reason, and the caller keeps the uncropped image:

- "empty mask", "mask too small" (< `min_fraction` of the image),
- "mask touches all four image borders" (a full-frame or inverted mask),
- "one lung" (one component, or a second component < `min_ratio` of the first or
  < `min_lung_fraction` of the image), "both components on one side of the midline".

Boxes are (y0, x0, y1, x1), half-open: image[y0:y1, x0:x1].

Resizing uses Lanczos (cv2.INTER_LANCZOS4). OpenCV's Lanczos does not low-pass before
shrinking, so an image more than 2x larger than the target is first reduced with area
averaging to twice the target size (as Pillow's antialiased LANCZOS would); smaller factors
are pure Lanczos. `fit="stretch"` resizes the region to size x size (the DeepCOVID-XR
choice for uncropped images); `fit="pad"` pads it with black to a square first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cinelab.data.store import channel_stats, write_sample
from cinelab.errors import InputError, Problem
from cinelab.io.cxr_dicom import CxrAcceptance, read_cxr
from cinelab.io.image import read_image
from cinelab.pipelines.registry import Options
from cinelab.prep.geometry import Box, square_box

DEFAULT_SIZES = (224, 331)
DEFAULT_MARGIN = 0.05
MIN_MASK_FRACTION = 0.05  # both lungs together, of the image area
MIN_LUNG_FRACTION = 0.01  # each lung, of the image area
MIN_LUNG_RATIO = 0.2  # smaller lung area / larger lung area
PREFILTER_FACTOR = 2  # shrink by area averaging to this many times the target first
FITS = ("stretch", "pad")
VARIANTS = ("crop", "uncrop")
NO_CROP_MODES = ("never", "none", "uncrop")  # PrepSpec.crop values that keep the full image
MASK_LEVEL = 127  # mask PNG values above this are lung
ASPECT_TOLERANCE = 0.02  # relative width/height difference a lung mask may have
REASON_OK = "ok"
REASON_NO_MASK = "no lung mask"
REASON_NOT_REQUESTED = "crop not requested"
#: Where a cohort's lung masks came from, recorded in stores.json and ensemble.json
#: ("crop_source") and used by predict: the lung U-Net for every image, mask files, none.
CROP_SOURCES = ("unet", "files", "none")
STAGE = "prepare"


@dataclass(frozen=True)
class CxrVariants:
    """Every (variant, size) image of one radiograph and how the crop was decided."""

    images: dict[tuple[str, int], np.ndarray]
    box: Box | None
    reason: str
    original_shape: tuple[int, int]

    @property
    def cropped(self) -> bool:
        """True when the crop variants really are lung crops (not the fallback)."""
        return self.box is not None


def lung_crop_box(
    mask: np.ndarray,
    margin: float = DEFAULT_MARGIN,
    *,
    min_fraction: float = MIN_MASK_FRACTION,
    min_lung_fraction: float = MIN_LUNG_FRACTION,
    min_ratio: float = MIN_LUNG_RATIO,
) -> tuple[Box | None, str]:
    """A square box around both lungs with a margin, or (None, why the mask is implausible)."""
    mask = np.asarray(mask) > 0
    if mask.ndim != 2:
        raise InputError(None, "mask", "a 2D (H, W) lung mask", f"shape {mask.shape}")
    reason = _implausible(mask, min_fraction)
    if reason:
        return None, reason
    lungs, reason = _two_lungs(mask, min_lung_fraction, min_ratio)
    if lungs is None:
        return None, reason
    y0, x0 = lungs[:, 0].min(), lungs[:, 1].min()
    y1, x1 = lungs[:, 2].max(), lungs[:, 3].max()
    return square_box((int(y0), int(x0), int(y1), int(x1)), mask.shape, margin), REASON_OK


def _implausible(mask: np.ndarray, min_fraction: float) -> str:
    """Why the mask as a whole cannot be two lungs ('' when it may be)."""
    fraction = float(mask.mean())
    if fraction == 0.0:
        return "empty mask"
    if fraction < min_fraction:
        return f"mask too small: {fraction:.1%} of the image (minimum {min_fraction:.0%})"
    if mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any():
        return "mask touches all four image borders (full-frame or inverted mask)"
    return ""


def _two_lungs(mask: np.ndarray, min_lung_fraction: float,
               min_ratio: float) -> tuple[np.ndarray | None, str]:
    """(2, 4) boxes (y0, x0, y1, x1) of the two largest components, or None and why."""
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1] + 1
    if n - 1 < 2:
        return None, "one lung: the mask has a single component"
    big, small = order[:2]
    a_big, a_small = stats[big, cv2.CC_STAT_AREA], stats[small, cv2.CC_STAT_AREA]
    if a_small < min_ratio * a_big or a_small < min_lung_fraction * mask.size:
        return None, (f"one lung: the second component is {a_small / a_big:.0%} of the first "
                      f"and {a_small / mask.size:.1%} of the image (minimum {min_ratio:.0%} "
                      f"and {min_lung_fraction:.0%})")
    midline = mask.shape[1] / 2.0
    xs = sorted(float(centroids[i][0]) for i in (big, small))
    if not xs[0] < midline < xs[1]:
        return None, "both components on one side of the midline (one lung in pieces)"
    boxes = [(s[cv2.CC_STAT_TOP], s[cv2.CC_STAT_LEFT], s[cv2.CC_STAT_TOP] + s[cv2.CC_STAT_HEIGHT],
              s[cv2.CC_STAT_LEFT] + s[cv2.CC_STAT_WIDTH]) for s in stats[[big, small]]]
    return np.asarray(boxes), REASON_OK


def resize_lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """size x size with Lanczos (area-averaged first when shrinking more than 2x)."""
    height, width = image.shape[:2]
    limit = PREFILTER_FACTOR * size
    if height > limit or width > limit:
        image = cv2.resize(image, (min(width, limit), min(height, limit)),
                           interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LANCZOS4)


def crop_and_resize(image: np.ndarray, box: Box | None,
                    sizes: tuple[int, ...] | list[int] = DEFAULT_SIZES,
                    fit: str = "stretch") -> dict[int, np.ndarray]:
    """The box (or the whole image when None) resized to every size, uint8."""
    region = _region(image, box, fit)
    return {int(s): resize_lanczos(region, int(s)) for s in sizes}


def resize_mask(mask: np.ndarray, box: Box | None, size: int, fit: str = "stretch") -> np.ndarray:
    """A label mask through the same crop/fit as the image, nearest neighbour, uint8."""
    region = _region(mask.astype(np.uint8), box, fit)
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_NEAREST)


def _region(image: np.ndarray, box: Box | None, fit: str) -> np.ndarray:
    if fit not in FITS:
        raise InputError(None, "fit", f"one of {FITS}", repr(fit))
    region = image if box is None else image[box[0]:box[2], box[1]:box[3]]
    if fit == "pad":
        region = _pad_square(region)
    return np.ascontiguousarray(region)


def _pad_square(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = max(height, width)
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    out[top:top + height, left:left + width] = image
    return out


def cxr_variants(image: np.ndarray, lung_mask: np.ndarray | None,
                 sizes: tuple[int, ...] | list[int] = DEFAULT_SIZES,
                 margin: float = DEFAULT_MARGIN, fit: str = "stretch") -> CxrVariants:
    """("crop"|"uncrop", size) -> image; the crop variants fall back to the uncropped image
    (and `reason` says why) when there is no mask or it is implausible."""
    box, reason = crop_decision(image.shape[:2], lung_mask, margin)
    uncrop = crop_and_resize(image, None, sizes, fit)
    crop = crop_and_resize(image, box, sizes, fit) if box is not None else uncrop
    images = {("uncrop", s): uncrop[s] for s in uncrop}
    images.update({("crop", s): crop[s] for s in crop})
    return CxrVariants(images, box, reason, (int(image.shape[0]), int(image.shape[1])))


def crop_decision(shape: tuple[int, ...], lung_mask: np.ndarray | None,
                  margin: float = DEFAULT_MARGIN) -> tuple[Box | None, str]:
    """The crop box in image pixels (masks of another size are resized first) and why."""
    if lung_mask is None:
        return None, REASON_NO_MASK
    return lung_crop_box(fit_mask(lung_mask, shape), margin)


def fit_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A bool mask at the image's (H, W) (nearest neighbour when the sizes differ).

    A mask whose aspect ratio differs from the image's by more than ASPECT_TOLERANCE is an
    InputError (it belongs to another image or was cropped): never stretched onto the image.
    """
    mask = np.asarray(mask)
    mask = mask.reshape(mask.shape[:2]) if mask.ndim == 3 and mask.shape[2] == 1 else mask
    check_mask_aspect(mask.shape[:2], shape[:2])
    if mask.shape[:2] != tuple(shape[:2]):
        mask = cv2.resize((mask > 0).astype(np.uint8), (int(shape[1]), int(shape[0])),
                          interpolation=cv2.INTER_NEAREST)
    return mask > 0


def check_mask_aspect(mask_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> None:
    """InputError when a mask's width/height differs from the image's by more than
    ASPECT_TOLERANCE (relative); a resized mask of the same aspect is fine."""
    (mh, mw), (ih, iw) = (int(v) for v in mask_shape[:2]), (int(v) for v in image_shape[:2])
    mask_aspect, image_aspect = mw / max(mh, 1), iw / max(ih, 1)
    if abs(mask_aspect / image_aspect - 1.0) > ASPECT_TOLERANCE:
        raise InputError(None, "lung mask shape",
                         f"the image's aspect ratio ({ih}x{iw}, width/height "
                         f"{image_aspect:.3f}, within {ASPECT_TOLERANCE:.0%})",
                         f"{mh}x{mw} (width/height {mask_aspect:.3f})",
                         "the mask belongs to another image or was cropped; fix or remove it")


def restore_map(values: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    """A (size, size) map on a prepared image (e.g. Grad-CAM) back onto the original image
    pixels, float32 (H, W), zero outside the crop."""
    height, width = transform["original_shape"]
    y0, x0, y1, x1 = transform["box"] or (0, 0, height, width)
    side_h, side_w = y1 - y0, x1 - x0
    if transform["fit"] == "pad":
        side_h = side_w = max(side_h, side_w)
    full = cv2.resize(values.astype(np.float32), (side_w, side_h), interpolation=cv2.INTER_LINEAR)
    top, left = (side_h - (y1 - y0)) // 2, (side_w - (x1 - x0)) // 2
    out = np.zeros((height, width), np.float32)
    out[y0:y1, x0:x1] = full[top:top + y1 - y0, left:left + x1 - x0]
    return out


def acceptance(options: Options) -> CxrAcceptance:
    """The DICOM acceptance of ``--option modalities=[CR,DX] views=[PA] min_side=512``
    (each defaults to `CxrAcceptance`'s: CR/DX/DR, PA/AP, 256 px)."""
    default = CxrAcceptance()
    return CxrAcceptance(
        tuple(str(m).upper() for m in options.get("modalities", default.modalities)),
        tuple(str(v).upper() for v in options.get("views", default.views)),
        int(options.get("min_side", default.min_side)))


def resolve_mask_source(asked: str, recorded: str | None, has_lung: bool) -> str:
    """The mask source predict uses: `asked` unless "auto"; "auto" follows the source the
    ensemble was trained with (`recorded`), else the U-Net when there is one, else files.
    A U-Net source without a U-Net is an InputError (never a silent whole-image run)."""
    if recorded is not None and recorded not in CROP_SOURCES:
        raise InputError(None, "crop_source", f"one of {list(CROP_SOURCES)}", repr(recorded))
    source = asked if asked != "auto" else recorded or ("unet" if has_lung else "files")
    if source == "unet" and not has_lung:
        raise InputError(None, "mask_source", "a lung U-Net (lung/model.pt) in the ensemble",
                         "none", "train-ensemble --lung-model FILE, or masks=files")
    return source


def read_lung_mask(path: object) -> np.ndarray | None:
    """A lung mask image as bool (H, W): lung is > 127, or > 0 in a 0/1 mask; None when
    `path` is empty."""
    if not isinstance(path, str | Path) or not str(path):
        return None
    mask = read_image(path, scale16="minmax")
    return mask > (MASK_LEVEL if mask.max() > 1 else 0)


def prepare_cxr_sample(task: dict[str, Any]) -> dict[str, Any]:
    """Prepare one radiograph into the store: one variant (spec size, crop mode) per store.

    spec["crop"]: "never"/"none" keeps the whole image; any other value ("auto", "always",
    "lung") crops to the lungs when the row's mask_path holds a plausible mask, else keeps
    the whole image and records why. Never raises: failures come back as a problem.
    """
    row, root, spec = task["row"], Path(task["root"]), task["spec"]
    path = Path(str(row["path"]))
    try:
        image = read_cxr(path, accept=CxrAcceptance())  # non-CXR DICOMs become problems
        size, fit = int(spec["size"]), str(spec.get("fit", "stretch"))
        box, reason, mask = _sample_crop(row, image.shape, str(spec.get("crop", "auto")))
        frame = crop_and_resize(image, box, (size,), fit)[size]
        frames = np.repeat(frame[None, ..., None], int(spec.get("channels", 1)), axis=-1)
        masks = None if mask is None else resize_mask(mask, box, size, fit)[None]
        transform = {"box": None if box is None else list(box), "size": size, "fit": fit,
                     "original_shape": [int(image.shape[0]), int(image.shape[1])]}
        meta = {"source": str(path), "source_hash": task["hash"], "spec": spec, "fps": None,
                "original_shape": [int(image.shape[0]), int(image.shape[1])],
                "crop": {"applied": box is not None, "reason": reason},
                "transform": transform, "stats": channel_stats(frames)}
        meta = write_sample(root, str(row["sample_id"]), frames, meta, masks)
        return {"sample_id": row["sample_id"], "meta": meta}
    except Exception as exc:  # one bad file is reported and skipped
        return {"sample_id": row["sample_id"],
                "problem": asdict(Problem.from_exception(path, STAGE, exc))}


def _sample_crop(row: dict[str, Any], shape: tuple[int, ...],
                 mode: str) -> tuple[Box | None, str, np.ndarray | None]:
    """The crop box, the reason and the lung mask at image size (None when absent)."""
    mask_path = row.get("mask_path")
    try:
        mask = read_lung_mask(mask_path)
    except InputError as exc:  # an unreadable mask costs the crop, not the image
        return None, f"unreadable lung mask: {exc}", None
    mask = None if mask is None else fit_mask(mask, shape)
    if mode.lower() in NO_CROP_MODES:
        return None, REASON_NOT_REQUESTED, mask
    box, reason = crop_decision(shape, mask)
    return box, reason, mask
