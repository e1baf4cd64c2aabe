"""PNG image + mask folders (the layout the cmr-seg-tl seed trained fastai on) -> manifest.

Two layouts are recognised under `root`:

- paired folders: `images/<name>.png` with `masks/<name>.png` (mask folder also named
  `labels`, `mask` or `label`); images may sit in sub-folders, mirrored under the masks;
- suffixed files: `<name>.png` beside `<name>_mask.png`, anywhere below `root`.

The patient is the first sub-folder below the images folder when there is one, else the part
of the name before `-frame`/`_frame`/`-slice`/`_slice` (e.g. `1139-frame004-slice001`), else
the name. Frame and slice numbers in names become columns. Images without a mask, masks
without an image and unreadable or mismatched pairs are reported, never fatal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from cinelab.data.manifest import new_manifest
from cinelab.errors import InputError, Problem

PNG = ".png"
IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "labels", "mask", "label")
MASK_SUFFIX = "_mask"
PATIENT_PATTERN = re.compile(r"^(?P<patient>.+?)[-_](?:frame|slice)", re.IGNORECASE)
FRAME_PATTERN = re.compile(r"frame[-_]?(\d+)", re.IGNORECASE)
SLICE_PATTERN = re.compile(r"slice[-_]?(\d+)", re.IGNORECASE)
MODALITY, VIEW = "cmr", "sax"
STAGE = "pngmasks"


def read_png_masks(root: str | Path, check_sizes: bool = True,
                   modality: str = MODALITY, view: str = VIEW
                   ) -> tuple[pd.DataFrame, list[Problem]]:
    """Manifest (path = image, mask_path = mask) of every image/mask pair under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "root", "a folder of PNG images and masks", "no folder")
    image_dir, mask_dir = paired_dirs(root)
    if image_dir is not None and mask_dir is not None:
        pairs, problems = _paired(image_dir, mask_dir)
    else:
        pairs, problems = _suffixed(root)
    rows = []
    for key, (image, mask) in sorted(pairs.items()):
        if check_sizes and not _same_size(image, mask, problems):
            continue
        rows.append(_row(key, image, mask, modality, view))
    if not rows:
        raise InputError(root, "images", "PNG images with masks (images/ + masks/, or "
                         f"<name>.png + <name>{MASK_SUFFIX}.png)", "no pair")
    return new_manifest(rows), problems


def paired_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """The images and masks folders directly under `root`, when both exist."""
    pick = [next((root / n for n in names if (root / n).is_dir()), None)
            for names in (IMAGE_DIRS, MASK_DIRS)]
    return pick[0], pick[1]


def _pngs(folder: Path) -> dict[str, Path]:
    """Relative path without suffix -> file, for every PNG below `folder`."""
    return {p.relative_to(folder).with_suffix("").as_posix(): p
            for p in folder.rglob(f"*{PNG}") if p.is_file()}


def _paired(image_dir: Path, mask_dir: Path) -> tuple[dict, list[Problem]]:
    images, masks = _pngs(image_dir), _pngs(mask_dir)
    problems = _unmatched(images, masks)
    return {k: (images[k], masks[k]) for k in images.keys() & masks.keys()}, problems


def _suffixed(root: Path) -> tuple[dict, list[Problem]]:
    files = _pngs(root)
    masks = {k.removesuffix(MASK_SUFFIX): p for k, p in files.items() if k.endswith(MASK_SUFFIX)}
    images = {k: p for k, p in files.items() if not k.endswith(MASK_SUFFIX)}
    problems = _unmatched(images, masks)
    return {k: (images[k], masks[k]) for k in images.keys() & masks.keys()}, problems


def _unmatched(images: dict[str, Path], masks: dict[str, Path]) -> list[Problem]:
    out = [Problem(str(images[k]), STAGE, "image without a mask", expected="a mask",
                   found="none") for k in sorted(images.keys() - masks.keys())]
    out += [Problem(str(masks[k]), STAGE, "mask without an image", expected="an image",
                    found="none") for k in sorted(masks.keys() - images.keys())]
    return out


def _same_size(image: Path, mask: Path, problems: list[Problem]) -> bool:
    """Both open (header only) and have the same width and height."""
    try:
        with Image.open(image) as a, Image.open(mask) as b:
            sizes = a.size, b.size
    except (OSError, UnidentifiedImageError) as exc:
        problems.append(Problem(str(image), STAGE, f"unreadable PNG: {exc}"))
        return False
    if sizes[0] != sizes[1]:
        problems.append(Problem(str(mask), STAGE, "mask size differs from the image",
                                expected=f"{sizes[0]}", found=f"{sizes[1]}"))
        return False
    return True


def _row(key: str, image: Path, mask: Path, modality: str, view: str) -> dict[str, object]:
    parts = key.split("/")
    name = parts[-1]
    match = PATIENT_PATTERN.match(name)
    patient = parts[0] if len(parts) > 1 else (match.group("patient") if match else name)
    row: dict[str, object] = {"sample_id": key.replace("/", "__"), "patient_id": patient,
                              "path": str(image), "mask_path": str(mask),
                              "modality": modality, "view": view}
    for column, pattern in (("frame", FRAME_PATTERN), ("slice", SLICE_PATTERN)):
        found = pattern.search(name)
        if found:
            row[column] = int(found.group(1))
    return row
