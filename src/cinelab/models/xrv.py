"""torchxrayvision weights -> the matching timm classifier (foreign checkpoint import).

torchxrayvision (Cohen et al., MIDL 2022) ships chest X-ray models trained on NIH, CheXpert,
MIMIC, PadChest and others: ``xrv.models.DenseNet`` (torchvision's DenseNet-121 layout,
1-channel stem, 18-pathology ``classifier``) and ``xrv.models.ResNet`` (torchvision's
ResNet-50 under a ``model.`` prefix, 1-channel ``conv1``, 18-pathology ``fc``). Their tensor
names are torchvision's, which timm's ``densenet121`` / ``resnet50`` use too, so the mapping
is: drop the ``model.`` prefix, rename torchvision's legacy DenseNet names (``norm.1`` ->
``norm1``), drop what is no model parameter (``op_threshs``, the per-pathology operating
points, kept as metadata), and check every remaining tensor against the timm model.

The release files are pickled ``nn.Module`` objects, which cannot be read safely without
torchxrayvision itself; re-save them once where torchxrayvision is installed::

    torch.save(xrv.models.DenseNet(weights="densenet121-res224-all").state_dict(), "xrv.pt")

Note for fine-tuning: torchxrayvision feeds images scaled to [-1024, 1024] at 224 px (512 for
the ResNet); cinelab normalises by the store's mean/std, so the weights are a start, not a
drop-in predictor, and the 18-output head does not fit a binary head (it is skipped).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cinelab.errors import InputError
from cinelab.models.classification import build_timm_classifier, read_state, timm_name
from cinelab.utils import atomic_path

XRV_ARCHS = ("densenet121", "resnet50")
XRV_PREFIX = "model."
XRV_CHANNELS = 1
METADATA_KEYS = ("op_threshs",)
LEGACY_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
    r"running_var|num_batches_tracked))$")
SOURCE = "torchxrayvision (https://github.com/mlmed/torchxrayvision)"
FORMAT = "cinelab-imported-weights"


def xrv_to_timm(state: dict[str, Tensor], arch: str,
                path: str | Path | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict in timm's names for `arch`, metadata: outputs, op_threshs, dropped keys).
    Raises InputError when the tensors do not belong to that architecture."""
    if arch not in XRV_ARCHS:
        raise InputError(path, "arch", f"one of {list(XRV_ARCHS)}", repr(arch))
    meta: dict[str, Any] = {k: state[k].tolist() for k in METADATA_KEYS if k in state}
    renamed = {_timm_key(k): v for k, v in state.items() if k not in METADATA_KEYS}
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        target = build_timm_classifier(timm_name(arch), num_outputs=_outputs(renamed, arch),
                                       in_channels=_channels(renamed, arch)).state_dict()
    _check_fit(renamed, target, arch, path)
    meta.update(arch=arch, num_outputs=_outputs(renamed, arch),
                in_channels=_channels(renamed, arch))
    return renamed, meta


def _timm_key(key: str) -> str:
    key = key.removeprefix(XRV_PREFIX)
    return LEGACY_DENSENET.sub(lambda m: m.group(1) + m.group(2), key)


def _head_key(arch: str) -> str:
    return "classifier.weight" if arch == "densenet121" else "fc.weight"


def _stem_key(arch: str) -> str:
    return "features.conv0.weight" if arch == "densenet121" else "conv1.weight"


def _outputs(state: dict[str, Tensor], arch: str) -> int:
    head = state.get(_head_key(arch))
    return int(head.shape[0]) if head is not None else 1


def _channels(state: dict[str, Tensor], arch: str) -> int:
    stem = state.get(_stem_key(arch))
    return int(stem.shape[1]) if stem is not None else XRV_CHANNELS


def _check_fit(state: dict[str, Tensor], target: dict[str, Tensor], arch: str,
               path: str | Path | None) -> None:
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(state) & set(target) if state[k].shape != target[k].shape)
    if missing or extra or wrong:
        raise InputError(path, "state_dict", f"torchxrayvision {arch} tensors "
                         f"({len(target)} matching timm {timm_name(arch)})",
                         f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unknown "
                         f"(e.g. {extra[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]})",
                         "pass the architecture the file was saved from (--arch)")


def import_torchxrayvision(path: str | Path, out: str | Path,
                           arch: str = "densenet121") -> Path:
    """Convert a torchxrayvision state dict file into a weights file for ``model.pretrained``
    of cinelab's `arch` (``{"state_dict": ..., "format", "source", "meta"}``); returns it."""
    state = read_state(path, f"a torchxrayvision {arch} state_dict (module docstring)")
    converted, meta = xrv_to_timm(state, arch, path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save({"state_dict": converted, "format": FORMAT, "source": SOURCE,
                    "original": str(path), "meta": meta}, tmp)
    return out
