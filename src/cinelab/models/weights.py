"""Local weight files: find, load (tolerantly), and import published checkpoints.

cinelab never downloads anything. A weights value is a path, or a bare file name looked up in
`default_weights_dir()` (``$CINELAB_WEIGHTS`` or ``~/.cache/cinelab/weights``). A missing file
raises `MissingWeightsError` saying which file, what it is and where to put it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from cinelab.errors import InputError, MissingWeightsError, UnreadableFileError

WEIGHTS_ENV = "CINELAB_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/cinelab/weights")

#: Prefixes added by wrappers: DataParallel/DDP, Lightning modules (self.model), torch.compile.
DEFAULT_PREFIXES = ("module.", "model.", "_orig_mod.")

MAX_PREFIX_DEPTH = 3

#: Keys of a checkpoint dict that may hold the state_dict (EchoNet/Lightning, others).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")

#: numpy scalar dtypes allowed in checkpoint metadata when loading with weights_only=True.
NUMPY_SCALAR_DTYPES = ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")

TV_URL = "https://download.pytorch.org/models/"
ECHONET_URL = "https://github.com/echonet/dynamic/releases"

#: File names cinelab knows: (what the file is, where a person can fetch it).
KNOWN_WEIGHTS: dict[str, tuple[str, str]] = {
    "deeplabv3_resnet50_random.pt": (
        "EchoNet-Dynamic's published LV segmentation checkpoint (deeplabv3_resnet50)",
        ECHONET_URL),
    "r2plus1d_18_32_2_pretrained.pt": (
        "EchoNet-Dynamic's published EF checkpoint (r2plus1d_18, 32 frames, period 2)",
        ECHONET_URL),
    "r2plus1d_18-91a641e6.pth": ("torchvision's Kinetics-400 r2plus1d_18 weights", TV_URL),
    "r3d_18-b3b3357e.pth": ("torchvision's Kinetics-400 r3d_18 weights", TV_URL),
    "mc3_18-a90a0ba3.pth": ("torchvision's Kinetics-400 mc3_18 weights", TV_URL),
    "resnet50-0676ba61.pth": ("torchvision's ImageNet ResNet-50 weights (V1)", TV_URL),
    "resnet50-11ad3fa6.pth": ("torchvision's ImageNet ResNet-50 weights (V2)", TV_URL),
    "deeplabv3_resnet50_coco-cd0a2569.pth": ("torchvision's COCO deeplabv3_resnet50 weights",
                                             TV_URL),
}

@dataclass
class LoadReport:
    """What `load_weights` did: loaded, adapted, skipped (shape), missing and unexpected keys."""

    path: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model tensor came from the file and every file tensor was used."""
        return not (self.mismatched or self.missing or self.unexpected)

    def summary(self) -> str:
        """One line: counts, and the first skipped keys."""
        text = (f"{self.path}: loaded {len(self.loaded)} tensors, adapted {len(self.adapted)}, "
                f"skipped {len(self.mismatched)} (shape), missing {len(self.missing)}, "
                f"unexpected {len(self.unexpected)}")
        if self.mismatched:
            text += "; shape mismatches: " + ", ".join(
                f"{k} file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:5])
        return text


def default_weights_dir() -> Path:
    """Folder of local weight files: ``$CINELAB_WEIGHTS`` or ``~/.cache/cinelab/weights``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else DEFAULT_WEIGHTS_DIR.expanduser()


def resolve_weights(path: str | Path, description: str | None = None) -> Path:
    """The local file for `path` (a path, or a bare name in the weights folder), or raise."""
    path = Path(path).expanduser()
    candidates = [path]
    if not path.is_absolute() and len(path.parts) == 1:
        candidates.append(default_weights_dir() / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingWeightsError(_missing_message(path, candidates[-1], description))


def _missing_message(path: Path, expected_at: Path, description: str | None) -> str:
    what, url = KNOWN_WEIGHTS.get(path.name, (description or "a PyTorch weights file", ""))
    fetch = f" (published at {url.rstrip('/')}{'/' + path.name if url == TV_URL else ''})" \
        if url else ""
    return (f"weights file not found: {path}. Expected: {what}{fetch}. Put the file at "
            f"{expected_at} (or pass its full path, or set {WEIGHTS_ENV} to the folder "
            "holding it). cinelab never downloads weights.")


def _numpy_safe_globals() -> list[Any]:
    """numpy scalars that checkpoints hold as metadata (EchoNet saves an np.float64 'r2')."""
    scalar = np.core.multiarray.scalar if not hasattr(np, "_core") else np._core.multiarray.scalar
    dtypes = [getattr(np.dtypes, name) for name in NUMPY_SCALAR_DTYPES
              if hasattr(np.dtypes, name)]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def load_weights_file(path: str | Path, map_location: str | torch.device = "cpu",
                    description: str | None = None) -> Any:
    """torch.load a local file safely (``weights_only=True``), on `map_location`."""
    file = resolve_weights(path, description)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(file, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        # a damaged file makes the weights-only unpickler fail in many ways
        raise UnreadableFileError(
            file, "weights", "a torch.save file of tensors (state_dict or checkpoint dict)",
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "re-save it as a plain state_dict: torch.save(model.state_dict(), path)") from exc


def extract_state_dict(obj: Any, path: str | Path = "") -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint: a raw state_dict or ``{"state_dict": ...}``."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _is_tensor_dict(inner):
                return dict(inner)
        if _is_tensor_dict(obj):
            return {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    found = type(obj).__name__ + (f" with keys {sorted(map(str, obj))[:8]}"
                                  if isinstance(obj, Mapping) else "")
    raise InputError(path, "state_dict", "a state_dict or a dict with a 'state_dict' entry",
                     found)


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, Tensor) for v in obj.values())


def strip_prefix(state_dict: Mapping[str, Any],
                 prefixes: Iterable[str] = DEFAULT_PREFIXES) -> dict[str, Any]:
    """Remove one leading prefix (the first of `prefixes` that matches) from each key."""
    prefixes = tuple(p for p in prefixes if p)
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        prefix = next((p for p in prefixes if key.startswith(p)), "")
        out[key[len(prefix):]] = value
    return out


def _best_keys(state: dict[str, Tensor], model_keys: set[str],
               prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """The state with 0..MAX_PREFIX_DEPTH prefix levels stripped that names most model keys.

    Trying levels (rather than stripping greedily) keeps keys of models that own a submodule
    called like a prefix, e.g. MONAI's UNet ("model.0...") inside a Lightning "model." wrapper.
    """
    best, best_hits, current = state, len(model_keys & state.keys()), state
    for _ in range(MAX_PREFIX_DEPTH):
        current = strip_prefix(current, prefixes)
        hits = len(model_keys & current.keys())
        if hits > best_hits:
            best, best_hits = current, hits
    return best


def _first_conv_key(model_state: Mapping[str, Tensor]) -> str | None:
    """The first conv weight (>= 3D) of a model: the only tensor whose channels we adapt."""
    return next((k for k, v in model_state.items() if k.endswith("weight") and v.ndim >= 3),
                None)


def _adapt_channels(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a stem conv weight to `in_channels` (timm's rule; 3D kernels folded to 2D)."""
    shape = weight.shape
    flat = weight.reshape(shape[0], shape[1], -1, shape[-1])
    adapted = adapt_input_conv(in_channels, flat, base_chans=shape[1])
    return adapted.reshape(shape[0], in_channels, *shape[2:])


def match_state(model: nn.Module, state: Mapping[str, Tensor], path: str = "",
                adapt_input: bool = True) -> tuple[dict[str, Tensor], LoadReport]:
    """Select the tensors of `state` that fit `model` (adapting the stem's input channels)."""
    model_state = model.state_dict()
    report = LoadReport(str(path))
    stem = _first_conv_key(model_state) if adapt_input else None
    usable: dict[str, Tensor] = {}
    for key, value in state.items():
        target = model_state.get(key)
        if target is None:
            report.unexpected.append(key)
        elif value.shape == target.shape:
            usable[key] = value
            report.loaded.append(key)
        elif key == stem and value.shape[0] == target.shape[0] and \
                value.shape[2:] == target.shape[2:]:
            usable[key] = _adapt_channels(value, target.shape[1])
            report.adapted.append(key)
        else:
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
    report.missing = [k for k in model_state if k not in usable]
    return usable, report


def load_weights(model: nn.Module, path: str | Path, strict: bool = False,
                 prefix_strip: Iterable[str] = DEFAULT_PREFIXES,
                 map_location: str | torch.device = "cpu",
                 description: str | None = None, adapt_input: bool = True) -> LoadReport:
    """Load a local weights file into `model`, skipping tensors whose shapes do not fit.

    Accepts a raw state_dict, a checkpoint dict with a "state_dict" entry (EchoNet, Lightning,
    cinelab), keys optionally prefixed (see `DEFAULT_PREFIXES`). With `strict`, anything
    skipped, missing or unexpected raises InputError naming the file.
    """
    file = resolve_weights(path, description)
    state = extract_state_dict(load_weights_file(file, map_location, description), file)
    state = _best_keys(state, set(model.state_dict()), tuple(prefix_strip))
    usable, report = match_state(model, state, str(file), adapt_input=adapt_input)
    if strict and not report.complete:
        raise InputError(file, "state_dict", "tensors matching the model exactly (strict=True)",
                         report.summary(), "pass strict=False to load what fits")
    if not usable:
        raise InputError(file, "state_dict", f"tensors named like {type(model).__name__}'s",
                         f"no matching keys (file keys start {sorted(state)[:3]})",
                         "check that the file belongs to this model")
    model.load_state_dict(usable, strict=False)
    return report


# -- EchoNet-Dynamic published checkpoints ----------------------------------------------------
